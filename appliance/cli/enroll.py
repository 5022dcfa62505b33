"""`enroll-profile`, `enrollment-urls` and `challenge`: through the running server's admin API when one
serves this config, else on the config and data_dir directly (a server started later sees the result)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from appliance.cli import main
from appliance.cli.common import (
    CliError,
    config_option,
    database,
    load_config_or_exit,
    serving_api,
    transaction,
)


@main.command("enroll-profile")
@config_option
@click.option("--out", "-o", "out", required=True, type=click.Path(dir_okay=False, allow_dash=True),
              help="Where to write the .mobileconfig ('-' for stdout).")
def enroll_profile(config_path, out) -> None:
    """Write the enrollment profile, the same file GET /mdm/enroll serves.

    Asks the running server for it, or without one builds it from the config and data_dir. With
    [enrollment] one_time_challenge = true each file carries a fresh challenge, valid once
    for [enrollment] challenge_ttl.

    \b
    Example:  mdm-appliance enroll-profile --config /etc/mdm-appliance/appliance.toml --out enroll.mobileconfig
    """
    from appliance.files import write_atomic
    from appliance.protocol.profile import ProfileError

    config = load_config_or_exit(config_path)
    api = serving_api(config)
    try:
        if api is not None:
            _, data = api.call("POST", "/v1/enrollment-profile", raw=True)
            source = f"from the server at {api.url}"
        else:
            data, source = _offline_profile(config), "built from data_dir (no server running)"
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
    click.echo(f"wrote {out} ({len(data)} bytes, {source})", err=True)


def _offline_profile(config) -> bytes:
    """As the server builds it: two short write transactions, the slow rendering between them."""
    from appliance.bootstrap import prepare_data_dir
    from appliance.protocol.profile import check_public_url
    from appliance.service import enrollment
    from appliance.store import scep as scep_store

    check_public_url(config.server.public_url)  # before anything is opened, minted or recorded
    with database(config) as conn:
        try:
            prepared = prepare_data_dir(config)
        except (OSError, ValueError) as exc:
            raise CliError(f"cannot read the data directory {config.data_dir}: {exc}") from None
        with transaction(conn):
            inputs = enrollment.prepare_profile(conn, config)
        data, record = enrollment.render_profile(
            config, prepared.ca, inputs, server_cert_from_ca=prepared.server_cert_from_ca,
            tls_cert=prepared.tls_cert, tls_key=prepared.tls_key)
        if record is not None:
            with transaction(conn):
                scep_store.record_issued(conn, record)
    return data


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
    api = serving_api(config)
    if api is not None:
        forgotten = api.call("DELETE", "/v1/enrollment-urls/changed")[1]["forgotten"] if forget_changed else []
        listed = api.call("GET", "/v1/enrollment-urls")[1]
        url_sets, warnings = listed["url_sets"], listed["warnings"]
    else:
        with database(config) as conn, transaction(conn):
            forgotten = enrollment.forget_changed_urls(conn, config) if forget_changed else []
            url_sets, warnings = enrollment.recorded_url_sets(conn), enrollment.url_mismatches(conn, config)
    for entry in forgotten:
        click.echo(f"forgot {entry['server_url']} (topic {entry['topic']})", err=True)
    for problem in warnings:
        click.echo(f"warning: {problem}", err=True)
    for entry in url_sets:
        click.echo(f"{entry['topic']}  {entry['server_url']}  {entry['checkin_url']}  "
                   f"(profiles built {entry['first_built_at']} .. {entry['last_built_at']})")


@main.command("challenge")
@config_option
@click.option("--json", "as_json", is_flag=True, help="Print the API's JSON answer.")
def challenge(config_path, as_json) -> None:
    """Mint a one-time SCEP challenge (valid once, for [enrollment] challenge_ttl).

    Minted by the running server, or without one stored in data_dir for it.

    \b
    Example:  mdm-appliance challenge --config /etc/mdm-appliance/appliance.toml
    """
    from appliance.service import enrollment
    from appliance.store.timefmt import to_text

    config = load_config_or_exit(config_path)
    api = serving_api(config)
    if api is not None:
        _, answer = api.call("POST", "/v1/challenges")
        if not isinstance(answer, dict) or "challenge" not in answer:
            raise CliError("the server answered without a challenge")
    else:
        with database(config) as conn, transaction(conn):
            minted, expires = enrollment.mint_challenge_sync(conn, config)
        answer = {"challenge": minted, "expires_at": to_text(expires),
                  "ttl_seconds": int(config.enrollment.challenge_ttl)}
    if as_json:
        click.echo(json.dumps(answer))
    else:
        click.echo(answer["challenge"])
        click.echo(f"valid once, until {answer['expires_at']}", err=True)
