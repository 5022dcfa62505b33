"""`serve` and `check-config`."""

from __future__ import annotations

import sys

import click
import trio

from appliance.cli import main
from appliance.cli.common import config_option, load_config_or_exit
from appliance.config import redacted_toml
from appliance.logs import get_logger, setup_logging

log = get_logger("main")


@main.command()
@config_option
def serve(config_path) -> None:
    """Run the appliance in the foreground (systemd's ExecStart).

    \b
    Example:  mdm-appliance serve --config config/local.toml
    """
    from appliance.supervisor import serve as serve_forever

    config = load_config_or_exit(config_path)
    setup_logging(config.logging.level)
    log.info("starting", config=config.source, data_dir=config.data_dir)
    try:
        trio.run(serve_forever, config)
    except KeyboardInterrupt:
        log.warning("stopped_without_grace")
        sys.exit(130)
    except BaseException as exc:  # a crashed part: its cause in the log, a non-zero exit for systemd
        if isinstance(exc, SystemExit):
            raise
        log.exception("crashed", error=repr(exc))
        sys.exit(1)


@main.command("check-config")
@config_option
def check_config(config_path) -> None:
    """Validate a config file; print the effective config (secrets redacted) or every error.

    \b
    Example:  mdm-appliance check-config --config /etc/mdm-appliance/appliance.toml
    """
    config = load_config_or_exit(config_path)
    click.echo(f"# {config.source}: OK")
    click.echo(redacted_toml(config))
