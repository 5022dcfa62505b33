"""mdm-appliance: a self-hosted Apple MDM server in one trio process."""

__version__ = "0.1.0"
