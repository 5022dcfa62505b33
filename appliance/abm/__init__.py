"""Apple's Device Assignment (DEP) API over the network: one OAuth session per ABM server, a deadline on
every call, Retry-After honoured by the caller. May import appliance.protocol and the basics; never store,
service or web."""
