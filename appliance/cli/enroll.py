"""`enroll-profile` (offline, from the config and data_dir) and `challenge` (asks the running server)."""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path

import click

from appliance.cli import main
from appliance.cli.common import ApiClient, CliError, config_option, load_config_or_exit


@main.command("enroll-profile")
@config_option
@click.option("--out", "-o", "out", required=True, type=click.Path(dir_okay=False, allow_dash=True),
              help="Where to write the .mobileconfig ('-' for stdout).")
def enroll_profile(config_path, out) -> None:
    """Write the enrollment profile, the same file GET /mdm/enroll serves.

    Works without a running server (it reads the config and data_dir). With
    [enrollment] one_time_challenge = true each file carries a fresh challenge, valid once
    for [enrollment] challenge_ttl.

    \b
    Example:  mdm-appliance enroll-profile --config /etc/mdm-appliance/appliance.toml --out enroll.mobileconfig
    """
    from appliance.files import write_atomic
    from appliance.protocol.profile import ProfileError
    from appliance.service import enrollment
    from appliance.store import scep as scep_store

    config = load_config_or_exit(config_path)
    try:
        with _transaction(config) as (prepared, conn):
            inputs = enrollment.prepare_profile(conn, config)
            data, record = enrollment.render_profile(
                config, prepared.ca, inputs, server_cert_from_ca=prepared.server_cert_from_ca,
                tls_cert=prepared.tls_cert, tls_key=prepared.tls_key)
            if record is not None:
                scep_store.record_issued(conn, record)
    except ProfileError as exc:
        raise CliError(str(exc)) from None
    if out == "-":
        sys.stdout.buffer.write(data)
        return
    try:
        # 0600: the file carries an enrollment challenge (or a private key).
        write_atomic(Path(out), data, 0o600)
    except OSError as exc:
        raise CliError(f"cannot write {out}: {exc.strerror or exc}") from None
    click.echo(f"wrote {out} ({len(data)} bytes)", err=True)


@main.command("enrollment-urls")
@config_option
@click.option("--forget-changed", is_flag=True,
              help="Forget the sets that differ from the config (their devices were re-enrolled).")
def enrollment_urls(config_path, forget_changed) -> None:
    """List the Topic/ServerURL/CheckInURL sets that enrollment profiles handed out.

    Devices keep these for as long as they are enrolled; a set that differs from the config is
    warned about at start and in /healthz. After re-enrolling (or retiring) those devices,
    --forget-changed drops such sets and the warning stops.

    \b
    Example:  mdm-appliance enrollment-urls --config /etc/mdm-appliance/appliance.toml --forget-changed
    """
    from appliance.service import enrollment

    config = load_config_or_exit(config_path)
    with _transaction(config) as (_, conn):
        if forget_changed:
            for entry in enrollment.forget_changed_urls(conn, config):
                click.echo(f"forgot {entry['server_url']} (topic {entry['topic']})", err=True)
        for problem in enrollment.url_mismatches(conn, config):
            click.echo(f"warning: {problem}", err=True)
        for entry in enrollment.recorded_url_sets(conn):
            click.echo(f"{entry['topic']}  {entry['server_url']}  {entry['checkin_url']}  "
                       f"(profiles built {entry['first_built_at']} .. {entry['last_built_at']})")


@contextlib.contextmanager
def _transaction(config):
    """(prepared data dir, connection) inside one write transaction, committed unless an exception
    leaves the block; works next to a running server (SQLite WAL, BEGIN IMMEDIATE waits its turn)."""
    from appliance.bootstrap import prepare_data_dir
    from appliance.store.db import connect_sync

    try:
        prepared = prepare_data_dir(config)
        conn = connect_sync(prepared.db_path, config.storage.synchronous)
    except (OSError, RuntimeError) as exc:
        raise CliError(f"cannot open the data directory {config.data_dir}: {exc}") from None
    try:
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield prepared, conn
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    finally:
        conn.close()


@main.command("challenge")
@config_option
@click.option("--json", "as_json", is_flag=True, help="Print the API's JSON answer.")
def challenge(config_path, as_json) -> None:
    """Mint a one-time SCEP challenge on the running server (valid once, for [enrollment] challenge_ttl).

    \b
    Example:  mdm-appliance challenge --config /etc/mdm-appliance/appliance.toml
    """
    config = load_config_or_exit(config_path)
    _, answer = ApiClient(config).call("POST", "/v1/challenges")
    if not isinstance(answer, dict) or "challenge" not in answer:
        raise CliError("the server answered without a challenge")
    if as_json:
        click.echo(json.dumps(answer))
    else:
        click.echo(answer["challenge"])
        click.echo(f"valid once, until {answer['expires_at']}", err=True)
