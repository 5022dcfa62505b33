"""The `mdm-appliance` command: a thin click shell over the package. Commands talk to the running
server's admin API (URL and key from the config, so they work on the box with no flags); those that
also work without a server (push certificate, profile, challenge, enrollment URLs) then open the
database themselves, never migrating it (only `serve` does) and never waiting long for its locks."""

from __future__ import annotations

import click

from appliance import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="mdm-appliance")
def main() -> None:
    """A self-hosted Apple MDM server in one process.

    \b
    First run:       sudo mdm-appliance setup
    Start it:        mdm-appliance serve --config /etc/mdm-appliance/appliance.toml
    Check a config:  mdm-appliance check-config --config appliance.toml
    """


# Each module adds its commands to `main` when imported.
from appliance.cli import serve as _serve  # noqa: E402,F401
from appliance.cli import enroll as _enroll  # noqa: E402,F401
from appliance.cli import pushcert as _pushcert  # noqa: E402,F401
from appliance.cli import admin as _admin  # noqa: E402,F401
from appliance.cli import ddm as _ddm  # noqa: E402,F401
from appliance.cli import setup as _setup  # noqa: E402,F401
from appliance.cli import abm as _abm  # noqa: E402,F401
from appliance.cli import db as _db  # noqa: E402,F401
from appliance.cli import users as _users  # noqa: E402,F401
from appliance.cli import groups as _groups  # noqa: E402,F401
