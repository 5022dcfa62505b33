"""`mdm-appliance db`: the database's figures, and the one-time VACUUM that lets retention give space back.

`db stats` reads through a read-only connection: it never migrates, never takes a write lock and never
creates a file beside the database, so it is safe next to a running server. `db vacuum` needs the
database alone and refuses while anything else (a running appliance) has it open.
"""

from __future__ import annotations

import json
import sqlite3

import click

from appliance.bootstrap import DB_FILE
from appliance.cli import main
from appliance.cli.common import CliError, config_option, load_config_or_exit
from appliance.store import retention, vacuum
from appliance.store.db import DatabaseInUse, connect_exclusive, connect_readonly


@main.group("db")
def db() -> None:
    """The appliance database: its size and rows, and compacting it."""


def _database(config_path):
    config = load_config_or_exit(config_path)
    path = config.data_dir / DB_FILE
    if not path.is_file():
        raise CliError(f"no database at {path} (is data_dir right, and readable by you?)")
    return path


@db.command("stats")
@config_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON (for scripts).")
@click.option("--sizes", is_flag=True, help="Also the bytes of each table with its indexes (reads the whole file).")
def stats(config_path, as_json, sizes) -> None:
    """Database file size, free space inside it, and rows per table (safe while the server runs).

    \b
    mdm-appliance db stats
    mdm-appliance db stats --sizes
    mdm-appliance db stats --json | jq .rows.results
    """
    path = _database(config_path)
    try:
        conn = connect_readonly(path)
        try:
            figures = retention.database_stats(conn, path, sizes=sizes)
        finally:
            conn.close()
    except sqlite3.Error as exc:
        raise CliError(f"cannot read the database {path}: {exc} (run as the service user: "
                       "sudo -u mdm-appliance mdm-appliance db stats)") from None
    if as_json:
        click.echo(json.dumps(figures, indent=2))
        return
    click.echo(f"database {path}")
    used = figures["pages"] - figures["free_pages"]
    click.echo(f"file {_bytes(figures['file_bytes'])}, WAL {_bytes(figures['wal_bytes'])}, "
               f"free inside {_bytes(figures['free_bytes'])} ({figures['free_pages']} of {figures['pages']} pages; "
               f"{used} in use)")
    mode = figures["auto_vacuum"]
    hint = "" if mode == "incremental" else " (pruned space is not given back: run `mdm-appliance db vacuum` once " \
                                           "with the appliance stopped)"
    click.echo(f"auto-vacuum: {mode}{hint}")
    click.echo("")
    names = sorted(figures["rows"], key=lambda name: (-figures["rows"][name], name))
    width = max([len("TABLE")] + [len(name) for name in names])
    header = f"{'TABLE':{width}}  {'ROWS':>10}" + (f"  {'SIZE':>10}" if sizes else "")
    click.echo(header)
    for name in names:
        line = f"{name:{width}}  {figures['rows'][name]:>10}"
        if sizes:
            line += f"  {_bytes(figures['table_bytes'][name]):>10}"
        click.echo(line)


@db.command("vacuum")
@config_option
def vacuum_command(config_path) -> None:
    """Rewrite the database compactly and turn on incremental vacuum (the appliance must be stopped).

    Databases created by this version have incremental vacuum from the start, and the server turns it on
    by itself for a small older one; a large older one needs this once, so that retention can give pruned
    space back to the disk. It needs free space of about twice the database and takes about a second per
    100 MB here.

    \b
    systemctl stop mdm-appliance
    mdm-appliance db vacuum       # as the service user: sudo -u mdm-appliance mdm-appliance db vacuum
    systemctl start mdm-appliance
    """
    path = _database(config_path)
    try:
        conn = connect_exclusive(path)
    except DatabaseInUse:
        raise CliError(f"the database {path} is in use (a running appliance, or another command): stop the "
                       "appliance first (systemctl stop mdm-appliance) and run this again") from None
    except sqlite3.Error as exc:
        raise CliError(f"cannot open the database {path}: {exc}") from None
    try:
        if not vacuum.has_room(path):
            raise CliError(f"not enough free space beside {path}: VACUUM needs about "
                           f"{_bytes(int(vacuum.ROOM_FACTOR * vacuum.database_bytes(path)))}")
        before, mode = vacuum.database_bytes(path), vacuum.mode(conn)
        try:
            vacuum.convert(conn)
        except sqlite3.Error as exc:
            raise CliError(f"VACUUM failed, the database is unchanged: {exc}") from None
        after = vacuum.database_bytes(path)
        click.echo(f"{path}: {_bytes(before)} -> {_bytes(after)}; auto-vacuum {mode} -> {vacuum.mode(conn)}")
    finally:
        conn.close()


def _bytes(count: int) -> str:
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{count} B"
