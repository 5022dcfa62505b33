"""`serve` and `check-config`."""

from __future__ import annotations

import sys

import click
import trio

from appliance.cli import main
from appliance.cli.common import config_option, load_config_or_exit
from appliance.config import redacted_toml
from appliance.logs import get_logger, setup_logging
from appliance.startup import already_explained, leaves

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
    ready = False

    async def run() -> None:
        nonlocal ready
        async with trio.open_nursery() as nursery:
            await nursery.start(serve_forever, config)
            ready = True

    try:
        trio.run(run)
    except KeyboardInterrupt:
        log.warning("stopped_without_grace")
        sys.exit(130)
    except BaseException as exc:
        if isinstance(exc, SystemExit):
            raise
        if not ready:
            _startup_failed(exc)
        else:  # a part crashed while serving: a bug, so its traceback goes to the log
            log.exception("crashed", error=repr(exc))
        sys.exit(1)


def _startup_failed(exc: BaseException) -> None:
    """One line per failure; the traceback only at debug level (the line already says what to fix)."""
    report = log.exception if log.is_enabled("debug") else log.error
    explained = already_explained(exc)
    for failure in explained:
        report("startup_failed", error=str(failure))
    if not explained:
        leaf = next((e for e in leaves(exc) if isinstance(e, Exception)), exc)
        report("startup_failed", error=f"{type(leaf).__name__}: {leaf}",
               hint='set [logging] level = "debug" to see where')


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
