"""Webhooks: the MicroMDM/NanoMDM event format (events.py, sans-I/O) and the outbox delivery worker.

May import appliance.store and appliance.protocol; never web or service.
"""
