"""Who is who: the appliance CA and certificate issuing, device identity (Mdm-Signature, TLS and proxy
certificates) and SCEP. May import appliance.protocol and the basics (appliance.clock, logs, files) only."""
