"""SQLite storage: one connection owned by one thread (db.py), migrations per component, queries per concern.

May import appliance.protocol only; never web, service or push.
"""
