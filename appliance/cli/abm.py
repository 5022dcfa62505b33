"""`mdm-appliance abm ...`: Apple Business Manager server entries, their tokens, sync and the profile
assignment of their devices.

keypair, certificate, token import and servers go through the running server's admin API (which starts
syncing with a new token at once); with no server serving this config they work on the database in
data_dir (appliance.cli.common), and a server started later uses what they stored. The other commands
need the running server.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from appliance.cli import main
from appliance.cli.admin import _cell, _path, _print_json, _table, json_option
from appliance.cli.common import (ApiClient, CliError, config_option, database, load_config_or_exit, serving_api,
                                  transaction)

def _api(config_path) -> ApiClient:
    client = serving_api(load_config_or_exit(config_path))
    if client is None:
        raise CliError("this needs the running appliance (is `mdm-appliance serve` running with this config?)")
    return client


def _write(config, fn, *args, **kwargs):
    with database(config) as conn, transaction(conn):
        return fn(conn, *args, **kwargs)


def _read(config, fn, *args):
    with database(config) as conn:
        return fn(conn, *args)


def _output(text: str, out: str | None) -> None:
    if out is None:
        click.echo(text, nl=False)
        return
    try:
        Path(out).write_text(text)
    except OSError as exc:
        raise CliError(f"cannot write {out}: {exc.strerror or exc}") from None
    click.echo(f"wrote {out}", err=True)


@main.group("abm")
def abm() -> None:
    """Apple Business Manager: zero-touch enrollment (ADE) for the devices your organization buys.

    \b
    mdm-appliance abm keypair main --out main.pem      # upload main.pem in ABM (Preferences, your MDM server)
    mdm-appliance abm token import main server_token_*.p7m   # the token ABM gives back; syncing starts
    mdm-appliance abm servers                          # token expiry, last sync, devices per state
    mdm-appliance abm devices --state failed           # devices and where each stands
    mdm-appliance abm sync main --full                 # sync now (every device again with --full)
    """


@abm.command("keypair")
@config_option
@click.argument("name")
@click.option("--out", "-o", type=click.Path(dir_okay=False), help="Write the certificate here (default: stdout).")
@click.option("--replace", is_flag=True, help="A new key pair for an existing entry: its token and devices go "
                                              "(upload the new certificate and download a new token).")
def keypair(config_path, name, out, replace) -> None:
    """Make the key pair of an ABM server entry and print its certificate to upload in ABM.

    The private key stays in the appliance's database and is never printed.

    \b
    Example:  mdm-appliance abm keypair main --out main.pem
    """
    config = load_config_or_exit(config_path)
    api = serving_api(config)
    if api is not None:
        _, answer = api.call("POST", _path("abm", "servers", name, replace="1" if replace else None))
        _output(answer["certificate"], out)
    else:
        from appliance.identity.abm_token import make_keypair
        from appliance.store import abm as abm_store

        if not abm_store.SERVER_NAME.fullmatch(name):
            raise CliError("an ABM server name is 1-64 letters, digits, '.', '_' or '-'")
        pair = make_keypair(name, config.server.organization)
        try:
            _write(config, abm_store.create_server, name, pair.certificate_pem, pair.private_key_pem, replace=replace)
        except abm_store.ServerExists:
            raise CliError(f"ABM server {name!r} exists: `mdm-appliance abm certificate {name}` prints its "
                           "certificate; --replace makes a new key pair") from None
        _output(pair.certificate_pem.decode("ascii"), out)
    click.echo(f"next: in Apple Business Manager add an MDM server (or edit yours), upload this certificate, "
               f"download its token, then `mdm-appliance abm token import {name} server_token_*.p7m`", err=True)


@abm.command("certificate")
@config_option
@click.argument("name")
@click.option("--out", "-o", type=click.Path(dir_okay=False), help="Write it here (default: stdout).")
def certificate(config_path, name, out) -> None:
    """Print an entry's certificate again (PEM), to upload in ABM.

    \b
    Example:  mdm-appliance abm certificate main --out main.pem
    """
    config = load_config_or_exit(config_path)
    api = serving_api(config)
    if api is not None:
        _, data = api.call("GET", _path("abm", "servers", name, "certificate"))
        text = data.decode("ascii") if isinstance(data, bytes) else str(data)
    else:
        from appliance.store import abm as abm_store

        found = _read(config, abm_store.server, name)
        if found is None:
            raise CliError(f"no ABM server {name!r}: make it with `mdm-appliance abm keypair {name}`")
        text = found["certificate"]
    _output(text, out)


@abm.group("token")
def token() -> None:
    """The server token ABM gives for an entry (renew it yearly: ABM, your MDM server, Download Token)."""


@token.command("import")
@config_option
@click.argument("name")
@click.argument("token_file", type=click.Path(dir_okay=False))
def token_import(config_path, name, token_file) -> None:
    """Decrypt and store the server_token_*.p7m downloaded from ABM; a running server uses it at once.

    A wrong file, a token for another entry's key pair, or an expired token is refused and nothing changes.

    \b
    Example:  mdm-appliance abm token import main ~/Downloads/server_token_2026-12-01.p7m
    """
    config = load_config_or_exit(config_path)
    try:
        data = Path(token_file).read_bytes()
    except OSError as exc:
        raise CliError(f"cannot read {token_file}: {exc.strerror or exc}") from None
    api = serving_api(config)
    if api is not None:
        _, answer = api.call("PUT", _path("abm", "servers", name, "token"), body=data,
                             content_type="application/pkcs7-mime")
        expires, where = answer.get("token_expires_at"), "the running server syncs with it now"
    else:
        from appliance.identity import abm_token
        from appliance.store import abm as abm_store

        secrets = _read(config, abm_store.secrets, name)
        if secrets is None:
            raise CliError(f"no ABM server {name!r}: make its key pair first (`mdm-appliance abm keypair {name}`)")
        try:
            parsed = abm_token.decrypt_server_token(data, abm_token.KeyPair(secrets[0], secrets[1]))
        except abm_token.TokenError as exc:
            raise CliError(f"{token_file}: {exc}") from None
        _write(config, abm_store.set_token, name, parsed.as_json(), parsed.expires_at)
        expires = parsed.expires_at.strftime("%Y-%m-%dT%H:%M:%SZ") if parsed.expires_at else None
        where = "a server started with this config syncs with it within seconds"
    click.echo(f"imported the token of ABM server {name}, expires {(expires or 'never')[:10]}")
    click.echo(where, err=True)


@abm.command("servers")
@config_option
@json_option
def servers(config_path, as_json) -> None:
    """List the ABM server entries: token expiry, sync state, last error, devices per state.

    \b
    Example:  mdm-appliance abm servers
    """
    config = load_config_or_exit(config_path)
    api = serving_api(config)
    if api is not None:
        _, answer = api.call("GET", _path("abm", "servers"))
        found = answer["servers"]
    else:
        from appliance.store import abm as abm_store

        found = _read(config, abm_store.servers)
        for entry in found:
            entry.pop("certificate", None)
    if as_json:
        _print_json(found)
        return
    for entry in found:
        entry["devices_text"] = ", ".join(f"{k} {v}" for k, v in sorted((entry.get("devices") or {}).items())) or "-"
    _table(found, [("name", "NAME"), ("token_expires_at", "TOKEN EXPIRES"), ("token_days_left", "DAYS"),
                   ("phase", "PHASE"), ("last_sync_at", "LAST SYNC"), ("devices_text", "DEVICES"),
                   ("last_error", "LAST ERROR")])
    for entry in found:
        if entry.get("token_state") == "expired":
            click.echo(f"ABM token {entry['name']} EXPIRED: download a new one in ABM and import it", err=True)
        elif entry.get("token_state") == "warning":
            click.echo(f"ABM token {entry['name']} expires within 30 days: renew it", err=True)


@abm.command("sync")
@config_option
@click.argument("name")
@click.option("--full", is_flag=True, help="Fetch every device again (not just the changes).")
def sync(config_path, name, full) -> None:
    """Sync an ABM server now instead of at the next interval.

    \b
    Example:  mdm-appliance abm sync main --full
    """
    _api(config_path).call("POST", _path("abm", "servers", name, "sync", full="1" if full else None), ok=(202,))
    click.echo(f"sync of {name} started; `mdm-appliance abm servers` shows when it is done")


@abm.command("remove")
@config_option
@click.argument("name")
@click.option("--yes", "-y", is_flag=True, help="Do not ask.")
def remove(config_path, name, yes) -> None:
    """Forget an ABM server entry, its token and the devices synced from it.

    \b
    Example:  mdm-appliance abm remove old-school --yes
    """
    client = _api(config_path)
    if not yes and not click.confirm(f"forget ABM server {name} and its devices?", err=True):
        raise CliError("nothing removed")
    _, answer = client.call("DELETE", _path("abm", "servers", name))
    click.echo(f"forgot ABM server {name} and {answer['devices_forgotten']} device(s)")


ABM_COLUMNS = [("serial_number", "SERIAL"), ("abm_server", "SERVER"), ("model", "MODEL"), ("os", "OS"),
               ("assign_state", "ASSIGNMENT"), ("device_id", "DEVICE"), ("status", "STATUS")]


@abm.command("devices")
@config_option
@json_option
@click.option("--server", help="Only this ABM server's devices.")
@click.option("--state", type=click.Choice(["pending", "assigned", "failed", "throttled", "not_accessible",
                                            "unassigned", "removed"]), help="Only devices in this assignment state.")
@click.option("--enrolled/--not-enrolled", default=None, help="Only devices that enrolled (or did not yet).")
def devices(config_path, as_json, server, state, enrolled) -> None:
    """List the devices ABM assigned to us (all pages).

    \b
    mdm-appliance abm devices --not-enrolled
    mdm-appliance abm devices --state failed --json | jq -r '.[] | .serial_number + " " + .assign_reason'
    """
    client = _api(config_path)
    found: list[dict] = []
    cursor = None
    while True:
        _, page = client.call("GET", _path("abm", "devices", limit=1000, cursor=cursor, server=server, state=state,
                                           enrolled=None if enrolled is None else str(enrolled).lower()))
        found += page["devices"]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    if as_json:
        _print_json(found)
    else:
        _table(found, ABM_COLUMNS)
        click.echo(f"{len(found)} device(s)", err=True)


@abm.command("device")
@config_option
@json_option
@click.argument("serial")
def device(config_path, as_json, serial) -> None:
    """Show one ABM device: what ABM says, its assignment, enrollment and ADE setup.

    \b
    Example:  mdm-appliance abm device C02XK1JJH7JY
    """
    _, found = _api(config_path).call("GET", _path("abm", "devices", serial))
    if as_json:
        _print_json(found)
        return
    for key in ("serial_number", "abm_server", "model", "description", "color", "os", "profile_status",
                "assign_state", "assign_reason", "assign_next_at", "device_id", "added_at", "deleted_at", "status"):
        click.echo(f"{key.replace('_', ' ') + ':':17} {_cell(found.get(key))}")
    ade = found.get("ade")
    if ade:
        click.echo(f"{'ade setup:':17} {_cell(ade.get('setup_state'))} (profile served "
                   f"{_cell(ade.get('profile_served_at'))}, configured {_cell(ade.get('configured_at'))})")


def _serials(serials: tuple[str, ...]) -> list[str]:
    found = [line.strip() for line in sys.stdin if line.strip()] if serials == ("-",) else list(serials)
    if not found:
        raise CliError("name at least one serial number")
    return list(dict.fromkeys(found))


def _report(answer: dict, as_json: bool) -> None:
    if as_json:
        _print_json(answer)
        return
    failed = 0
    for serial, outcome in answer["devices"].items():
        if outcome.get("error"):
            failed += 1
            click.echo(f"{serial}: {outcome['error']}")
        else:
            result = f" ({outcome['result']})" if outcome.get("result") else ""
            click.echo(f"{serial}: {outcome.get('state')}{result}")
    if failed:
        raise SystemExit(1)


@abm.command("assign")
@config_option
@json_option
@click.argument("serials", nargs=-1, required=True)
def assign(config_path, as_json, serials) -> None:
    """Assign the ADE profile to devices now (also ones unassigned before). "-": serials from stdin.

    \b
    Example:  mdm-appliance abm assign C02XK1JJH7JY C02XK1JJH7JZ
    """
    _, answer = _api(config_path).call("POST", _path("abm", "devices", "assign"), {"serials": _serials(serials)})
    _report(answer, as_json)


@abm.command("unassign")
@config_option
@json_option
@click.argument("serials", nargs=-1, required=True)
def unassign(config_path, as_json, serials) -> None:
    """Take the ADE profile off devices in ABM; they are not assigned again until `abm assign`.

    \b
    Example:  mdm-appliance abm unassign C02XK1JJH7JY
    """
    _, answer = _api(config_path).call("POST", _path("abm", "devices", "unassign"), {"serials": _serials(serials)})
    _report(answer, as_json)

