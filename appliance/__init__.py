"""mdm-appliance: a self-hosted Apple MDM server in one trio process."""

from importlib.metadata import PackageNotFoundError, version

try:
    # The one version number lives in pyproject.toml; installs and the packaged binary carry it as metadata.
    __version__ = version("mdm-appliance")
except PackageNotFoundError:  # a source tree on PYTHONPATH that was never installed
    __version__ = "0+unknown"

# What the appliance calls itself in outgoing requests (APNs, webhooks).
USER_AGENT = f"mdm-appliance/{__version__}"
