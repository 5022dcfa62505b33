"""mdm-appliance: a self-hosted Apple MDM server in one trio process."""
