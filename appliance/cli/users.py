"""`user add|list|remove|passwd`: web console accounts, worked on the database in data_dir directly, next
to a running server or without one (the admin API has no user routes: its key never makes console
accounts). The server reads accounts per request, so a change applies at once.

Every change is written to the audit log as "cli (OS user)", in the same transaction as the change.
"""

from __future__ import annotations

import getpass
import json
import sys

import click

from appliance.cli import main
from appliance.cli.common import CliError, config_option, database, load_config_or_exit, transaction
from appliance.service import accounts
from appliance.store import accounts as account_store
from appliance.store import audit


def _actor() -> str:
    try:
        return f"cli ({getpass.getuser()})"
    except (KeyError, OSError):
        return "cli"


def _new_password(from_stdin: bool) -> str:
    if from_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = click.prompt("password", hide_input=True, confirmation_prompt="password again", err=True)
    try:
        return accounts.hash_password(password)
    except accounts.AccountError as exc:
        raise CliError(str(exc)) from None


password_stdin = click.option("--password-stdin", is_flag=True,
                              help="Read the password from the first line of stdin (for scripts).")


@main.group("user")
def user() -> None:
    """Web console accounts: add, list, remove, passwd.

    \b
    Roles: viewer (reads), operator (also sends and cancels commands),
           admin (also push certificate, enrollment, users).
    """


@user.command("add")
@config_option
@click.argument("name")
@click.option("--role", required=True, type=click.Choice(accounts.ROLES), help="What the account may do.")
@password_stdin
def add(config_path, name, role, password_stdin) -> None:
    """Add a console account; asks for its password twice.

    \b
    Example:  mdm-appliance user add alice --role admin
              printf '%s\\n' "$PASSWORD" | mdm-appliance user add ci-bot --role viewer --password-stdin
    """
    config = load_config_or_exit(config_path)
    try:
        accounts.check_name(name)
    except accounts.AccountError as exc:
        raise CliError(str(exc)) from None
    password_hash = _new_password(password_stdin)
    try:
        with database(config) as conn, transaction(conn):
            account_store.add(conn, name, role, password_hash)
            audit.record(conn, actor=_actor(), action="user.add", target=name, details={"role": role})
    except account_store.UserExists as exc:
        raise CliError(f"{exc}: use `mdm-appliance user passwd {name}` to set a new password") from None
    click.echo(f"added {name} ({role})", err=True)


@user.command("list")
@config_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def list_users(config_path, as_json) -> None:
    """List console accounts with their role and last sign-in.

    \b
    Example:  mdm-appliance user list
    """
    config = load_config_or_exit(config_path)
    with database(config) as conn:
        found = account_store.listing(conn)
    if as_json:
        click.echo(json.dumps(found, indent=2))
        return
    for entry in found:
        click.echo(f"{entry['name']:<24} {entry['role']:<9} last sign-in {entry['last_login_at'] or 'never'}")
    click.echo(f"{len(found)} user(s)", err=True)


@user.command("remove")
@config_option
@click.argument("name")
def remove(config_path, name) -> None:
    """Remove a console account; its open sessions end at their next request.

    \b
    Example:  mdm-appliance user remove alice
    """
    config = load_config_or_exit(config_path)
    with database(config) as conn, transaction(conn):
        if not account_store.remove(conn, name):
            raise CliError(f"no user {name!r} (see `mdm-appliance user list`)")
        audit.record(conn, actor=_actor(), action="user.remove", target=name)
    click.echo(f"removed {name}", err=True)


@user.command("passwd")
@config_option
@click.argument("name")
@password_stdin
def passwd(config_path, name, password_stdin) -> None:
    """Set a new password; the account's open sessions end at their next request.

    \b
    Example:  mdm-appliance user passwd alice
    """
    config = load_config_or_exit(config_path)
    password_hash = _new_password(password_stdin)
    with database(config) as conn, transaction(conn):
        if not account_store.set_password(conn, name, password_hash):
            raise CliError(f"no user {name!r} (see `mdm-appliance user list`)")
        audit.record(conn, actor=_actor(), action="user.passwd", target=name)
    click.echo(f"password of {name} changed", err=True)
