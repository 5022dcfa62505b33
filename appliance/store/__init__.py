"""SQLite storage: one connection owned by one thread (db.py), migrations per component, queries per concern.

May import appliance.protocol and the basics (appliance.clock, logs); never web, service or push.
"""
