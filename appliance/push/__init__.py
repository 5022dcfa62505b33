"""APNs: the HTTP/2 push client (apns, connection, h2wire, results), the push certificate (pushcert),
and the push service on runtime.push (scheduler). May import store and protocol; never web or service."""
