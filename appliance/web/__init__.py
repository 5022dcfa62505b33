"""The quart-trio app: device endpoints, SCEP and enrollment, the admin API, health and metrics; one
blueprint per area. May import service, store, push, identity and protocol; nothing imports web."""
