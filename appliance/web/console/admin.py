"""Admin pages: the push certificate (status, import, CSR), enrollment (profile link, QR code, one-time
challenges) and console users. Anyone signed in may look; only admins change anything."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlencode

import segno
from quart import Response, g, redirect, request

from appliance.files import ensure_private_dir, write_atomic
from appliance.logs import get_logger
from appliance.protocol.profile import ProfileError
from appliance.push import pushcert
from appliance.service import accounts, enrollment
from appliance.store import accounts as account_store
from appliance.store import audit
from appliance.store import push as push_store
from appliance.store.timefmt import to_text
from appliance.web.app import runtime
from appliance.web.console.base import PREFIX, Refused, blueprint, render, requires, who

log = get_logger("console")

CSR_KEY_FILE = "push-csr.key"  # the same file `mdm-appliance push-cert csr` keeps its key in


# --- push certificate ------------------------------------------------------------------------------

async def _push_page(status: int = 200, **extra) -> Response:
    rt = runtime()
    stored = await rt.store.read(push_store.current_certificate)
    info = rt.push.status() if rt.push is not None else None
    pending_csr = (rt.config.data_dir / CSR_KEY_FILE).exists()
    return await render("push.html", status=status, push=info, stored=stored, pending_csr=pending_csr,
                        notice=request.args.get("notice"), **extra)


@blueprint.get(PREFIX + "/push")
@requires("viewer")
async def push_page():
    return await _push_page()


@blueprint.post(PREFIX + "/push/import")
@requires("admin")
async def push_import():
    rt = runtime()
    form, files = await request.form, await request.files
    cert_file, key_file = files.get("certificate"), files.get("key")
    cert_data = cert_file.read() if cert_file else b""
    key_data = (key_file.read() or None) if key_file else None
    if not cert_data:
        return await _push_page(400, error="Choose the certificate file (.pem or .p12).")
    csr_key = rt.config.data_dir / CSR_KEY_FILE
    used_csr_key = False
    if key_data is None and b"-----BEGIN" in cert_data and b"PRIVATE KEY-----" not in cert_data:
        if not csr_key.exists():
            return await _push_page(400, error="This PEM has no private key: choose the key file too "
                                               "(the key the certificate was requested with).")
        key_data, used_csr_key = csr_key.read_bytes(), True
    try:
        cert = pushcert.validate(pushcert.load_any(cert_data, key_data, form.get("password") or None))
    except pushcert.PushCertError as exc:
        return await _push_page(400, error=f"Not imported: {exc}.")
    stamp, force = who(), form.get("force") == "1"

    def store(conn):
        push_store.store_certificate(conn, topic=cert.topic, certificate_pem=cert.cert_pem, key_pem=cert.key_pem,
                                     sha256=cert.fingerprint, not_before=cert.not_before,
                                     not_after=cert.not_after, force=force)
        audit.record(conn, **stamp, action="pushcert.import", target=cert.topic,
                     details={"not_after": to_text(cert.not_after), "sha256": cert.fingerprint, "forced": force})

    try:
        await rt.store.write(store)
    except push_store.TopicChanged as exc:
        return await _push_page(409, error=pushcert.topic_change_message(exc.old, exc.new))
    if used_csr_key:
        csr_key.unlink(missing_ok=True)  # the key now lives in the database
    if rt.push is not None:
        await rt.push.reload_certificate()
    notice = f"Imported the push certificate for {cert.topic}; it expires in {cert.days_left()} days."
    return redirect(f"{PREFIX}/push?" + urlencode({"notice": notice}), 303)


@blueprint.post(PREFIX + "/push/csr")
@requires("admin")
async def push_csr():
    rt = runtime()
    form = await request.form
    key_path: Path = rt.config.data_dir / CSR_KEY_FILE
    if key_path.exists() and form.get("replace") != "1":
        return await _push_page(409, error="A request is already in progress (its key is kept in data_dir): "
                                           "import its certificate first, or tick “replace” to start over.")
    try:
        key_pem, csr_pem = pushcert.make_csr(form.get("cn") or "MDM Push Certificate", email=form.get("email") or None,
                                             organization=form.get("org") or None, country=form.get("country") or None)
    except pushcert.PushCertError as exc:
        return await _push_page(400, error=f"No CSR made: {exc}.")
    ensure_private_dir(rt.config.data_dir)
    write_atomic(key_path, key_pem, 0o600)
    stamp = who()
    await rt.store.write(lambda conn: audit.record(conn, **stamp, action="pushcert.csr", target=form.get("cn")))
    response = Response(csr_pem, status=200, content_type="application/pkcs10")
    response.headers["Content-Disposition"] = 'attachment; filename="push.csr"'
    return response


# --- enrollment ------------------------------------------------------------------------------------

def enrollment_url() -> str | None:
    config = runtime().config
    secret = config.enrollment.secret
    if not secret:
        return None
    return f"{config.server.public_url}/mdm/enroll?" + urlencode({"token": secret})


def qr_svg(text: str) -> str:
    """The QR code as inline SVG markup (made here, no script, no outside request)."""
    return segno.make(text, error="m").svg_inline(scale=5, border=2, dark="#000", light="#fff")


@blueprint.get(PREFIX + "/enrollment")
@requires("viewer")
async def enrollment_page():
    rt = runtime()
    url = enrollment_url() if g.user["role"] == "admin" else None
    topic = await rt.store.read(enrollment.push_topic)
    config = rt.config.enrollment
    return await render("enrollment.html", url=url, qr=qr_svg(url) if url else None, topic=topic,
                        secret_set=bool(config.secret), one_time=config.one_time_challenge,
                        static_challenge=bool(config.scep_challenge), public_url=rt.config.server.public_url,
                        challenge=None)


@blueprint.get(PREFIX + "/enrollment/profile")
@requires("admin")
async def enrollment_profile():
    rt = runtime()
    try:
        data = await enrollment.build_profile(rt)
    except ProfileError as exc:
        raise Refused(409, f"No profile can be made yet: {exc}") from None
    stamp = who()
    await rt.store.write(lambda conn: audit.record(conn, **stamp, action="enrollment.profile"))
    response = Response(data, status=200, content_type=enrollment.PROFILE_CONTENT_TYPE)
    response.headers["Content-Disposition"] = 'attachment; filename="enroll.mobileconfig"'
    return response


@blueprint.post(PREFIX + "/enrollment/challenge")
@requires("admin")
async def enrollment_challenge():
    rt = runtime()
    challenge, expires = await enrollment.mint_challenge(rt)
    stamp = who()
    await rt.store.write(lambda conn: audit.record(conn, **stamp, action="challenge.mint",
                                                   details={"expires_at": to_text(expires)}))
    url = enrollment_url()
    config = rt.config.enrollment
    return await render("enrollment.html", url=url, qr=qr_svg(url) if url else None,
                        topic=await rt.store.read(enrollment.push_topic), secret_set=bool(config.secret),
                        one_time=config.one_time_challenge, static_challenge=bool(config.scep_challenge),
                        public_url=rt.config.server.public_url,
                        challenge={"value": challenge, "expires_at": to_text(expires)})


# --- users -----------------------------------------------------------------------------------------

@blueprint.get(PREFIX + "/users")
@requires("admin")
async def users_page():
    return await _users_page()


async def _users_page(status: int = 200, error: str | None = None) -> Response:
    found = await runtime().store.read(account_store.listing)
    return await render("users.html", status=status, users=found, roles=accounts.ROLES, error=error,
                        notice=request.args.get("notice"))


@blueprint.post(PREFIX + "/users")
@requires("admin")
async def users_change():
    form = await request.form
    action, name = form.get("action"), (form.get("name") or "").strip()
    stamp = who()
    try:
        if action == "add":
            role = accounts.check_role(form.get("role", ""))
            password_hash = accounts.hash_password(form.get("password", ""))
            accounts.check_name(name)

            def change(conn):
                account_store.add(conn, name, role, password_hash)
                audit.record(conn, **stamp, action="user.add", target=name, details={"role": role})
            notice = f"Added {name} ({role})."
        elif action == "remove":
            if name == g.user["name"]:
                raise accounts.AccountError("You cannot remove yourself; ask another admin (or use the CLI).")

            def change(conn):
                if not account_store.remove(conn, name):
                    raise accounts.AccountError(f"No user {name}.")
                audit.record(conn, **stamp, action="user.remove", target=name)
            notice = f"Removed {name}."
        elif action == "passwd":
            password_hash = accounts.hash_password(form.get("password", ""))

            def change(conn):
                if not account_store.set_password(conn, name, password_hash):
                    raise accounts.AccountError(f"No user {name}.")
                audit.record(conn, **stamp, action="user.passwd", target=name)
            notice = f"Set a new password for {name}; their sessions have ended."
        else:
            raise accounts.AccountError("Unknown action.")
        await runtime().store.write(change)
    except (accounts.AccountError, account_store.UserExists) as exc:
        return await _users_page(400, str(exc))
    return redirect(f"{PREFIX}/users?" + urlencode({"notice": notice}), 303)
