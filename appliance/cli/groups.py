"""Groups of devices over the admin API: `groups` lists them, `group ...` shows and changes one. A group's
name works wherever the CLI takes enrollment ids: `mdm-appliance enqueue group:NAME --type ...`."""

from __future__ import annotations

import click

from appliance.cli import main
from appliance.cli.admin import DEVICE_COLUMNS, _client, _ids, _path, _print_json, _table, json_option
from appliance.cli.common import CliError, config_option

GROUP_COLUMNS = [("name", "NAME"), ("kind", "KIND"), ("member_count", "MEMBERS"), ("filter", "FILTER"),
                 ("description", "DESCRIPTION")]


@main.command("groups")
@config_option
@json_option
def list_groups(config_path, as_json) -> None:
    """List the groups with their member counts.

    \b
    mdm-appliance groups
    """
    _, answer = _client(config_path).call("GET", _path("groups"))
    if as_json:
        _print_json(answer["groups"])
    else:
        _table(answer["groups"], GROUP_COLUMNS)


@main.group("group")
def group() -> None:
    """Show, create and change a group of devices (static: members by hand; dynamic: a filter).

    \b
    mdm-appliance group create lab-macs
    mdm-appliance group add lab-macs UDID1 UDID2
    mdm-appliance group create old-ipads --filter 'os_version < "17.5" and model_name contains "iPad"'
    mdm-appliance enqueue group:old-ipads --type ScheduleOSUpdateScan
    """


@group.command("show")
@config_option
@json_option
@click.argument("name")
def show(config_path, as_json, name) -> None:
    """A group and its members.

    \b
    mdm-appliance group show lab-macs
    """
    client = _client(config_path)
    _, found = client.call("GET", _path("groups", name))
    members, cursor = [], None
    while True:
        _, page = client.call("GET", _path("devices", group=name, limit=1000, cursor=cursor))
        members += page["devices"]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    if as_json:
        _print_json({**found, "members": [device["id"] for device in members]})
        return
    for key, heading in GROUP_COLUMNS + [("created_at", "CREATED"), ("updated_at", "UPDATED")]:
        click.echo(f"{heading.lower() + ':':13} {found.get(key) if found.get(key) is not None else '-'}")
    click.echo("")
    _table(members, DEVICE_COLUMNS)


@group.command("create")
@config_option
@json_option
@click.argument("name")
@click.option("--filter", "-f", "filter_text", metavar="EXPR", help="Make it dynamic: every device matching EXPR.")
@click.option("--description", "-d", help="What the group is for.")
def create(config_path, as_json, name, filter_text, description) -> None:
    """Create a static group (add members with `group add`) or, with --filter, a dynamic one.

    \b
    mdm-appliance group create lab-macs --description "Room 101"
    mdm-appliance group create low-storage --filter 'available < 5'
    """
    payload = {"name": name, "filter": filter_text, "description": description}
    _, created = _client(config_path).call("POST", _path("groups"),
                                           payload={k: v for k, v in payload.items() if v is not None})
    _done(created, as_json, f"{created['kind']} group {created['name']} created with {created['member_count']} "
                            f"member(s)")


@group.command("set")
@config_option
@json_option
@click.argument("name")
@click.option("--filter", "-f", "filter_text", metavar="EXPR", help="A new filter (dynamic groups).")
@click.option("--description", "-d", help="A new description (\"\" removes it).")
def update(config_path, as_json, name, filter_text, description) -> None:
    """Change a group's filter or description.

    \b
    mdm-appliance group set old-ipads --filter 'os_version < "18.0" and model_name contains "iPad"'
    """
    if filter_text is None and description is None:
        raise CliError("give --filter and/or --description")
    payload = {"filter": filter_text, "description": description}
    _, updated = _client(config_path).call("PATCH", _path("groups", name),
                                           payload={k: v for k, v in payload.items() if v is not None})
    _done(updated, as_json, f"group {updated['name']} now has {updated['member_count']} member(s)")


@group.command("add")
@config_option
@json_option
@click.argument("name")
@click.argument("ids", nargs=-1, required=True)
def add(config_path, as_json, name, ids) -> None:
    """Add devices to a static group (ID "-" reads ids from stdin).

    \b
    mdm-appliance group add lab-macs 0000FE00-1234ABCD5678EF90
    mdm-appliance devices --filter 'name startswith "Lab"' --json | jq -r '.[].id' | mdm-appliance group add lab-macs -
    """
    _, answer = _client(config_path).call("PUT", _path("groups", name, "members", ",".join(_ids(ids))))
    _done(answer, as_json, f"{answer['added']} device(s) added; {answer['name']} has {answer['member_count']}")


@group.command("remove")
@config_option
@json_option
@click.argument("name")
@click.argument("ids", nargs=-1, required=True)
def remove(config_path, as_json, name, ids) -> None:
    """Take devices out of a static group (ID "-" reads ids from stdin).

    \b
    mdm-appliance group remove lab-macs 0000FE00-1234ABCD5678EF90
    """
    _, answer = _client(config_path).call("DELETE", _path("groups", name, "members", ",".join(_ids(ids))))
    _done(answer, as_json, f"{answer['removed']} device(s) removed; {answer['name']} has {answer['member_count']}")


@group.command("delete")
@config_option
@json_option
@click.argument("name")
def delete(config_path, as_json, name) -> None:
    """Delete a group (its devices stay; commands already sent to it keep their record of it).

    \b
    mdm-appliance group delete lab-macs
    """
    _, answer = _client(config_path).call("DELETE", _path("groups", name))
    _done(answer, as_json, f"group {name} deleted ({answer['members_removed']} member(s) removed)")


def _done(answer: dict, as_json: bool, line: str) -> None:
    if as_json:
        _print_json(answer)
    else:
        click.echo(line)
