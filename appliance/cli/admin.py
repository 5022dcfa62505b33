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
from appliance.cli.common import ApiClient, CliError, config_option, load_config_or_exit
from appliance.protocol.plistjson import DATA

json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON (for scripts) instead of a table.")


def _client(config_path) -> ApiClient:
    return ApiClient(load_config_or_exit(config_path))


def _print_json(value) -> None:
    click.echo(json.dumps(value, indent=2, ensure_ascii=False))


def _table(rows: list[dict], columns: list[tuple[str, str]]) -> None:
    """A plain aligned table; columns are (key, heading)."""
    cells = [[_cell(row.get(key)) for key, _ in columns] for row in rows]
    widths = [max([len(heading)] + [len(line[i]) for line in cells]) for i, (_, heading) in enumerate(columns)]
    click.echo("  ".join(heading.ljust(width) for (_, heading), width in zip(columns, widths)).rstrip())
    for line in cells:
        click.echo("  ".join(value.ljust(width) for value, width in zip(line, widths)).rstrip())


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
@click.option("--serial", help="Only the device with this serial number.")
@click.option("--udid", help="Only the device with this UDID.")
@click.option("--active/--inactive", default=None, help="Only active (or only inactive) devices.")
def devices(config_path, as_json, serial, udid, active) -> None:
    """List devices (all pages).

    \b
    mdm-appliance devices
    mdm-appliance devices --inactive --json | jq -r '.[].id'
    """
    client = _client(config_path)
    found: list[dict] = []
    cursor = None
    while True:
        _, page = client.call("GET", _path("devices", limit=1000, cursor=cursor, serial=serial, udid=udid,
                                           active=None if active is None else str(active).lower()))
        found += page["devices"]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    if as_json:
        _print_json(found)
    else:
        _table(found, DEVICE_COLUMNS)
        click.echo(f"{len(found)} device(s)", err=True)


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
        click.echo(f"{heading.lower() + ':':15} {_cell(found.get(key))}")
    certificate = found.get("identity_certificate") or {}
    click.echo(f"{'identity cert:':15} {_cell(certificate.get('subject'))} until {_cell(certificate.get('not_after'))}")
    click.echo("")
    _table(found["enrollments"], [("id", "ENROLLMENT"), ("type", "TYPE"), ("user_short_name", "USER"),
                                  ("active", "ACTIVE"), ("last_seen_at", "LAST SEEN"),
                                  ("last_push_result", "LAST PUSH"), ("pending_commands", "PENDING")])


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
    _table(page["commands"], [("queued_at", "QUEUED"), ("command_uuid", "COMMAND UUID"),
                              ("request_type", "TYPE"), ("status", "STATUS"), ("received_at", "ANSWERED"),
                              ("enrollment_id", "ENROLLMENT")])


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


# --- acting ----------------------------------------------------------------------------------------

def _value(text: str):
    """--key VALUE: JSON when it parses (numbers, true, arrays, objects), @FILE for data, else a string."""
    if text.startswith("@"):
        try:
            return {DATA: base64.b64encode(Path(text[1:]).read_bytes()).decode("ascii")}
        except OSError as exc:
            raise CliError(f"cannot read {text[1:]}: {exc.strerror or exc}") from None
    try:
        return json.loads(text)
    except ValueError:
        return text


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


@main.command("enqueue")
@config_option
@json_option
@click.argument("ids", nargs=-1, required=True)
@click.option("--plist", "plist_file", type=click.File("rb"), help="A command plist (CommandUUID + Command), as NanoMDM takes it.")
@click.option("--type", "request_type", help="Build the command: its RequestType.")
@click.option("--key", "-k", "keys", nargs=2, multiple=True, metavar="NAME VALUE",
              help="A key of the built command; VALUE is JSON if it parses, @FILE for data, else a string.")
@click.option("--nopush", is_flag=True, help="Queue only; the devices get it at their next check-in.")
def enqueue(config_path, as_json, ids, plist_file, request_type, keys, nopush) -> None:
    """Queue a command for one or many enrollments (ID "-" reads ids from stdin) and push them.

    \b
    mdm-appliance enqueue UDID --type DeviceInformation -k Queries '["OSVersion","SerialNumber"]'
    mdm-appliance enqueue UDID1 UDID2 --type InstallProfile -k Payload @profile.mobileconfig
    mdm-appliance enqueue UDID --plist restart.plist
    """
    if (plist_file is None) == (request_type is None):
        raise CliError("give either --plist FILE or --type RequestType")
    if plist_file is not None and keys:
        raise CliError("--key builds a command with --type; a --plist file is sent as it is")
    enrollment_ids = _ids(ids)
    client = _client(config_path)
    ok = (200, 207, 500)
    if plist_file is not None:
        status, answer = client.call("PUT", _path("enqueue", ",".join(enrollment_ids), nopush="1" if nopush else None),
                                     body=plist_file.read(), content_type="application/xml", ok=ok)
    else:
        command_keys = {"RequestType": request_type}
        for name, value in keys:
            command_keys[name] = _value(value)
        status, answer = client.call("POST", "/v1/commands", ok=ok, payload={
            "enrollment_ids": enrollment_ids, "command": command_keys, "no_push": nopush})
    _report_outcomes(answer, as_json, status)


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
    read back from the copy itself after its integrity check."""
    src = sqlite3.connect(str(source), isolation_level=None, timeout=30)  # reads only
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
