"""Certificates of the plant-floor servers: the server's own certificate and the client trust list.

Everything lives under ``<data_dir>/pki/`` (:class:`Pki`)::

    own/cert.der   the server's application instance certificate (DER), generated on first start
    own/key.pem    its RSA private key (PKCS#8 PEM, mode 0600)
    trusted/       client certificates (and CAs) the servers accept: <thumbprint>.der
    revoked/       certificates taken off the trust list: <thumbprint>.der, refused even if copied back

**The server certificate** (:func:`ensure_server_certificate`) is a self-signed RSA-2048/SHA-256 OPC UA
application instance certificate (OPC 10000-6 §6.2.2: subjectAltName with the application URI, DNS
names and IP addresses; key usage digitalSignature, nonRepudiation, keyEncipherment, dataEncipherment;
extended key usage serverAuth and clientAuth), generated with asyncua's ``cert_gen`` on first start and
reused afterwards. Its application URI must equal the server's (asyncua and every client check it):
a certificate made for another URI is refused with an error saying which file to remove.

**Thumbprints** (:func:`thumbprint`) are OPC UA's: SHA-1 of the DER certificate, 40 lowercase hex digits
(OPC 10000-4 §7.2). The audit trail records the client's thumbprint with every request.

**The trust list** (:class:`TrustList`): ``trust(PATH)`` copies a client certificate (PEM or DER) into
``trusted/``; ``revoke(THUMBPRINT)`` moves it to ``revoked/``. :class:`CertificateChecker` is the
validator the OPC UA server (and the TLS mirror, through :meth:`TrustList.ssl_cafile`) asks: a client
certificate is accepted when it is in its validity period, its application URI is the one the client
states, it is not revoked, and it is on the trust list -- pinned (its thumbprint is a file in
``trusted/``) or issued by a CA certificate there (asyncua's TrustStore checks the chain). The checker
re-reads the folders when they change, so ``twin certs trust`` and ``revoke`` take effect on a running
server at the client's next connection.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import ipaddress
import logging
import os
import shutil
import socket
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from twin_core.errors import ParameterError, TwinError

log = logging.getLogger(__name__)

__all__ = ["CertInfo", "CertificateChecker", "CertificateError", "CertificateRejected", "Pki", "TrustList",
           "ensure_server_certificate", "generate_client_certificate", "load_certificate_file", "thumbprint"]

CERT_VALID_DAYS = 5 * 365
"""Validity of a generated certificate [days]: five years, the usual lifetime of an OPC UA
application instance certificate."""


class CertificateError(TwinError):
    """A certificate or key file is missing, unreadable, or not the one expected."""


class CertificateRejected(TwinError):
    """A client certificate failed validation: ``status`` is the OPC UA status code to answer
    (BadCertificateUntrusted, BadCertificateRevoked, BadCertificateTimeInvalid, BadCertificateUriInvalid,
    BadCertificateInvalid), ``detail`` says why for the audit trail."""

    def __init__(self, status: int, detail: str, thumbprint: str = "") -> None:
        self.status = status
        self.detail = detail
        self.thumbprint = thumbprint
        super().__init__(detail)


def thumbprint(cert: x509.Certificate | bytes) -> str:
    """OPC UA's thumbprint of a certificate (or of its DER bytes): SHA-1, 40 lowercase hex digits."""
    der = cert if isinstance(cert, bytes | bytearray) else cert.public_bytes(serialization.Encoding.DER)
    return hashlib.sha1(bytes(der)).hexdigest()


def load_certificate_file(path: str | Path) -> x509.Certificate:
    """A certificate from a PEM or DER file (CertificateError naming the file otherwise)."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise CertificateError(f"{p}: cannot read: {exc.strerror or exc}") from None
    try:
        if b"-----BEGIN CERTIFICATE-----" in data:
            return x509.load_pem_x509_certificate(data)
        return x509.load_der_x509_certificate(data)
    except ValueError as exc:
        raise CertificateError(f"{p}: not an X.509 certificate (PEM or DER): {exc}") from None


def application_uri_of(cert: x509.Certificate) -> str:
    """The certificate's application URI (the first URI of its subjectAltName; "" without one)."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return ""
    uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    return uris[0] if uris else ""


def _common_name(cert: x509.Certificate) -> str:
    cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(cn[0].value) if cn else cert.subject.rfc4514_string()


@dataclass(frozen=True)
class CertInfo:
    """What ``twin certs list/show`` prints of a certificate."""

    thumbprint: str
    subject: str
    application_uri: str
    not_before: _dt.datetime
    not_after: _dt.datetime
    state: str  # "server", "trusted" or "revoked"
    path: Path

    @classmethod
    def of(cls, cert: x509.Certificate, state: str, path: Path) -> CertInfo:
        return cls(thumbprint(cert), _common_name(cert), application_uri_of(cert), cert.not_valid_before_utc,
                   cert.not_valid_after_utc, state, path)

    def line(self) -> str:
        return (f"{self.thumbprint}  {self.state:<7}  {self.not_after:%Y-%m-%d}  {self.subject}  "
                f"{self.application_uri or '-'}")


class Pki:
    """The folders of one instance's certificates: ``<data_dir>/pki/{own,trusted,revoked}``."""

    def __init__(self, data_dir: str | Path) -> None:
        self.root = Path(data_dir) / "pki"
        self.own = self.root / "own"
        self.trusted = self.root / "trusted"
        self.revoked = self.root / "revoked"
        self.cert_path = self.own / "cert.der"
        self.key_path = self.own / "key.pem"

    def make_folders(self) -> None:
        for d in (self.own, self.trusted, self.revoked):
            d.mkdir(parents=True, exist_ok=True)


def _write_private(path: Path, data: bytes, mode: int = 0o600) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _alt_names(application_uri: str, hosts: Iterable[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(application_uri)]
    seen: set[str] = set()
    for h in hosts:
        if not h or h in seen:
            continue
        seen.add(h)
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            names.append(x509.DNSName(h))
    return names


def _generate(application_uri: str, common_name: str, hosts: Iterable[str],
              usages: list[x509.ObjectIdentifier]) -> tuple[bytes, bytes]:
    from asyncua.crypto import cert_gen

    key = cert_gen.generate_private_key()
    cert = cert_gen.generate_self_signed_app_certificate(
        key, common_name, {"organizationName": "batch-reactor-twin"}, _alt_names(application_uri, hosts), usages,
        days=CERT_VALID_DAYS)
    return cert.public_bytes(serialization.Encoding.DER), cert_gen.dump_private_key_as_pem(key)


def ensure_server_certificate(pki: Pki, application_uri: str, hosts: Iterable[str] = (),
                              common_name: str = "Batch reactor twin") -> tuple[Path, Path, bool]:
    """The server's certificate and key: generated into ``pki.own`` on first start, reused afterwards.

    hosts: DNS names and IP addresses the server is reached at (subjectAltName; this machine's host
    name is always added). Returns (certificate path, key path, whether they were generated now).
    A certificate for another application URI, or one whose key is missing, is a CertificateError
    naming the files (delete ``pki/own`` to generate new ones; clients that pinned the old one must
    then trust the new one)."""
    pki.make_folders()
    if pki.cert_path.exists() or pki.key_path.exists():
        if not (pki.cert_path.exists() and pki.key_path.exists()):
            raise CertificateError(f"{pki.own}: one of cert.der and key.pem is missing; remove the other to "
                                   "generate a new pair")
        cert = load_certificate_file(pki.cert_path)
        uri = application_uri_of(cert)
        if uri != application_uri:
            raise CertificateError(f"{pki.cert_path}: made for application URI {uri!r}, the server is "
                                   f"{application_uri!r}; remove {pki.own} to generate a new certificate")
        if cert.not_valid_after_utc < _dt.datetime.now(_dt.UTC):
            log.warning("%s expired on %s: clients will refuse it; remove %s to generate a new one",
                        pki.cert_path, cert.not_valid_after_utc, pki.own)
        return pki.cert_path, pki.key_path, False
    der, key_pem = _generate(application_uri, common_name, [*hosts, socket.gethostname()],
                             [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH])
    _write_private(pki.key_path, key_pem)
    _write_private(pki.cert_path, der, 0o644)
    log.info("generated the server certificate %s (thumbprint %s) for %s", pki.cert_path, thumbprint(der),
             application_uri)
    return pki.cert_path, pki.key_path, True


def generate_client_certificate(folder: str | Path, application_uri: str, name: str = "client",
                                hosts: Iterable[str] = ("127.0.0.1", "localhost", socket.gethostname())) -> tuple[Path, Path]:
    """A self-signed OPC UA client certificate (clientAuth) and key for ``application_uri``, written as
    ``<folder>/<name>.der`` and ``<folder>/<name>.key.pem``: for tests, benchmarks and the demo. The
    client must use the same application URI (``client.application_uri = ...``)."""
    d = Path(folder)
    d.mkdir(parents=True, exist_ok=True)
    der, key_pem = _generate(application_uri, name, hosts, [ExtendedKeyUsageOID.CLIENT_AUTH])
    cert_path, key_path = d / f"{name}.der", d / f"{name}.key.pem"
    _write_private(key_path, key_pem)
    _write_private(cert_path, der, 0o644)
    return cert_path, key_path


def _check_thumbprint(text: str) -> str:
    t = text.strip().lower().replace(":", "")
    if len(t) != 40 or any(c not in "0123456789abcdef" for c in t):
        raise ParameterError("thumbprint", text, "must be 40 hex digits (SHA-1, as twin certs list prints it)")
    return t


class TrustList:
    """The client trust list of one instance (``pki/trusted`` and ``pki/revoked``); no I/O in the
    constructor."""

    def __init__(self, pki: Pki) -> None:
        self.pki = pki

    def _certs(self, folder: Path) -> list[tuple[Path, x509.Certificate]]:
        out = []
        if not folder.is_dir():
            return out
        for p in sorted(folder.iterdir()):
            if p.suffix.lower() in (".der", ".pem", ".crt", ".cer") and p.is_file():
                try:
                    out.append((p, load_certificate_file(p)))
                except CertificateError as exc:
                    log.warning("trust list: %s", exc)
        return out

    def trusted(self) -> list[tuple[Path, x509.Certificate]]:
        return self._certs(self.pki.trusted)

    def revoked_thumbprints(self) -> set[str]:
        return {thumbprint(c) for _, c in self._certs(self.pki.revoked)}

    def list(self) -> list[CertInfo]:
        """Every trusted and revoked certificate (by state, then thumbprint)."""
        return ([CertInfo.of(c, "trusted", p) for p, c in self.trusted()]
                + [CertInfo.of(c, "revoked", p) for p, c in self._certs(self.pki.revoked)])

    def trust(self, path: str | Path) -> CertInfo:
        """Put the certificate in ``path`` (PEM or DER) on the trust list (as ``trusted/<thumbprint>.der``).
        A revoked certificate stays revoked (ParameterError): issue the client a new one."""
        cert = load_certificate_file(path)
        tp = thumbprint(cert)
        if tp in self.revoked_thumbprints():
            raise ParameterError("certificate", str(path), f"thumbprint {tp} is revoked: it cannot be trusted "
                                                           "again (give the client a new certificate)")
        if any(thumbprint(c) == tp for _, c in self.trusted()):
            raise ParameterError("certificate", str(path), f"thumbprint {tp} is already trusted")
        self.pki.make_folders()
        dest = self.pki.trusted / f"{tp}.der"
        _write_private(dest, cert.public_bytes(serialization.Encoding.DER), 0o644)
        return CertInfo.of(cert, "trusted", dest)

    def revoke(self, thumb: str) -> CertInfo:
        """Take the certificate with this thumbprint off the trust list (moved to ``revoked/``): the
        servers refuse it from the client's next connection on, even if it is copied back."""
        tp = _check_thumbprint(thumb)
        for p, c in self.trusted():
            if thumbprint(c) == tp:
                self.pki.make_folders()
                dest = self.pki.revoked / f"{tp}.der"
                shutil.move(str(p), dest)
                return CertInfo.of(c, "revoked", dest)
        if tp in self.revoked_thumbprints():
            raise ParameterError("thumbprint", thumb, "is already revoked")
        raise ParameterError("thumbprint", thumb, "is not on the trust list (twin certs list shows it)")

    def ssl_cafile(self) -> Path:
        """One PEM file of every trusted certificate except the revoked ones (for ssl.SSLContext
        load_verify_locations), written into ``pki/``; rewritten on each call."""
        revoked = self.revoked_thumbprints()
        pem = b"".join(c.public_bytes(serialization.Encoding.PEM) for _, c in self.trusted()
                       if thumbprint(c) not in revoked)
        self.pki.make_folders()
        path = self.pki.root / "trusted-bundle.pem"
        _write_private(path, pem, 0o644)
        return path


class CertificateChecker:
    """The client-certificate validator of the OPC UA server (asyncua's ``CertificateValidatorMethod``:
    ``await checker(cert, app_description)`` raises ``ServiceError`` with the Bad status code).

    on_reject(cert_thumbprint, status_name, detail) is awaited for each rejection (the server audits it).
    """

    def __init__(self, trust: TrustList,
                 on_reject: Callable[[str, str, str], Awaitable[None]] | None = None) -> None:
        self.trust = trust
        self.on_reject = on_reject
        self._stamp: tuple | None = None
        self._pinned: set[str] = set()
        self._revoked: set[str] = set()
        self._store = None

    def _folders_stamp(self) -> tuple:
        out = []
        for d in (self.trust.pki.trusted, self.trust.pki.revoked):
            try:
                st = d.stat()
                out.append((st.st_mtime_ns, len(list(d.iterdir()))))
            except OSError:
                out.append(None)
        return tuple(out)

    async def _reload(self) -> None:
        stamp = self._folders_stamp()
        if stamp == self._stamp:
            return
        from asyncua.crypto.truststore import TrustStore

        trusted = self.trust.trusted()
        self._pinned = {thumbprint(c) for _, c in trusted}
        self._revoked = self.trust.revoked_thumbprints()
        cas = [c for _, c in trusted if _is_ca(c)]
        self._store = None
        if cas:
            store = TrustStore([self.trust.pki.trusted], [])
            await store.load()
            self._store = store
        self._stamp = stamp

    async def check(self, cert: x509.Certificate, application_uri: str | None) -> str:
        """The thumbprint of an accepted certificate; CertificateRejected otherwise."""
        tp = thumbprint(cert)
        from asyncua import ua

        now = _dt.datetime.now(_dt.UTC)
        if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
            raise CertificateRejected(ua.StatusCodes.BadCertificateTimeInvalid,
                                      f"certificate {_common_name(cert)} valid {cert.not_valid_before_utc:%Y-%m-%d} "
                                      f"to {cert.not_valid_after_utc:%Y-%m-%d}, not now", tp)
        if application_uri is not None and application_uri_of(cert) != application_uri:
            raise CertificateRejected(ua.StatusCodes.BadCertificateUriInvalid,
                                      f"certificate made for {application_uri_of(cert)!r}, the client says it is "
                                      f"{application_uri!r}", tp)
        await self._reload()
        if tp in self._revoked:
            raise CertificateRejected(ua.StatusCodes.BadCertificateRevoked,
                                      f"certificate {_common_name(cert)} ({tp}) is revoked", tp)
        if tp in self._pinned:
            return tp
        if self._store is not None and _chain_trusted(self._store, cert):
            return tp
        raise CertificateRejected(ua.StatusCodes.BadCertificateUntrusted,
                                  f"certificate {_common_name(cert)} ({tp}) is not on the trust list "
                                  f"(twin certs trust PATH)", tp)

    async def __call__(self, cert: x509.Certificate, app_description: object) -> None:
        from asyncua.common.utils import ServiceError

        uri = getattr(app_description, "ApplicationUri", None)
        try:
            await self.check(cert, uri)
        except CertificateRejected as exc:
            if self.on_reject is not None:
                from asyncua import ua

                await self.on_reject(exc.thumbprint, ua.StatusCode(exc.status).name, exc.detail)
            raise ServiceError(exc.status) from None


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return False
    return bool(bc.ca and ku.key_cert_sign)


def _chain_trusted(store: object, cert: x509.Certificate) -> bool:
    # asyncua's TrustStore logs a traceback for every certificate it does not trust; the checker
    # reports the refusal itself (and audits it), once.
    ts_log = logging.getLogger("asyncua.crypto.truststore")
    level = ts_log.level
    ts_log.setLevel(logging.CRITICAL)
    try:
        return bool(store.is_trusted(cert))  # type: ignore[attr-defined]
    finally:
        ts_log.setLevel(level)
