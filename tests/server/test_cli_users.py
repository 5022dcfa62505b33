"""`mdm-appliance user ...` as operators run it (a subprocess on the config and data_dir), then the account
used to sign in to the running console: the CLI and the server share the database."""

from __future__ import annotations

import json

import trio

from tests.server.test_cli_admin import cli
from tests.support.console_users import Console
from tests.support.harness import make_config, start_server


async def test_user_add_list_passwd_remove_and_sign_in(nursery, tmp_path):
    config = make_config(tmp_path)
    server = await start_server(nursery, config)
    code, _, err = await cli(config, "user", "add", "alice", "--role", "operator", "--password-stdin",
                             stdin=b"first password 1\n")
    assert code == 0 and "added alice (operator)" in err
    code, out, _ = await cli(config, "user", "list", "--json")
    assert [(u["name"], u["role"]) for u in json.loads(out)] == [("alice", "operator")]
    assert "password" not in out  # the hash never leaves the database
    async with Console(server) as console:
        assert (await console.login("alice", "first password 1")).status_code == 303
        code, _, err = await cli(config, "user", "passwd", "alice", "--password-stdin", stdin=b"second password 2\n")
        assert code == 0, err
        assert (await console.get("/console/")).status_code == 303  # the old session ended
        assert (await console.login("alice", "first password 1")).status_code == 401
        assert (await console.login("alice", "second password 2")).status_code == 303
    code, _, err = await cli(config, "user", "remove", "alice")
    assert code == 0
    rows = await server.runtime.store.read(lambda conn: [tuple(r) for r in conn.execute(
        "SELECT actor, action, target FROM audit_log WHERE actor LIKE 'cli%' ORDER BY id")])
    assert [(action, target) for _, action, target in rows] == [
        ("user.add", "alice"), ("user.passwd", "alice"), ("user.remove", "alice")]


async def test_user_commands_refuse_bad_input_with_one_line(tmp_path):
    config = make_config(tmp_path)
    code, _, err = await cli(config, "user", "list")
    assert code != 0 and "no database" in err  # never created here: the server makes it at its first start
    async with trio.open_nursery() as nursery:
        (await start_server(nursery, config)).stop()  # the first start creates the database
    for args, stdin, message in (
        (("user", "add", "bob", "--role", "viewer", "--password-stdin"), b"short\n", "at least 10 characters"),
        (("user", "add", "bad name", "--role", "viewer", "--password-stdin"), b"long enough pw\n", "user name"),
        (("user", "remove", "nobody"), b"", "no user 'nobody'"),
        (("user", "passwd", "nobody", "--password-stdin"), b"long enough pw\n", "no user 'nobody'"),
    ):
        code, _, err = await cli(config, *args, stdin=stdin)
        assert code != 0 and message in err and len(err.strip().splitlines()) == 1, (args, err)
    code, _, err = await cli(config, "user", "add", "bob", "--role", "root", "--password-stdin", stdin=b"x" * 12)
    assert code != 0
