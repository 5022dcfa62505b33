"""Sans-I/O MDM protocol: the one plist codec, check-in and report messages, enrollment IDs, the answers and
queue rules, the one command validator, the command catalog and readable results, the enrollment profile.
Imports nothing else of the appliance: no sockets, no database."""
