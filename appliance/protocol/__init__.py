"""Sans-I/O MDM protocol: the one plist codec, check-in and report messages, enrollment IDs, the answers and
queue rules, command parsing, the enrollment profile. Imports nothing else of the appliance: no sockets, no database."""
