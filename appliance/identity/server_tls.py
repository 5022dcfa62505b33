"""The TLS certificate the listeners serve, and the live SSLContexts they serve it from.

OpenSSL copies a context's certificate into each connection when the connection is made, so loading a
new chain into the same context (SSLContext.load_cert_chain) changes what every new handshake gets while
open connections carry on with theirs: a renewed certificate is used without a restart.
"""

from __future__ import annotations

import ssl
import weakref
from pathlib import Path

from cryptography import x509


class ServerTLS:
    def __init__(self, cert_path: Path, key_path: Path) -> None:
        self.cert_path, self.key_path = Path(cert_path), Path(key_path)
        self._contexts: weakref.WeakSet[ssl.SSLContext] = weakref.WeakSet()
        self._loaded = self._stamp()

    def track(self, context: ssl.SSLContext) -> ssl.SSLContext:
        """A listener's context, to be given the certificate again whenever it changes."""
        self._contexts.add(context)
        return context

    def certificate(self) -> x509.Certificate:
        """The leaf certificate in the files (what the next handshake serves once loaded)."""
        return x509.load_pem_x509_certificate(self.cert_path.read_bytes())

    def changed(self) -> bool:
        """The files differ from what was last loaded (an operator's certificate renewed in place)."""
        return self._stamp() != self._loaded

    def load(self) -> None:
        """Put the files' certificate and key into every live context. The pair is tried on a scratch
        context first: a key that does not match the certificate raises here and changes nothing."""
        stamp = self._stamp()
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(self.cert_path, self.key_path)
        for context in list(self._contexts):
            context.load_cert_chain(self.cert_path, self.key_path)
        self._loaded = stamp

    def _stamp(self) -> tuple:
        try:
            return tuple((s.st_mtime_ns, s.st_size, s.st_ino) for s in (self.cert_path.stat(), self.key_path.stat()))
        except OSError:
            return ()
