"""`setup`: the first-run helper that writes the config an operator would otherwise edit by hand."""

from __future__ import annotations

import grp
import os
import pwd
import secrets
import sys
import tomllib
from pathlib import Path
from urllib.parse import urlsplit

import click

from appliance.cli import main
from appliance.cli.common import CliError
from appliance.config import CONFIG_ENV, DEFAULT_CONFIG_PATH, ConfigError, default_config_path, load_config, parse_listen
from appliance.firstrun import is_example_url, reference_config, set_values, setup_needed, toml_string

SERVICE_USER = "mdm-appliance"
MIN_SECRET = 16


@main.command()
@click.option("--config", "-c", "config_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help=f"The TOML file to write [default: ${CONFIG_ENV} or {DEFAULT_CONFIG_PATH}].")
@click.option("--public-url", help="The https URL devices reach the appliance at, forever (https://host[:port]).")
@click.option("--listen", help="Address and port to listen on [default: 0.0.0.0 and public-url's port].")
@click.option("--enrollment-secret", help=f"Guards the profile download at /mdm/enroll (at least {MIN_SECRET} "
              "characters) [default: a random one].")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Where state lives [default: the file's data_dir, /var/lib/mdm-appliance].")
@click.option("--non-interactive", is_flag=True, help="Ask nothing: take the values from the flags.")
@click.option("--force", is_flag=True, help="Overwrite a config that already names a real public_url.")
@click.option("--check", is_flag=True,
              help="Only check: exit 0 once the config names a real public_url, else say what to do and exit 1 "
                   "(the systemd unit's ExecCondition).")
def setup(config_path, public_url, listen, enrollment_secret, data_dir, non_interactive, force, check) -> None:
    """Write the appliance's config: public URL, listen address, enrollment secret.

    Starts from the existing file (the package's commented default) or the reference config, so every
    comment stays; checks the result as check-config does, then prints the next steps.

    \b
    Example:  mdm-appliance setup      (as root: it writes /etc/mdm-appliance/appliance.toml)
              mdm-appliance setup --non-interactive --public-url https://mdm.yourcompany.com
    """
    path = config_path or default_config_path()
    if check:
        _check(path)
        return
    existing = path.read_text(encoding="utf-8") if path.is_file() else None
    if existing is not None and setup_needed(path) is None and not force:
        raise CliError(f"{path} is already set up (it names a real public_url); --force overwrites it")

    ask = not non_interactive
    template = existing if existing is not None else reference_config()
    current = _read_toml(template)
    if ask:
        click.echo(f"Setting up {path}. Enter keeps the value in brackets.\n")
    public_url = _public_url(public_url, ask, current.get("server", {}).get("public_url"))
    listen = _listen(listen, public_url, ask)
    enrollment_secret = _secret(enrollment_secret, ask, current.get("enrollment", {}).get("secret"))

    values = {("server", "public_url"): toml_string(public_url), ("server", "listen"): toml_string(listen),
              ("enrollment", "secret"): toml_string(enrollment_secret)}
    if data_dir is not None:
        values[("storage", "data_dir")] = toml_string(str(data_dir.absolute()))
    enrollment = current.get("enrollment", {})
    if not (enrollment.get("scep_challenge") or enrollment.get("one_time_challenge")):
        # Devices cannot enroll without a SCEP challenge: a fresh one-time challenge per profile download.
        values[("enrollment", "one_time_challenge")] = "true"
    _write_checked(path, set_values(template, values))
    click.echo(f"wrote {path}")
    click.echo(f"# {path}: OK (check-config)")
    _next_steps(path, public_url, enrollment_secret)


def _check(path: Path) -> None:
    reason = setup_needed(path)
    if reason is not None:
        config = "" if path == DEFAULT_CONFIG_PATH else f" --config {path}"
        click.echo(f"{reason}: run `sudo mdm-appliance setup{config}`, then "
                   "`sudo systemctl restart mdm-appliance`", err=True)
        sys.exit(1)


def _public_url_problem(value: str) -> str | None:
    parts = urlsplit(value)
    if parts.scheme != "https" or not parts.hostname:
        return "expected an https URL like https://mdm.yourcompany.com (devices only talk TLS)"
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        return "expected scheme, host and port only, like https://mdm.yourcompany.com:8443"
    if is_example_url(value):
        return f"{parts.hostname} is an example name: use the DNS name devices will reach"
    return None


def _public_url(value: str | None, ask: bool, current: object) -> str:
    if value is None and not ask:
        raise CliError("--public-url is required with --non-interactive")
    default = current if isinstance(current, str) and _public_url_problem(current) is None else None
    while True:
        if value is None:
            value = click.prompt("Public URL devices reach the appliance at; it can never change once "
                                 "devices are enrolled (https://host[:port])", default=default).strip()
        problem = _public_url_problem(value)
        if problem is None:
            return value.rstrip("/")
        if not ask:
            raise CliError(f"--public-url: {problem}")
        click.echo(f"  {problem}", err=True)
        value = None


def _listen(value: str | None, public_url: str, ask: bool) -> str:
    default = f"0.0.0.0:{urlsplit(public_url).port or 443}"
    while True:
        if value is None:
            value = click.prompt("Listen address", default=default) if ask else default
        try:
            parse_listen(value)
            return value.strip()
        except ValueError as exc:
            if not ask:
                raise CliError(f"--listen: {exc}") from None
            click.echo(f"  {exc}", err=True)
            value = None


def _secret(value: str | None, ask: bool, current: object) -> str:
    if isinstance(current, str) and len(current) >= MIN_SECRET:
        default, shown = current, " [Enter: keep the current one]: "
    else:
        default, shown = secrets.token_urlsafe(24), " [Enter: a random one]: "
    while True:
        if value is None:
            value = click.prompt("Enrollment secret (guards the profile download)", default=default,
                                 show_default=False, prompt_suffix=shown) if ask else default
        value = value.strip()
        if len(value) >= MIN_SECRET:
            return value
        problem = f"the enrollment secret needs at least {MIN_SECRET} characters"
        if not ask:
            raise CliError(f"--enrollment-secret: {problem}")
        click.echo(f"  {problem}", err=True)
        value = None


def _read_toml(text: str) -> dict:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        return {}
    return {name: section for name, section in data.items() if isinstance(section, dict)}


def _write_checked(path: Path, text: str) -> None:
    """Write beside `path`, validate as check-config does, then rename over it: a refused file changes nothing.

    Mode 0640: readable by the service's group (an existing file keeps its owner, group and mode)."""
    try:
        current = path.stat()
        mode, owner = current.st_mode & 0o7777, (current.st_uid, current.st_gid)
    except FileNotFoundError:
        mode, owner = 0o640, _default_owner()
        _make_config_dir(path.parent)
    tmp = path.with_name(f".{path.name}.setup")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        try:
            load_config(tmp)
        except ConfigError as exc:
            raise CliError("the config would not be valid, nothing written:\n  " + "\n  ".join(exc.problems)) from None
        if owner is not None and os.geteuid() == 0:
            os.chown(tmp, *owner)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except OSError as exc:
        raise CliError(f"cannot write {path}: {exc.strerror or exc}") from None
    finally:
        tmp.unlink(missing_ok=True)


def _service_gid() -> int | None:
    try:
        return grp.getgrnam(SERVICE_USER).gr_gid
    except KeyError:
        return None


def _default_owner() -> tuple[int, int] | None:
    gid = _service_gid()
    return (0, gid) if gid is not None and os.geteuid() == 0 else None


def _make_config_dir(folder: Path) -> None:
    if folder.is_dir():
        return
    try:
        folder.mkdir(mode=0o750, parents=True)
        owner = _default_owner()
        if owner is not None:
            os.chown(folder, *owner)
    except OSError as exc:
        raise CliError(f"cannot create {folder}: {exc.strerror or exc}") from None


def _next_steps(path: Path, public_url: str, secret: str) -> None:
    default = path == DEFAULT_CONFIG_PATH
    config = "" if default else f" --config {path}"
    try:
        pwd.getpwnam(SERVICE_USER)
        as_service = f"sudo -u {SERVICE_USER} "
    except KeyError:
        as_service = ""
    start = ("sudo systemctl restart mdm-appliance" if default
             else f"mdm-appliance serve{config}   (or point the systemd unit at this file)")
    click.echo(f"""
Next steps:
  1. Start the appliance:
       {start}
  2. Import your APNs push certificate (devices are only reached through it):
       {as_service}mdm-appliance push-cert import{config} MDM_Company_Certificate.pem push.key
     No certificate yet? `mdm-appliance push-cert csr --help` explains how to get one from Apple.
  3. Enroll a device: on the device, open
       {public_url}/mdm/enroll?token={secret}
     or write the profile to hand out:
       {as_service}mdm-appliance enroll-profile{config} --out enroll.mobileconfig""")
