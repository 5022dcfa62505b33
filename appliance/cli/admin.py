"""Operator commands over the running server's admin API (devices, commands, enqueue, push, queues), and
`backup`, which copies the database online plus the data_dir secrets into a folder that can be used as
data_dir as it is.

Every command reads URL and key from the config, so on the appliance itself no flags are needed.
Human tables by default, --json for scripts; a failure prints one line and exits non-zero.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import sqlite3
import sys
from pathlib import Path
from urllib.parse import quote, urlencode

import click

from appliance.bootstrap import DB_FILE
from appliance.cli import main
from appliance.cli.common import (
    LOCK_WAIT_SECONDS,
    ApiClient,
    CliError,
    config_option,
    database_error,
    load_config_or_exit,
)
from appliance.protocol import catalog, results
from appliance.protocol.commands import parse_command
from appliance.protocol.errors import MessageError
from appliance.protocol.plistjson import DATA, JsonPlistError, from_json, to_json

json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON (for scripts) instead of a table.")


def _client(config_path) -> ApiClient:
    return ApiClient(load_config_or_exit(config_path))


def _print_json(value) -> None:
    click.echo(json.dumps(value, indent=2, ensure_ascii=False))


def _table(rows: list[dict], columns: list[tuple[str, str]], indent: str = "") -> None:
    """A plain aligned table; columns are (key, heading)."""
    cells = [[_cell(row.get(key)) for key, _ in columns] for row in rows]
    widths = [max([len(heading)] + [len(line[i]) for line in cells]) for i, (_, heading) in enumerate(columns)]
    click.echo(indent + "  ".join(heading.ljust(width) for (_, heading), width in zip(columns, widths)).rstrip())
    for line in cells:
        click.echo(indent + "  ".join(value.ljust(width) for value, width in zip(line, widths)).rstrip())


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    text = str(value)
    # Times: seconds are enough on a screen.
    if len(text) == 27 and text.endswith("Z") and text[10] == "T":
        return text[:19].replace("T", " ")
    return text


def _path(*parts: str, **query) -> str:
    path = "/v1/" + "/".join(quote(part, safe=":,") for part in parts)
    query = {key: value for key, value in query.items() if value is not None}
    return path + ("?" + urlencode(query) if query else "")


def _ids(ids: tuple[str, ...]) -> list[str]:
    """ID arguments; "-" reads more ids from stdin, one a line (for thousands of them)."""
    found: list[str] = []
    for item in ids:
        if item == "-":
            found += [line.strip() for line in sys.stdin if line.strip()]
        else:
            found += [part for part in item.split(",") if part]
    if not found:
        raise CliError("name at least one enrollment id")
    return list(dict.fromkeys(found))


# --- reading ---------------------------------------------------------------------------------------

DEVICE_COLUMNS = [("id", "ID"), ("serial_number", "SERIAL"), ("model", "MODEL"), ("os_version", "OS"),
                  ("enrolled", "ENROLLED"), ("active", "ACTIVE"), ("last_seen_at", "LAST SEEN"),
                  ("last_push_result", "LAST PUSH"), ("pending_commands", "PENDING")]


@main.command("devices")
@config_option
@json_option
@click.option("--filter", "-f", "filter_text", metavar="EXPR",
              help="Only devices matching EXPR, in the device filter language (README, \"Searching devices\").")
@click.option("--search", "-q", "text", help="Only devices whose name, serial, UDID, model or OS contains TEXT.")
@click.option("--group", "-g", help="Only the members of this group.")
@click.option("--serial", help="Only the device with this serial number.")
@click.option("--udid", help="Only the device with this UDID.")
@click.option("--active/--inactive", default=None, help="Only active (or only inactive) devices.")
@click.option("--sort", type=click.Choice(["id", "name", "serial", "model", "os", "last_seen", "last_inventory"]),
              default="id", show_default=True, help="Sort by this (os: as versions, 17.10 after 17.9).")
@click.option("--desc", is_flag=True, help="Sort in descending order.")
@click.option("--limit", type=click.IntRange(min=1), help="At most this many devices (default: all).")
def devices(config_path, as_json, filter_text, text, group, serial, udid, active, sort, desc, limit) -> None:
    """List devices, searched, filtered and sorted (all pages, or --limit).

    \b
    mdm-appliance devices
    mdm-appliance devices --filter 'os_version < "17.5" and model_name contains "iPad"' --sort os
    mdm-appliance devices --filter 'last_seen < 30d ago' --sort last_seen --json | jq -r '.[].id'
    mdm-appliance devices --group lab-macs --inactive
    """
    client = _client(config_path)
    found: list[dict] = []
    cursor = None
    while limit is None or len(found) < limit:
        _, page = client.call("GET", _path(
            "devices", limit=min(1000, limit - len(found)) if limit else 1000, cursor=cursor, filter=filter_text,
            q=text, group=group, serial=serial, udid=udid, sort=sort, order="desc" if desc else None,
            active=None if active is None else str(active).lower()))
        found += page["devices"]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    if as_json:
        _print_json(found)
    else:
        _table(found, DEVICE_COLUMNS)
        click.echo(f"{len(found)} of {page['total']} device(s)" if cursor else f"{len(found)} device(s)", err=True)


@main.command("device")
@config_option
@json_option
@click.argument("device_id")
def device(config_path, as_json, device_id) -> None:
    """Show one device with its channels (device and users).

    \b
    mdm-appliance device 0000FE00-1234ABCD5678EF90
    mdm-appliance device 0000FE00-1234ABCD5678EF90 --json | jq .enrollments
    """
    _, found = _client(config_path).call("GET", _path("devices", device_id))
    if as_json:
        _print_json(found)
        return
    for key, heading in DEVICE_COLUMNS + [("device_name", "NAME"), ("build_version", "BUILD"),
                                          ("authenticated_at", "AUTHENTICATED"), ("enrolled_at", "ENROLLED AT")]:
        value = _last_push(found) if key == "last_push_result" else _cell(found.get(key))
        click.echo(f"{heading.lower() + ':':15} {value}")
    certificate = found.get("identity_certificate") or {}
    click.echo(f"{'identity cert:':15} {_cell(certificate.get('subject'))} until {_cell(certificate.get('not_after'))}")
    if certificate:
        click.echo(f"{'renewal:':15} {_renewal(certificate)}")
    click.echo(f"{'groups:':15} {', '.join(found.get('groups') or []) or '-'}")
    _print_inventory(found.get("inventory"))
    for change in (found.get("history") or [])[:5]:
        click.echo(f"{'changed:':15} {_cell(change['changed_at'])} {change['fact']} {_cell(change['old_value'])} -> "
                   f"{_cell(change['new_value'])} ({change['source']})")
    click.echo("")
    _table(found["enrollments"], [("id", "ENROLLMENT"), ("type", "TYPE"), ("user_short_name", "USER"),
                                  ("active", "ACTIVE"), ("last_seen_at", "LAST SEEN"),
                                  ("last_push_result", "LAST PUSH"), ("last_push_at", "PUSHED AT"),
                                  ("last_push_error", "PUSH ERROR"), ("pending_commands", "PENDING")])


def _renewal(certificate: dict) -> str:
    """'pending (attempt 2, next at ...): the device answered NotNow ...', 'scheduled: renewal begins at ...'."""
    renewal = certificate.get("renewal") or {}
    facts = [f"attempt {renewal['attempts']}" if renewal.get("attempts") else None,
             f"next at {_cell(renewal['next_attempt_at'])}" if renewal.get("next_attempt_at") else None]
    text = renewal.get("state", "-")
    if any(facts):
        text += f" ({', '.join(fact for fact in facts if fact)})"
    return text + (f": {renewal['reason']}" if renewal.get("reason") else "")


_INVENTORY_FACTS = [("inventory_at", "inventory at"), ("supervised", "supervised"),
                    ("activation_lock", "activation lock"), ("filevault", "filevault"),
                    ("passcode_present", "passcode"), ("passcode_compliant", "passcode ok")]


def _print_inventory(inventory: dict | None) -> None:
    if inventory is None:
        click.echo(f"{'inventory:':15} none yet")
        return
    for key, heading in _INVENTORY_FACTS:
        click.echo(f"{heading + ':':15} {_cell(inventory.get(key))}")
    capacity, available, battery = (inventory.get(key)
                                    for key in ("device_capacity", "available_capacity", "battery_level"))
    if capacity is not None:
        click.echo(f"{'storage:':15} {_cell(available)} of {capacity:g} GB available")
    if battery is not None:
        click.echo(f"{'battery:':15} {battery * 100:.0f} %")
    click.echo(f"{'installed:':15} {len(inventory.get('profiles') or [])} profile(s), "
               f"{len(inventory.get('certificates') or [])} certificate(s), "
               f"{len(inventory.get('applications') or [])} app(s)")


def _last_push(found: dict) -> str:
    """'failed at 2026-01-02 03:04:05: 400 BadDeviceToken', 'ok at ...', or 'never'."""
    result = found.get("last_push_result")
    if result is None:
        return "never"
    text = f"{result} at {_cell(found.get('last_push_at'))}"
    return text + (f": {found['last_push_error']}" if found.get("last_push_error") else "")


@main.command("commands")
@config_option
@json_option
@click.option("--limit", type=click.IntRange(1, 1000), default=50, show_default=True, help="How many, newest first.")
@click.argument("enrollment_id")
def device_commands(config_path, as_json, limit, enrollment_id) -> None:
    """Pending and past commands of a device (or of one user channel), newest first.

    \b
    mdm-appliance commands 0000FE00-1234ABCD5678EF90 --limit 10
    mdm-appliance commands 0000FE00-1234ABCD5678EF90 --json | jq -r '.[] | select(.pending) | .command_uuid'
    """
    _, page = _client(config_path).call("GET", _path("devices", enrollment_id, "commands", limit=limit))
    if as_json:
        _print_json(page["commands"])
        return
    rows = [{**row, "error": _error_text(results.error_chain(row.get("error_chain")))} for row in page["commands"]]
    _table(rows, [("queued_at", "QUEUED"), ("command_uuid", "COMMAND UUID"), ("request_type", "TYPE"),
                  ("status", "STATUS"), ("received_at", "ANSWERED"), ("enrollment_id", "ENROLLMENT"),
                  ("error", "ERROR")])


def _error_text(errors: tuple[results.ErrorEntry, ...]) -> str | None:
    """The first ErrorChain entry in one line: '12021 MCMDMErrorDomain: The device is locked'."""
    if not errors:
        return None
    first = errors[0]
    where = " ".join(str(part) for part in (first.code, first.domain) if part is not None)
    return f"{where}: {first.description}" if first.description else where or None


@main.command("command")
@config_option
@json_option
@click.option("--plist", "raw", is_flag=True, help="Print the raw result plist of one enrollment.")
@click.option("--enrollment", "enrollment_id", help="The enrollment whose result to show.")
@click.argument("command_uuid")
def command(config_path, as_json, raw, enrollment_id, command_uuid) -> None:
    """A command's status per enrollment, and its results.

    \b
    mdm-appliance command 6f1b8e1c-1f0a-4c55-9f0e-0d7c2f0e9a11
    mdm-appliance command 6f1b8e1c-1f0a-4c55-9f0e-0d7c2f0e9a11 --plist --enrollment 0000FE00-1234ABCD5678EF90
    """
    client = _client(config_path)
    if raw:
        _, data = client.call("GET", _path("commands", command_uuid, format="plist", enrollment_id=enrollment_id))
        click.echo(data if isinstance(data, bytes) else json.dumps(data), nl=False)
        return
    _, found = client.call("GET", _path("commands", command_uuid, enrollment_id=enrollment_id, limit=1000))
    if as_json:
        _print_json(found)
        return
    click.echo(f"command {found['command_uuid']}  {found['request_type']}  created {_cell(found['created_at'])}")
    click.echo("  ".join(f"{status}: {count}" for status, count in found["counts"].items()))
    click.echo("")
    _table(found["enrollments"], [("enrollment_id", "ENROLLMENT"), ("status", "STATUS"),
                                  ("queued_at", "QUEUED"), ("received_at", "ANSWERED")])
    if found["next_cursor"]:
        click.echo("(first 1000 enrollments shown; --json and the API page through all)", err=True)
    answered = [row for row in found["enrollments"] if row.get("result") is not None]
    for row in answered[:RESULTS_SHOWN]:
        click.echo("")
        _print_result(row, found["request_type"])
    if len(answered) > RESULTS_SHOWN:
        click.echo(f"\n({len(answered) - RESULTS_SHOWN} more answers; --enrollment ID shows one)", err=True)


RESULTS_SHOWN = 20  # answers printed in full by `command`; a fleet-wide query is read with --json


def _print_result(row: dict, request_type: str) -> None:
    """One enrollment's answer: status, ErrorChain, then the command's summary (facts and tables)."""
    try:
        result = from_json(row["result"])
    except JsonPlistError:
        result = None
    summary = (results.summarize(request_type, result) if isinstance(result, dict)
               else results.summarize_plist(request_type, result if isinstance(result, bytes) else b""))
    click.echo(f"{row['enrollment_id']}: {summary.status or row['status']} at {_cell(row.get('received_at'))}")
    for entry in summary.errors:
        click.echo(f"  error {_error_text((entry,))}")
    if summary.facts:
        width = max(len(label) for label, _ in summary.facts) + 1
        for label, value in summary.facts:
            click.echo(f"  {label + ':':{width}} {value}")
    for table in summary.tables:
        click.echo(f"  {table.title} ({len(table.rows)})")
        _table([dict(zip(table.columns, row)) for row in table.rows], [(c, c.upper()) for c in table.columns],
               indent="    ")


# --- acting ----------------------------------------------------------------------------------------

def _raw_value(text: str):
    """--raw -k KEY VALUE: JSON when it parses (numbers, true, arrays, objects), @FILE for data, else a string."""
    if text.startswith("@"):
        return {DATA: base64.b64encode(_read_file(text[1:])).decode("ascii")}
    try:
        return json.loads(text)
    except ValueError:
        return text


def _read_file(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc.strerror or exc}") from None


def _report_outcomes(answer, as_json: bool, status: int) -> None:
    if not isinstance(answer, dict) or not isinstance(answer.get("status"), dict):
        message = answer.get("error", {}).get("message") if isinstance(answer, dict) else None
        raise CliError(f"the server answered {status}: {message or answer!r}")
    if as_json:
        _print_json(answer)
    else:
        rows = [{"id": eid, **entry} for eid, entry in answer["status"].items()]
        _table(rows, [("id", "ENROLLMENT"), ("push_result", "PUSH"), ("push_error", "PUSH ERROR"),
                      ("command_error", "ERROR")])
        if "command_uuid" in answer:
            click.echo(f"command {answer['command_uuid']} ({answer['request_type']})", err=True)
    entries = answer["status"].values()
    not_queued = sum(1 for entry in entries if "command_error" in entry)
    not_pushed = sum(1 for entry in entries if "push_error" in entry)
    if not_queued or not_pushed:
        problems = []
        if not_queued:
            problems.append(f"{not_queued} of {len(entries)} enrollment(s) failed")
        if not_pushed:
            problems.append(f"{not_pushed} not pushed" + (" (queued: they get it at their next check-in)"
                                                          if "command_uuid" in answer else ""))
        raise CliError(f"{'; '.join(problems)} (HTTP {status})")


def _checked(error: MessageError) -> CliError:
    hint = "; --raw sends it anyway" if isinstance(error, catalog.CatalogError) else ""
    return CliError(f"{error}{hint}")


def _confirm_destructive(request_type: str, ids: list[str], yes: bool) -> None:
    """A destructive command to more than one enrollment, or to a group, is sent only when confirmed."""
    groups = [eid for eid in ids if eid.startswith("group:")]
    if yes or not catalog.is_destructive(request_type) or (len(ids) <= 1 and not groups):
        return
    spec = catalog.get(request_type)
    targets = f"{len(ids) - len(groups)} enrollment(s)"
    if groups:
        targets += " and group(s) " + ", ".join(group[len("group:"):] for group in groups)
    if not sys.stdin.isatty():
        raise CliError(f"{request_type} is destructive and would go to {targets}: add --yes to send it "
                       "without a terminal to confirm on")
    click.echo(f"{request_type}: {spec.summary}", err=True)
    if not click.confirm(f"Send {request_type} to {targets}?", default=False, err=True):
        raise CliError(f"{request_type} not sent")


@main.command("enqueue")
@config_option
@json_option
@click.argument("ids", nargs=-1, required=True)
@click.option("--plist", "plist_file", type=click.File("rb"), help="A command plist (CommandUUID + Command), as NanoMDM takes it.")
@click.option("--type", "request_type", help="Build the command: its RequestType (see `mdm-appliance catalog`).")
@click.option("--key", "-k", "keys", nargs=2, multiple=True, metavar="KEY VALUE",
              help="A key of the built command, typed by the catalog (PIN stays a string). Repeat an array key "
                   "for each item, or give a JSON array; @FILE reads a file for data keys (its bytes) and for "
                   "dictionary keys (a plist); dictionaries as JSON; booleans true/false; data as base64.")
@click.option("--raw", is_flag=True, help="Bypass the catalog: any RequestType and key; VALUE is JSON if it "
                                          "parses, @FILE for data, else a string.")
@click.option("--yes", "-y", is_flag=True, help="Send a destructive command to several enrollments or a group "
                                                "without asking (for scripts).")
@click.option("--nopush", is_flag=True, help="Queue only; the devices get it at their next check-in.")
@click.option("--ttl", metavar="DURATION", help="Expire it where still pending after this long (\"12h\", \"7d\"; "
                                                "0: never) [default: the server's [queue] command_ttl].")
def enqueue(config_path, as_json, ids, plist_file, request_type, keys, raw, yes, nopush, ttl) -> None:
    """Queue a command for one or many enrollments (ID "-" reads ids from stdin) and push them.

    The command is checked against the catalog (`mdm-appliance catalog TYPE` lists its keys) unless --raw.
    A destructive command (EraseDevice, DeviceLock, RestartDevice...) to more than one enrollment or to a
    group asks first on a terminal; scripts pass --yes.

    \b
    mdm-appliance enqueue UDID --type DeviceInformation -k Queries OSVersion -k Queries SerialNumber
    mdm-appliance enqueue UDID --type DeviceLock -k PIN 123456 -k Message "Call IT on 555-0100"
    mdm-appliance enqueue UDID1 UDID2 --type InstallProfile -k Payload @wifi.mobileconfig
    mdm-appliance enqueue UDID --type Settings -k Settings '{"Item": "DeviceName", "DeviceName": "Desk 4"}'
    mdm-appliance enqueue - --type RestartDevice --yes < ids.txt
    mdm-appliance enqueue UDID --plist restart.plist
    mdm-appliance enqueue UDID --raw --type SomeNewCommand -k Flag true
    mdm-appliance enqueue UDID --type ScheduleOSUpdateScan --ttl 2d
    """
    if (plist_file is None) == (request_type is None):
        raise CliError("give either --plist FILE or --type RequestType")
    if plist_file is not None and keys:
        raise CliError("--key builds a command with --type; a --plist file is sent as it is")
    enrollment_ids = _ids(ids)
    query = {"nopush": "1" if nopush else None, "strict": None if raw else "1", "ttl": ttl}
    try:
        if plist_file is not None:
            command = parse_command(plist_file.read())
            if not raw:
                catalog.check(command.command)
            request_type, body = command.request_type, command.body
        elif raw:
            built = {"RequestType": request_type, **{name: _raw_value(value) for name, value in keys}}
        else:
            built = to_json(catalog.build(request_type, keys, read_file=_read_file))
            request_type = built["RequestType"]
    except MessageError as exc:
        raise _checked(exc) from None
    _confirm_destructive(request_type, enrollment_ids, yes)
    client = _client(config_path)
    ok = (200, 207, 500)
    if plist_file is not None:
        status, answer = client.call("PUT", _path("enqueue", ",".join(enrollment_ids), **query), body=body,
                                     content_type="application/xml", ok=ok)
    else:
        status, answer = client.call("POST", _path("commands", **query), ok=ok, payload={
            "enrollment_ids": enrollment_ids, "command": built, "no_push": nopush})
    _report_outcomes(answer, as_json, status)


@main.command("catalog")
@json_option
@click.argument("request_type", required=False)
def show_catalog(as_json, request_type) -> None:
    """The commands `enqueue --type` knows, or one command's keys (no server needed).

    \b
    mdm-appliance catalog
    mdm-appliance catalog EraseDevice
    mdm-appliance catalog --json | jq '.commands[].request_type'
    """
    if request_type is None:
        if as_json:
            _print_json(catalog.to_json())
            return
        _table([{"type": spec.request_type, "category": spec.category, "destructive": spec.destructive or None,
                 "platforms": ", ".join(p.name for p in spec.platforms), "summary": spec.summary}
                for spec in catalog.commands()],
               [("type", "TYPE"), ("category", "CATEGORY"), ("destructive", "DESTRUCTIVE"),
                ("platforms", "PLATFORMS"), ("summary", "WHAT IT DOES")])
        return
    try:
        spec = catalog.get(request_type)
    except catalog.UnknownCommand as exc:
        raise CliError(str(exc)) from None
    if as_json:
        _print_json(spec.to_json())
        return
    platforms = ", ".join(f"{p.name} {p.introduced}" + (" (supervised)" if p.supervised else "") for p in spec.platforms)
    click.echo(f"{spec.request_type} ({spec.category}{', destructive' if spec.destructive else ''}): {spec.summary}")
    click.echo(f"platforms: {platforms}")
    if not spec.keys:
        click.echo("no keys")
        return
    click.echo("")
    _table([{"key": key.name, "type": _type_text(key), "required": key.required,
             "platforms": ", ".join(key.platforms), "allowed": _allowed(key)} for key in spec.keys],
           [("key", "KEY"), ("type", "TYPE"), ("required", "REQUIRED"), ("platforms", "PLATFORMS"),
            ("allowed", "VALUES")])


def _type_text(key: catalog.Key) -> str:
    if key.type == "array" and len(key.items) == 1:
        return f"array of {key.items[0].type}"
    return key.type


def _allowed(key: catalog.Key) -> str | None:
    shape = key.items[0] if key.type == "array" and len(key.items) == 1 else key
    if shape.allowed:
        shown = ", ".join(map(str, shape.allowed[:6]))
        return shown + (f", ... ({len(shape.allowed)} in all)" if len(shape.allowed) > 6 else "")
    if shape.keys:
        return "keys: " + ", ".join(sub.name for sub in shape.keys)
    if key.type == "array" and len(key.items) > 1:
        return f"one of {len(key.items)} shapes"
    return None


@main.command("push")
@config_option
@json_option
@click.argument("ids", nargs=-1, required=True)
def push(config_path, as_json, ids) -> None:
    """Send an APNs push to enrollments now (ID "-" reads ids from stdin); prints each APNs id or error.

    \b
    mdm-appliance push 0000FE00-1234ABCD5678EF90
    mdm-appliance devices --json | jq -r '.[].id' | mdm-appliance push -
    """
    status, answer = _client(config_path).call("POST", _path("push", ",".join(_ids(ids))), ok=(200, 207, 500))
    _report_outcomes(answer, as_json, status)


@main.command("clear-queue")
@config_option
@json_option
@click.argument("enrollment_id")
def clear_queue(config_path, as_json, enrollment_id) -> None:
    """Take every pending command off an enrollment's queue.

    \b
    mdm-appliance clear-queue 0000FE00-1234ABCD5678EF90
    """
    _, answer = _client(config_path).call("DELETE", _path("devices", enrollment_id, "queue"))
    if as_json:
        _print_json(answer)
    else:
        click.echo(f"{answer['cleared']} command(s) taken off {enrollment_id}'s queue")


@main.command("cancel")
@config_option
@json_option
@click.argument("command_uuid")
@click.option("--enrollment", "enrollment_id", default=None, metavar="ID",
              help="Only off this enrollment's queue [default: wherever it is still pending].")
def cancel(config_path, as_json, command_uuid, enrollment_id) -> None:
    """Take a command off the queues it is still pending on (answered ones stay in the history).

    \b
    mdm-appliance cancel 4D2C6A1E-0C3B-4C1F-9D7E-2F0A5B8C9D10
    mdm-appliance cancel 4D2C6A1E-0C3B-4C1F-9D7E-2F0A5B8C9D10 --enrollment 0000FE00-1234ABCD5678EF90
    """
    path = (_path("devices", enrollment_id, "queue", command_uuid) if enrollment_id is not None
            else _path("commands", command_uuid))
    _, answer = _client(config_path).call("DELETE", path)
    if as_json:
        _print_json(answer)
    else:
        click.echo(f"{command_uuid} taken off {answer['cancelled']} queue(s)")


STUCK_COLUMNS = [("device_id", "DEVICE"), ("enrollment_id", "ENROLLMENT"), ("request_type", "COMMAND"),
                 ("not_now_count", "NOTNOW"), ("not_now_at", "LAST NOTNOW"), ("queued_at", "QUEUED"),
                 ("expires_at", "EXPIRES"), ("command_uuid", "UUID")]


@main.command("stuck")
@config_option
@json_option
@click.option("--threshold", type=click.IntRange(0, 1_000_000), default=None,
              help="More NotNows than this [default: the server's [queue] not_now_threshold].")
def stuck(config_path, as_json, threshold) -> None:
    """Devices with a pending command they keep answering NotNow to (all pages).

    \b
    mdm-appliance stuck
    mdm-appliance stuck --threshold 3 --json | jq -r '.devices[].device_id'
    """
    client = _client(config_path)
    devices: list[dict] = []
    cursor, used = None, threshold
    while True:
        _, page = client.call("GET", _path("queue", "stuck", threshold=threshold, limit=1000, cursor=cursor))
        devices += page["devices"]
        cursor, used = page["next_cursor"], page["threshold"]
        if cursor is None:
            break
    if as_json:
        _print_json({"threshold": used, "devices": devices})
        return
    rows = [{"device_id": device["device_id"], **entry} for device in devices for entry in device["commands"]]
    _table(rows, STUCK_COLUMNS)
    click.echo(f"{len(devices)} device(s) with a command NotNow'd more than {used} times", err=True)


# --- backup ----------------------------------------------------------------------------------------

_SKIP_SUFFIXES = ("-wal", "-shm", "-journal", ".tmp")


@main.command("backup")
@config_option
@click.argument("dest", type=click.Path(file_okay=False, path_type=Path))
def backup(config_path, dest: Path) -> None:
    """Copy the database (online, consistent) and data_dir's secrets into DEST, a new folder.

    To restore, point [storage] data_dir at DEST (or copy it into place) and start the appliance.
    DEST holds the CA key, the push certificate's key (in the database) and the API key: keep it as
    private as data_dir.

    \b
    mdm-appliance backup /var/backups/mdm-$(date +%F)
    """
    config = load_config_or_exit(config_path)
    source_dir = config.data_dir
    source_db = source_dir / DB_FILE
    if not source_db.is_file():
        raise CliError(f"no database at {source_db} (is data_dir right, and readable by you?)")
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise CliError(f"{dest} exists and is not an empty folder")
    try:
        dest.mkdir(mode=0o700, parents=True, exist_ok=True)
        contents = _backup_database(source_db, dest / DB_FILE)
        files = _copy_secrets(source_dir, dest)
    except sqlite3.OperationalError as exc:
        raise database_error(source_db, exc) from None
    except (OSError, sqlite3.Error) as exc:
        raise CliError(f"backup failed: {exc}") from None
    held = ", ".join(f"{count} {what}" for what, count in contents.items())
    click.echo(f"backed up {source_dir} to {dest}: database ({held}) and {len(files)} file(s): "
               f"{', '.join(files)}", err=True)


# What the backup summary counts (table -> words): enough for an operator to see the copy is the fleet.
_SUMMARY = {"devices": "devices", "enrollments": "enrollments", "queue": "queued commands",
            "results": "results", "push_certificates": "push certificates", "outbox": "undelivered events"}


def _backup_database(source: Path, target: Path) -> dict[str, int]:
    """SQLite's online backup from inside one read transaction: a consistent snapshot while the server
    keeps writing (WAL lets it), copied in steps so the progress bar moves. Returns what the copy holds,
    read back from the copy itself after its integrity check. Any schema is copied as it is (a backup
    is what one takes before an upgrade), and nothing is migrated."""
    from appliance.store.db import connect_sync

    # Reads only; a lock wait (a checkpoint, say) ends after LOCK_WAIT_SECONDS.
    src = connect_sync(source, migrate=False, busy_timeout=LOCK_WAIT_SECONDS, create=False)
    old_umask = os.umask(0o077)
    try:
        dst = sqlite3.connect(str(target), isolation_level=None)
        try:
            src.execute("BEGIN")
            src.execute("SELECT count(*) FROM sqlite_master").fetchone()  # starts the snapshot
            total = src.execute("PRAGMA page_count").fetchone()[0]
            with click.progressbar(length=total, label="database", file=sys.stderr,
                                   hidden=not sys.stderr.isatty()) as bar:
                done = [0]

                def progress(status, remaining, pages):
                    bar.update(pages - remaining - done[0])
                    done[0] = pages - remaining

                src.backup(dst, pages=512, progress=progress)
            src.execute("COMMIT")
            import sqlite_utils  # here, not at the top: ~0.25 s every other command should not pay

            copy = sqlite_utils.Database(dst)
            check = copy.execute("PRAGMA integrity_check").fetchone()[0]
            if check != "ok":
                raise sqlite3.DatabaseError(f"the copy fails its integrity check: {check}")
            tables = set(copy.table_names())
            contents = {words: copy[table].count for table, words in _SUMMARY.items() if table in tables}
            dst.execute("PRAGMA journal_mode=WAL")
        finally:
            dst.close()
    finally:
        os.umask(old_umask)
        src.close()
    return contents


def _copy_secrets(source_dir: Path, dest: Path) -> list[str]:
    """Every regular file of data_dir but the live database files: CA, server TLS, API key, push CSR key..."""
    copied = []
    for path in sorted(source_dir.iterdir()):
        if not path.is_file() or path.name.startswith(DB_FILE) or path.name.endswith(_SKIP_SUFFIXES):
            continue
        shutil.copy2(path, dest / path.name)
        os.chmod(dest / path.name, path.stat().st_mode & 0o777)
        copied.append(path.name)
    return copied
