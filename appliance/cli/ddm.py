"""`mdm-appliance ddm ...`: Declarative Device Management over the running server's /api/v1/ddm API (the
KMFDDM-compatible one): declarations, sets, assignment, status, hosted assets and OS-update enforcement.
Tables and sentences for people, --json for scripts; a failure prints one line and exits 1."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from urllib.parse import quote, urlencode

import click

from appliance.cli import main
from appliance.cli.admin import _client, _ids, _print_json, _table, json_option
from appliance.cli.common import CliError, config_option

API = "/api/v1/ddm"


def _path(*parts: str, **query) -> str:
    path = API + "".join("/" + quote(part, safe=":,") for part in parts)
    pairs = [(key, item) for key, value in query.items() if value is not None
             for item in (value if isinstance(value, (list, tuple)) else [value])]
    return path + ("?" + urlencode(pairs) if pairs else "")


def _change(client, method: str, path: str, body: bytes | None = None, content_type: str | None = None) -> bool:
    """A KMFDDM-style change: True when it changed (204), False when it was already so (304)."""
    status, data = client.request(method, path, body, content_type)
    for name, value in getattr(client, "last_headers", []):
        if name.lower() == "warning":
            click.echo(f"warning: {value.split(' ', 2)[-1].strip(chr(34))}", err=True)
    if status in (204, 304):
        return status == 204
    try:
        message = json.loads(data)["error"]["message"]
    except (ValueError, KeyError, TypeError):
        message = data[:200].decode("utf-8", "replace")
    raise CliError(f"{method} {path} answered {status}: {message}")


def _said(changed: bool, what: str) -> None:
    click.echo(f"{what}" if changed else f"{what}: already so, nothing changed")


nonotify_option = click.option("--nonotify", is_flag=True,
                               help="Change without telling the devices (they see it at their next sync).")


@main.group("ddm")
def ddm() -> None:
    """Declarative Device Management: declarations, sets, assignment, status, OS updates.

    \b
    mdm-appliance ddm put passcode.json                       # store a declaration (JSON file)
    mdm-appliance ddm set-add staff com.example.passcode      # put it in a set
    mdm-appliance ddm assign staff UDID1 UDID2                # assign the set: the devices are told
    mdm-appliance ddm assign staff --group lab-macs           # ... or to a group's members
    mdm-appliance ddm status                                  # per declaration: applied, invalid, ...
    mdm-appliance ddm os-update --version 17.6 --deadline 2027-01-15T18:00 --group lab-macs
    """


# --- declarations ------------------------------------------------------------------------------------

@ddm.command("declarations")
@config_option
@json_option
@click.option("--builtin", is_flag=True, help="Include the appliance's own (mdm-appliance.*).")
def declarations(config_path, as_json, builtin) -> None:
    """List declarations with their type, sets and ServerToken.

    \b
    mdm-appliance ddm declarations
    mdm-appliance ddm declarations --builtin --json
    """
    _, rows = _client(config_path).call("GET", _path("declarations", detail="1", builtin="1" if builtin else None))
    if as_json:
        _print_json(rows)
        return
    _table(rows, [("identifier", "IDENTIFIER"), ("type", "TYPE"), ("sets", "SETS"),
                  ("server_token", "SERVER TOKEN"), ("updated_at", "UPDATED")])


@ddm.command("declaration")
@config_option
@click.argument("identifier")
def declaration(config_path, identifier) -> None:
    """Print one declaration (JSON, with its ServerToken).

    \b
    mdm-appliance ddm declaration com.example.passcode
    """
    _, found = _client(config_path).call("GET", _path("declarations", identifier))
    _print_json(found)


@ddm.command("put")
@config_option
@nonotify_option
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
def put(config_path, nonotify, files) -> None:
    """Store declarations from JSON files ({Type, Identifier, Payload}; "-" reads stdin).

    Files are stored in the order given: put configurations before the activations naming them.

    \b
    mdm-appliance ddm put passcode.json activation.json
    """
    client = _client(config_path)
    for file in files:
        body = sys.stdin.buffer.read() if str(file) == "-" else _read(file)
        try:
            identifier = json.loads(body).get("Identifier", str(file))
        except (ValueError, AttributeError):
            identifier = str(file)
        changed = _change(client, "PUT", _path("declarations", nonotify="1" if nonotify else None), body,
                          "application/json")
        _said(changed, f"stored {identifier}")


def _read(file: Path) -> bytes:
    try:
        return file.read_bytes()
    except OSError as exc:
        raise CliError(f"cannot read {file}: {exc.strerror or exc}") from None


@ddm.command("delete")
@config_option
@click.argument("identifier")
def delete(config_path, identifier) -> None:
    """Delete a declaration (no set may hold it, no declaration name it).

    \b
    mdm-appliance ddm delete com.example.passcode
    """
    _said(_change(_client(config_path), "DELETE", _path("declarations", identifier)), f"deleted {identifier}")


@ddm.command("touch")
@config_option
@nonotify_option
@click.argument("identifier")
def touch(config_path, nonotify, identifier) -> None:
    """Give a declaration a new ServerToken, so devices fetch and apply it again.

    \b
    mdm-appliance ddm touch com.example.passcode
    """
    _change(_client(config_path), "POST", _path("declarations", identifier, "touch",
                                                nonotify="1" if nonotify else None))
    click.echo(f"touched {identifier}")


# --- sets and assignment -----------------------------------------------------------------------------

@ddm.command("sets")
@config_option
@json_option
def sets(config_path, as_json) -> None:
    """List sets with their declarations.

    \b
    mdm-appliance ddm sets
    """
    client = _client(config_path)
    _, names = client.call("GET", _path("sets"))
    rows = [{"set": name, "declarations": ", ".join(client.call("GET", _path("set-declarations", name))[1])}
            for name in names]
    if as_json:
        _print_json(rows)
    else:
        _table(rows, [("set", "SET"), ("declarations", "DECLARATIONS")])


@ddm.command("set-add")
@config_option
@nonotify_option
@click.argument("set_name")
@click.argument("identifiers", nargs=-1, required=True)
def set_add(config_path, nonotify, set_name, identifiers) -> None:
    """Put declarations in a set (made by naming it).

    \b
    mdm-appliance ddm set-add staff com.example.passcode.activation
    """
    client = _client(config_path)
    for identifier in identifiers:
        changed = _change(client, "PUT", _path("set-declarations", set_name, declaration=identifier,
                                               nonotify="1" if nonotify else None))
        _said(changed, f"{identifier} is in set {set_name}")


@ddm.command("set-remove")
@config_option
@nonotify_option
@click.argument("set_name")
@click.argument("identifiers", nargs=-1, required=True)
def set_remove(config_path, nonotify, set_name, identifiers) -> None:
    """Take declarations out of a set.

    \b
    mdm-appliance ddm set-remove staff com.example.passcode.activation
    """
    client = _client(config_path)
    for identifier in identifiers:
        changed = _change(client, "DELETE", _path("set-declarations", set_name, declaration=identifier,
                                                  nonotify="1" if nonotify else None))
        _said(changed, f"{identifier} is out of set {set_name}")


def _assignment(config_path, set_name, ids, group_names, nonotify, method: str, said: str) -> None:
    if not ids and not group_names:
        raise CliError("name enrollment ids or --group NAME")
    client = _client(config_path)
    nonotify_arg = "1" if nonotify else None
    changed = 0
    for eid in _ids(ids) if ids else []:
        changed += _change(client, method, _path("enrollment-sets", eid, set=set_name, nonotify=nonotify_arg))
    if ids:
        click.echo(f"set {set_name} {said} {changed} enrollment(s)")
    for group in group_names:
        group_changed = _change(client, method, _path("group-sets", group, set=set_name, nonotify=nonotify_arg))
        _said(group_changed, f"set {set_name} {said} group {group}")


group_option = click.option("--group", "group_names", multiple=True,
                            help="A group of devices (repeatable): its members get the set while members.")


@ddm.command("assign")
@config_option
@nonotify_option
@group_option
@click.argument("set_name")
@click.argument("ids", nargs=-1)
def assign(config_path, nonotify, group_names, set_name, ids) -> None:
    """Assign a set to enrollments (ID "-" reads ids from stdin) or groups; they are told at once.

    An id that has not enrolled yet keeps the set until it does. A group's members get it (their device
    channel) for as long as they are members: devices joining later get it, devices leaving lose it.

    \b
    mdm-appliance ddm assign staff UDID1 UDID2
    mdm-appliance devices --json | jq -r '.[].id' | mdm-appliance ddm assign staff -
    mdm-appliance ddm assign staff --group lab-macs
    """
    _assignment(config_path, set_name, ids, group_names, nonotify, "PUT", "newly assigned to")


@ddm.command("unassign")
@config_option
@nonotify_option
@group_option
@click.argument("set_name")
@click.argument("ids", nargs=-1)
def unassign(config_path, nonotify, group_names, set_name, ids) -> None:
    """Take a set off enrollments (ID "-" reads ids from stdin) or groups.

    \b
    mdm-appliance ddm unassign staff UDID1
    mdm-appliance ddm unassign staff --group lab-macs
    """
    _assignment(config_path, set_name, ids, group_names, nonotify, "DELETE", "taken off")


@ddm.command("group-sets")
@config_option
@json_option
@click.argument("group")
def group_sets(config_path, as_json, group) -> None:
    """The sets assigned to a group.

    \b
    mdm-appliance ddm group-sets lab-macs
    """
    _, names = _client(config_path).call("GET", _path("group-sets", group))
    if as_json:
        _print_json(names)
    else:
        for name in names:
            click.echo(name)


@ddm.command("notify")
@config_option
@click.option("--id", "ids", multiple=True, help="An enrollment id (repeatable).")
@click.option("--set", "set_names", multiple=True, help="Every enrollment a set is assigned to (repeatable).")
@click.option("--declaration", "identifiers", multiple=True, help="Every enrollment a declaration reaches.")
def notify(config_path, ids, set_names, identifiers) -> None:
    """Tell enrollments to synchronize even though nothing changed.

    \b
    mdm-appliance ddm notify --set staff
    mdm-appliance ddm notify --id UDID1 --id UDID2
    """
    if not (ids or set_names or identifiers):
        raise CliError("name --id, --set or --declaration")
    _client(config_path).call("POST", _path("notify", id=list(ids), set=list(set_names),
                                            declaration=list(identifiers)))
    click.echo("told")


# --- status ------------------------------------------------------------------------------------------

def summary_line(entry: dict) -> str:
    """"os-update-17.6: 412 applied, 3 invalid (Error.X 3), 20 not yet reported (of 435)"."""
    parts = [f"{entry['applied']} applied"]
    if entry["invalid"]:
        reasons = ", ".join(f"{code} {count}" for code, count in sorted(entry["reasons"].items()))
        parts.append(f"{entry['invalid']} invalid ({reasons})")
    if entry["inactive"]:
        parts.append(f"{entry['inactive']} inactive")
    if entry["pending"]:
        parts.append(f"{entry['pending']} pending")
    parts.append(f"{entry['not_reported']} not yet reported")
    return f"{entry['identifier']}: {', '.join(parts)} (of {entry['enrollments']})"


@ddm.command("status")
@config_option
@json_option
@click.argument("enrollment_id", required=False)
@click.option("--declaration", help="Only this declaration (fleet-wide).")
@click.option("--group", "group_name", help="Only the enrollments of this group's devices (fleet-wide).")
def status(config_path, as_json, enrollment_id, declaration, group_name) -> None:
    """Fleet-wide status per declaration, or one enrollment's declarations and their state.

    \b
    mdm-appliance ddm status                     # os-update-17.6: 412 applied, 3 invalid (...), 20 not yet reported
    mdm-appliance ddm status --group lab-macs    # the same, counting only that group's devices
    mdm-appliance ddm status UDID                # that enrollment's sets, tokens and declarations
    """
    client = _client(config_path)
    if enrollment_id is not None:
        _, overview = client.call("GET", _path("enrollments", enrollment_id))
        if as_json:
            _print_json(overview)
            return
        click.echo(f"enrollment: {overview['enrollment_id']}\nsets: {', '.join(overview['sets']) or '-'}")
        for group, names in overview.get("groups", {}).items():
            click.echo(f"from group {group}: {', '.join(names)}")
        for key in ("declarations_token", "token_changed_at", "notified_at", "last_sync_at", "last_status_at"):
            click.echo(f"{key.replace('_', ' ')}: {overview[key] or '-'}")
        rows = [{**row, "reasons": ", ".join(r.get("code", "?") for r in row["reasons"] if isinstance(r, dict))}
                for row in overview["declarations"]]
        _table(rows, [("identifier", "IDENTIFIER"), ("kind", "KIND"), ("state", "STATE"),
                      ("reasons", "REASONS"), ("status_received", "REPORTED")])
        return
    _, answer = client.call("GET", _path("status-summary", declaration=declaration, group=group_name))
    if as_json:
        _print_json(answer["declarations"])
        return
    for entry in answer["declarations"]:
        click.echo(summary_line(entry))
    if not answer["declarations"]:
        click.echo("no declarations", err=True)


@ddm.command("errors")
@config_option
@json_option
@click.argument("enrollment_id")
def errors(config_path, as_json, enrollment_id) -> None:
    """The newest errors an enrollment's status reports carried.

    \b
    mdm-appliance ddm errors UDID1
    """
    _, found = _client(config_path).call("GET", _path("status-errors", enrollment_id))
    rows = found.get(enrollment_id, [])
    if as_json:
        _print_json(rows)
    else:
        _table([{**row, "error": _error_text(row["error"])} for row in rows],
               [("timestamp", "TIME"), ("path", "PATH"), ("error", "ERROR")])


def _error_text(error) -> str:
    """A declaration's failure ("cfg.x invalid: Error.Code") or a status item's ("device.x: Error.Code")."""
    if isinstance(error, dict):
        reasons = error.get("reasons") or error.get("Reasons") or []
        codes = ", ".join(str(r.get("code") or r.get("Code") or "?") for r in reasons if isinstance(r, dict))
        if "identifier" in error:
            return f"{error['identifier']} {error.get('valid', '?')}: {codes or 'no reason given'}"
        if "StatusItem" in error:
            return f"{error['StatusItem']}: {codes or 'no reason given'}"
    return json.dumps(error, ensure_ascii=False)[:120]


@ddm.command("values")
@config_option
@json_option
@click.argument("enrollment_id")
@click.option("--prefix", help="Only paths LIKE this (% is the wildcard), e.g. '.StatusItems.device.%'.")
def values(config_path, as_json, enrollment_id, prefix) -> None:
    """The latest values an enrollment reported (OS version, software update state, ...).

    \b
    mdm-appliance ddm values UDID1 --prefix '.StatusItems.softwareupdate.%'
    """
    _, found = _client(config_path).call("GET", _path("status-values", enrollment_id, prefix=prefix))
    rows = found.get(enrollment_id, [])
    if as_json:
        _print_json(rows)
    else:
        _table(rows, [("path", "PATH"), ("value", "VALUE"), ("timestamp", "REPORTED")])


@ddm.command("report")
@config_option
@click.argument("enrollment_id")
@click.option("--index", type=click.IntRange(0, 100_000), default=0, show_default=True,
              help="0: the newest kept report, 1: the one before, ...")
def report(config_path, enrollment_id, index) -> None:
    """Print a kept raw status report (JSON, as the device sent it).

    \b
    mdm-appliance ddm report UDID1 --index 1
    """
    status_code, data = _client(config_path).request("GET", _path("status-report", enrollment_id, index=str(index)))
    if status_code != 200:
        raise CliError(f"no status report {index} for {enrollment_id} (answered {status_code})")
    _print_json(json.loads(data))


# --- hosted assets and OS updates ----------------------------------------------------------------------

@ddm.command("asset")
@config_option
@nonotify_option
@click.argument("identifier")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--type", "asset_type", default="com.apple.asset.data", show_default=True,
              help="The asset type, e.g. com.apple.asset.credential.userpassword.")
@click.option("--content-type", default="application/octet-stream", show_default=True,
              help="The content's media type (the asset's ContentType).")
def asset(config_path, nonotify, identifier, file, asset_type, content_type) -> None:
    """Host a file as an asset: stores it and its asset declaration; devices fetch it from the appliance.

    \b
    mdm-appliance ddm asset wifi.cred cred.json --type com.apple.asset.credential.userpassword \\
        --content-type application/json
    """
    changed = _change(_client(config_path), "PUT",
                      _path("assets", identifier, type=asset_type, nonotify="1" if nonotify else None),
                      _read(file), content_type)
    _said(changed, f"stored asset {identifier}")


@ddm.command("os-update")
@config_option
@json_option
@nonotify_option
@click.option("--version", "version", required=True, help="The OS version to enforce, e.g. 17.6.")
@click.option("--deadline", required=True, help="The device's local time to install by: 2027-01-15T18:00.")
@click.option("--build", help="A build version, e.g. 21G80 (seeding).")
@click.option("--details-url", help="A page the user is shown about the update.")
@click.option("--enrollment", "ids", multiple=True,
              help="An enrollment to enforce it on (repeatable; \"-\" reads ids from stdin).")
@click.option("--group", "group_names", multiple=True,
              help="A group of devices to enforce it on, members now and later (repeatable).")
def os_update(config_path, as_json, nonotify, version, deadline, build, details_url, ids, group_names) -> None:
    """Enforce an OS version by a deadline (Apple's softwareupdate.enforcement.specific) and show progress.

    Builds the configuration and its activation in set os-update-VERSION, assigns it to the enrollments
    and groups (taking an older os-update-* set off them) and tells the devices.

    \b
    mdm-appliance ddm os-update --version 17.6 --deadline 2027-01-15T18:00 --group lab-macs
    mdm-appliance ddm os-update --version 17.6 --deadline 2027-01-15T18:00 --enrollment UDID1 --enrollment UDID2
    mdm-appliance ddm status --declaration os-update-17.6      # progress later
    """
    if not ids and not group_names:
        raise CliError("name --group NAME or --enrollment ID")
    body = {"version": version, "deadline": deadline, "enrollment_ids": _ids(ids) if ids else [],
            "groups": list(group_names)}
    if build:
        body["build"] = build
    if details_url:
        body["details_url"] = details_url
    _, answer = _client(config_path).call("POST", _path("os-update", nonotify="1" if nonotify else None),
                                          payload=body)
    if as_json:
        _print_json(answer)
        return
    payload = answer["payload"]
    targets = [f"newly assigned to {len(answer['assigned'])} enrollment(s)"] if ids else []
    for group in answer["groups"]:
        said = "assigned to" if group["assigned"] else "already assigned to"
        targets.append(f"{said} group {group['name']} ({group['members']} member(s))")
    click.echo(f"set {answer['set']}: {payload['TargetOSVersion']} by {payload['TargetLocalDateTime']} "
               f"(device local time), {', '.join(targets)}")
    if answer["replaced"]:
        click.echo(f"an older os-update set was taken off {len(answer['replaced'])} enrollment(s)")
    for group in answer["groups"]:
        if group["replaced"]:
            click.echo(f"taken off group {group['name']}: {', '.join(group['replaced'])}")
    click.echo(summary_line(answer["progress"]))
