"""`push-cert import|show|csr`: the MDM push certificate.

With a server running, import and show go through its admin API (PUT/GET /v1/pushcert): the server
stores the certificate and reconnects to APNs with it at once. Without one they work on the database
in data_dir (the server polls the certificate version too, should one start meanwhile).
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from appliance.cli import main
from appliance.cli.common import CliError, config_option, database, load_config_or_exit, serving_api, transaction

CSR_KEY_FILE = "push-csr.key"


def _read(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise CliError(f"cannot read {what} {path}: {exc.strerror or exc}") from None


@main.group("push-cert")
def push_cert() -> None:
    """The MDM push certificate (APNs): import, show, or make a CSR for a new one.

    \b
    Renewal:  mdm-appliance push-cert csr --cn "Example Org" --out push.csr
              (have it signed by your MDM vendor signing service, upload it at
               https://identity.apple.com with the SAME Apple ID as before, download the .pem)
              mdm-appliance push-cert import MDM_Certificate.pem
    """


@push_cert.command("import")
@config_option
@click.argument("cert", type=click.Path(dir_okay=False))
@click.argument("key", required=False, type=click.Path(dir_okay=False))
@click.option("--password", envvar="MDM_PUSH_CERT_PASSWORD", default=None,
              help="Password of a .p12, or of an encrypted PEM key [env: MDM_PUSH_CERT_PASSWORD].")
@click.option("--force", is_flag=True,
              help="Replace a certificate even though its topic differs (orphans enrolled devices).")
def import_cert(config_path, cert, key, password, force) -> None:
    """Validate and store a push certificate (PEM + key, one PEM with both, or a .p12).

    Without KEY, a PEM certificate is paired with the key `push-cert csr` kept in data_dir.

    \b
    Examples:  mdm-appliance push-cert import MDM_Certificate.pem push.key
               mdm-appliance push-cert import push.p12 --password secret
    """
    from appliance.push import pushcert
    from appliance.store import push as push_store

    config = load_config_or_exit(config_path)
    cert_data = _read(cert, "certificate")
    key_data = _read(key, "private key") if key else None
    csr_key = Path(config.data_dir) / CSR_KEY_FILE
    used_csr_key = False
    if key_data is None and b"-----BEGIN" in cert_data and b"PRIVATE KEY-----" not in cert_data:
        if not csr_key.exists():
            raise CliError("no private key given, and no key from `push-cert csr` in data_dir: "
                           "pass KEY (the key the certificate was requested with)")
        key_data = _read(str(csr_key), "private key")
        used_csr_key = True
    try:
        pc = pushcert.validate(pushcert.load_any(cert_data, key_data, password))
    except pushcert.PushCertError as exc:
        raise CliError(f"{cert}: {exc}") from None
    api = serving_api(config)
    if api is not None:
        api.call("PUT", "/v1/pushcert" + ("?force=1" if force else ""), body=pc.cert_pem + pc.key_pem,
                 content_type="text/plain")
        where = f"the server at {api.url} uses it now"
    else:
        try:
            with database(config) as conn, transaction(conn):
                push_store.store_certificate(
                    conn, topic=pc.topic, certificate_pem=pc.cert_pem, key_pem=pc.key_pem,
                    sha256=pc.fingerprint, not_before=pc.not_before, not_after=pc.not_after, force=force)
        except push_store.TopicChanged as exc:
            raise CliError(pushcert.topic_change_message(exc.old, exc.new)) from None
        where = "no server is running: stored in data_dir, used when the server starts"
    if used_csr_key:
        csr_key.unlink(missing_ok=True)  # the key now lives in the database; one copy is enough
    click.echo(f"imported push certificate for topic {pc.topic}, expires "
               f"{pc.not_after:%Y-%m-%d} ({pc.days_left()} days left)")
    click.echo(where, err=True)


@push_cert.command("show")
@config_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def show(config_path, as_json) -> None:
    """Print the current push certificate's topic, expiry and days left.

    \b
    Example:  mdm-appliance push-cert show
    """
    config = load_config_or_exit(config_path)
    api = serving_api(config)
    info = _shown_by(api) if api is not None else _stored(config)
    if info is None:
        raise CliError("no push certificate imported yet: run `mdm-appliance push-cert import CERT KEY`")
    if as_json:
        click.echo(json.dumps(info))
        if info["state"] == "expired":
            raise SystemExit(1)  # an error everywhere, scripts and monitoring included
        return
    click.echo(f"topic:      {info['topic']}")
    click.echo(f"not after:  {info['not_after']}")
    click.echo(f"days left:  {info['days_left']}")
    click.echo(f"imported:   {info['imported_at']}")
    click.echo(f"sha256:     {info['sha256']}")
    if info["state"] == "expired":
        click.echo("EXPIRED: no device can be pushed; renew with the same Apple ID", err=True)
        raise SystemExit(1)  # an error everywhere, scripts and monitoring included
    elif info["state"] == "warning":
        click.echo("expires within 30 days: renew it with the same Apple ID", err=True)


def _shown_by(api) -> dict | None:
    status, answer = api.call("GET", "/v1/pushcert", ok=(200, 404))
    if status == 404:
        return None
    from appliance.push.pushcert import WARN_DAYS

    # A server older than this CLI (upgraded, not yet restarted) answers fewer keys.
    days = answer.get("days_left", 0)
    state = "expired" if days < 0 else "warning" if days < WARN_DAYS else "ok"
    return {"state": state, "sha256": "-", "imported_at": "-", **answer}


def _stored(config) -> dict | None:
    from appliance.push import pushcert
    from appliance.store import push as push_store

    with database(config) as conn:
        stored = push_store.current_certificate(conn)
    if stored is None:
        return None
    try:
        pc = pushcert.load_pem(stored.certificate, stored.private_key)
    except pushcert.PushCertError as exc:
        raise CliError(f"the stored push certificate is unusable: {exc}") from None
    return pushcert.describe(pc, stored.imported_at)


@push_cert.command("csr")
@config_option
@click.option("--out", "-o", "out", required=True, type=click.Path(dir_okay=False),
              help="Where to write the CSR (PEM).")
@click.option("--cn", "common_name", default="MDM Push Certificate", show_default=True,
              help="Common name of the request.")
@click.option("--email", default=None, help="Contact email (some signing services require it).")
@click.option("--org", "organization", default=None, help="Organization name.")
@click.option("--country", default=None, help="Two-letter country code.")
@click.option("--force", is_flag=True, help="Replace a key from an earlier, unfinished request.")
def csr(config_path, out, common_name, email, organization, country, force) -> None:
    """Make a private key (kept in data_dir, 0600) and a CSR for a new push certificate.

    Send the CSR to an MDM vendor signing service; upload what it returns at Apple's push
    certificates portal (https://identity.apple.com) with the Apple ID of the current certificate,
    then `push-cert import` the .pem Apple gives you (the key is found in data_dir).

    \b
    Example:  mdm-appliance push-cert csr --cn "Example Org" --email it@example.org --out push.csr
    """
    from appliance.files import ensure_private_dir, write_atomic
    from appliance.push import pushcert

    config = load_config_or_exit(config_path)
    data_dir = Path(config.data_dir)
    key_path = data_dir / CSR_KEY_FILE
    if key_path.exists() and not force:
        raise CliError(f"{key_path} exists (a request in progress?): import its certificate first, "
                       "or pass --force to start a new request")
    try:
        key_pem, csr_pem = pushcert.make_csr(common_name, email=email, organization=organization,
                                             country=country)
    except pushcert.PushCertError as exc:
        raise CliError(str(exc)) from None
    try:
        ensure_private_dir(data_dir)
        write_atomic(key_path, key_pem, 0o600)
        write_atomic(Path(out), csr_pem, 0o644)
    except OSError as exc:
        raise CliError(f"cannot write: {exc.strerror or exc} ({exc.filename or out})") from None
    click.echo(f"wrote {out}; private key kept in {key_path}")
    click.echo("next: have the CSR signed by an MDM vendor signing service, upload it at "
                   "https://identity.apple.com with the SAME Apple ID, then "
                   "`mdm-appliance push-cert import <downloaded>.pem`", err=True)
