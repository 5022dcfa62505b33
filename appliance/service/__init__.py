"""What a device request, an enqueue, a SCEP request or a profile download does, composed from protocol,
identity, store, push and the webhook outbox. May import those; never web or cli."""
