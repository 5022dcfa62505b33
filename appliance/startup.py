"""Start-up failures in one line each: the port and what holds it, or the path and the OS error.

supervisor.serve runs each start step inside `explained(...)`; a failure the step's explainer
recognizes becomes a StartupError, and `mdm-appliance serve` prints it as one log line (with the
traceback only at debug level). A part that crashes after READY=1 is a bug, not a start-up failure:
it keeps its traceback.
"""

from __future__ import annotations

import errno
import os
import pwd
import sqlite3
import ssl
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from appliance.config import ConfigError, parse_listen

Explainer = Callable[[BaseException], "str | None"]


class StartupError(Exception):
    """What could not start, said in one line."""


def leaves(exc: BaseException) -> Iterator[BaseException]:
    """The exceptions inside (nested) exception groups, as trio nurseries wrap them."""
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            yield from leaves(inner)
    else:
        yield exc


def already_explained(exc: BaseException) -> list[BaseException]:
    return [leaf for leaf in leaves(exc) if isinstance(leaf, (StartupError, ConfigError))]


@contextmanager
def explained(explain: Explainer) -> Iterator[None]:
    """Turn the first failure `explain` can put in words into a StartupError (the cause kept)."""
    try:
        yield
    except BaseException as exc:
        if not already_explained(exc):
            for leaf in leaves(exc):
                message = explain(leaf) if isinstance(leaf, Exception) else None
                if message:
                    raise StartupError(message) from exc
        raise


def os_error(exc: OSError, known_path: Path | str | None = None) -> str:
    """'PATH: strerror', naming the file the OS complained about when it is not the one we named."""
    reason = exc.strerror or str(exc)
    if exc.filename is not None and str(exc.filename) != str(known_path):
        return f"{exc.filename}: {reason}"
    return reason


def data_dir_failure(data_dir: Path) -> Explainer:
    def explain(exc: BaseException) -> str | None:
        if isinstance(exc, OSError):
            return f"data_dir {data_dir}: {os_error(exc, data_dir)}"
        if isinstance(exc, ValueError):  # a key or certificate file in it that does not parse
            return f"data_dir {data_dir}: {exc}"
        return None
    return explain


def database_failure(path: Path) -> Explainer:
    def explain(exc: BaseException) -> str | None:
        if isinstance(exc, OSError):
            return f"database {path}: {os_error(exc, path)}"
        if isinstance(exc, sqlite3.Error):
            return f"database {path}: {exc}"
        if isinstance(exc, RuntimeError):  # store.schema refuses a database from a newer version
            return f"database {path}: {exc}"
        return None
    return explain


def listener_failure(listen: str, role: str) -> Explainer:
    def explain(exc: BaseException) -> str | None:
        where = f"cannot listen on {listen} ({role})"
        if isinstance(exc, ssl.SSLError):
            return f"{where}: TLS certificate or key refused: {exc.reason or exc}"
        if not isinstance(exc, OSError):
            return None
        if exc.errno == errno.EADDRINUSE:
            return f"{where}: address already in use, {port_holder(listen)}"
        if exc.errno == errno.EACCES and exc.filename is None:
            return f"{where}: permission denied (ports below 1024 need root or CAP_NET_BIND_SERVICE)"
        if exc.errno == errno.EADDRNOTAVAIL:
            return f"{where}: no network interface of this machine has that address"
        return f"{where}: {os_error(exc)}"
    return explain


def check_tls_files(cert: Path, key: Path) -> None:
    """The operator's own TLS certificate and key: readable, PEM, and a pair, or one line saying which."""
    cert_pem, key_pem = _read_tls_file(cert, "certificate"), _read_tls_file(key, "key")
    try:
        x509.load_pem_x509_certificates(cert_pem)
    except ValueError:
        raise StartupError(f"TLS certificate {cert}: no PEM certificate in it") from None
    try:
        serialization.load_pem_private_key(key_pem, password=None)
    except TypeError:
        raise StartupError(f"TLS key {key}: encrypted with a password (the appliance needs it without)") from None
    except ValueError:
        raise StartupError(f"TLS key {key}: no PEM private key in it") from None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(str(cert), str(key))
    except ssl.SSLError as exc:
        raise StartupError(f"TLS certificate {cert} and key {key}: they do not belong together "
                           f"({exc.reason or exc})") from None


def _read_tls_file(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise StartupError(f"TLS {what} {path}: {os_error(exc, path)}") from None


# ----- who holds a port ------------------------------------------------------------------------

def port_holder(listen: str) -> str:
    """'held by pid 1234 (nginx)', or why that cannot be known, read from /proc (Linux)."""
    _, port = parse_listen(listen)
    sockets = _listening_sockets(port)
    if sockets is None:
        return "and what holds it cannot be read here (no /proc/net/tcp)"
    if not sockets:
        return "held by a socket not listed in /proc/net/tcp (another network namespace?)"
    owners = _socket_owners({inode for inode, _ in sockets})
    if owners:
        return "held by " + ", ".join(f"pid {pid} ({name})" for pid, name in sorted(owners))
    uids = sorted({uid for _, uid in sockets})
    users = ", ".join(_user_name(uid) for uid in uids)
    return f"held by a process of user {users} that this user may not inspect"


def _listening_sockets(port: int) -> list[tuple[int, int]] | None:
    """(inode, uid) of TCP sockets bound to `port` (LISTEN first), or None when /proc is unreadable."""
    found, readable = [], False
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                lines = f.readlines()[1:]
        except OSError:
            continue
        readable = True
        for line in lines:
            fields = line.split()
            if len(fields) < 10:
                continue
            local, state, uid, inode = fields[1], fields[3], int(fields[7]), int(fields[9])
            if int(local.rsplit(":", 1)[1], 16) == port and inode:
                found.append((state != "0A", inode, uid))  # 0A: LISTEN
    if not readable:
        return None
    found.sort()
    listening = [(inode, uid) for not_listen, inode, uid in found if not not_listen]
    return listening or [(inode, uid) for _, inode, uid in found]


def _socket_owners(inodes: set[int]) -> set[tuple[int, str]]:
    wanted = {f"socket:[{inode}]" for inode in inodes}
    owners = set()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            fds = os.scandir(f"/proc/{entry.name}/fd")
            with fds:
                for fd in fds:
                    try:
                        if os.readlink(fd.path) in wanted:
                            owners.add((int(entry.name), _process_name(entry.name)))
                            break
                    except OSError:
                        continue
        except OSError:  # another user's process, or one that just ended
            continue
    return owners


def _process_name(pid: str) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip() or "?"
    except OSError:
        return "?"


def _user_name(uid: int) -> str:
    try:
        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"
