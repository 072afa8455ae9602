"""OPC UA security of the twin's server: endpoints, client certificates, logins, sessions' users.

:class:`ServerSecurity` is what the server is told (from the runtime configuration:
:meth:`ServerSecurity.from_config`); :class:`SessionGuard` is what it does with it:

- **Endpoints**: ``Basic256Sha256``, ``Aes256_Sha256_RsaPss`` and ``Aes128_Sha256_RsaOaep``, each
  SignAndEncrypt (:data:`SECURE_POLICIES`). SecurityPolicy None only with ``allow_none``; without it a
  client may still open a None channel to *discover* the endpoints (GetEndpoints, FindServers: OPC UA
  requires it), and every other request on such a channel -- CreateSession first -- is refused
  (BadSecurityPolicyRejected) and audited. asyncua itself would let a session be created on it.
- **Client certificates** are checked at CreateSession and again at ActivateSession against the trust
  list (gateways.certs.CertificateChecker): the secure channel's certificate, not only the one the
  client chooses to put in CreateSession (asyncua checks only that one, and only if it is there).
- **Logins**: user name and password (``twin users``), checked by gateways.users.Authenticator on one
  login thread of its own (scrypt costs tenths of a second: never on the event loop), throttled per
  client (its address and certificate thumbprint), each success and failure audited with the
  certificate thumbprint. A password sent in plain text (a None channel with an unencrypted token)
  is refused unchecked. Anonymous sessions only with ``allow_anonymous``, and then read-only (role
  viewer). Certificate (X509) user tokens are not accepted.
- Every session's user is a :class:`TwinUser` (the twin role, thumbprint, client); the server's
  handlers read it with :func:`current_user` and enforce roles per node and per method.

asyncua 2.1 checks a user name in a synchronous call (``UserManager.get_user`` inside
ActivateSession). To check it off the event loop, the guard's protocol (:class:`_TwinUaProcessor`) reads
the ActivateSession request first, awaits the login on the login thread, and hands the result to
``get_user`` through the connection; that is why :class:`TwinServer` replaces ``Server.start`` (the one
place asyncua builds its connection handlers).
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from asyncua import Server, ua
from asyncua.common.utils import ServiceError
from asyncua.crypto import uacrypto
from asyncua.crypto.permission_rules import USER_TYPES, PermissionRuleset, User, UserRole
from asyncua.crypto.security_policies import SecurityPolicyNone
from asyncua.server.binary_server_asyncio import BinaryServer, OPCUAProtocol
from asyncua.server.uaprocessor import UaProcessor
from asyncua.server.user_managers import UserManager
from asyncua.ua.ua_binary import struct_from_binary

from gateways.audit import AsyncAuditTrail, AuditError, AuditTrail
from gateways.certs import CertificateChecker, CertificateRejected, Pki, TrustList, thumbprint
from gateways.users import DEFAULT_KDF, Authenticator, LoginThrottle, Role, ScryptParams, UserStore
from twin_core.errors import ParameterError, ParameterTypeError

log = logging.getLogger(__name__)

__all__ = ["SECURE_POLICIES", "ServerSecurity", "SessionGuard", "TwinServer", "TwinUser", "current_user"]

SECURE_POLICIES = (ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt,
                   ua.SecurityPolicyType.Aes256Sha256RsaPss_SignAndEncrypt,
                   ua.SecurityPolicyType.Aes128Sha256RsaOaep_SignAndEncrypt)
"""The endpoints always offered: the three policies of OPC UA's current profiles, SignAndEncrypt."""

USERS_FILE = "users.json"
AUDIT_FILE = "audit.sqlite"

_ID = ua.ObjectIds
_DISCOVERY = {ua.NodeId(_ID.GetEndpointsRequest_Encoding_DefaultBinary), ua.NodeId(_ID.FindServersRequest_Encoding_DefaultBinary),
              ua.NodeId(_ID.FindServersOnNetworkRequest_Encoding_DefaultBinary)}
_CREATE = ua.NodeId(_ID.CreateSessionRequest_Encoding_DefaultBinary)
_ACTIVATE = ua.NodeId(_ID.ActivateSessionRequest_Encoding_DefaultBinary)
_CLOSE = ua.NodeId(_ID.CloseSessionRequest_Encoding_DefaultBinary)


@dataclass(frozen=True)
class ServerSecurity:
    """The security settings of one OPC UA server.

    data_dir: holds ``pki/`` (the server certificate, the trust list), ``users.json`` and ``audit.sqlite``
    unless users_file / audit_file say otherwise; allow_none: also offer SecurityPolicy None;
    allow_anonymous: accept anonymous sessions (read-only); hosts: extra DNS names or addresses of the
    server for its certificate; throttle: the failed-login rule (default gateways.users.LoginThrottle());
    kdf: scrypt parameters of the dummy hash an unknown user costs (default DEFAULT_KDF, as new users';
    tests whose users have TEST_ONLY_KDF hashes pass that).
    """

    data_dir: Path
    allow_none: bool = False
    allow_anonymous: bool = False
    users_file: Path | None = None
    audit_file: Path | None = None
    hosts: tuple[str, ...] = ()
    throttle: LoginThrottle | None = field(default=None, compare=False)
    kdf: ScryptParams = DEFAULT_KDF

    def __post_init__(self) -> None:
        if not isinstance(self.data_dir, str | Path):
            raise ParameterTypeError("security.data_dir", self.data_dir, "a path")
        object.__setattr__(self, "data_dir", Path(self.data_dir))
        for name in ("allow_none", "allow_anonymous"):
            if not isinstance(getattr(self, name), bool):
                raise ParameterTypeError(f"security.{name}", getattr(self, name), "true or false")
        for name in ("users_file", "audit_file"):
            v = getattr(self, name)
            if v is not None:
                object.__setattr__(self, name, Path(v))
        if self.throttle is not None and not isinstance(self.throttle, LoginThrottle):
            raise ParameterTypeError("security.throttle", self.throttle, "LoginThrottle")

    @classmethod
    def from_config(cls, cfg: Any) -> ServerSecurity:
        """From a gateways.config.RuntimeConfig: data_dir, opcua_allow_none, opcua_allow_anonymous."""
        return cls(Path(cfg.data_dir), allow_none=cfg.opcua_allow_none, allow_anonymous=cfg.opcua_allow_anonymous)

    @property
    def pki(self) -> Pki:
        return Pki(self.data_dir)

    @property
    def users_path(self) -> Path:
        return self.users_file if self.users_file is not None else self.data_dir / USERS_FILE

    @property
    def audit_path(self) -> Path:
        return self.audit_file if self.audit_file is not None else self.data_dir / AUDIT_FILE

    @property
    def policies(self) -> list[ua.SecurityPolicyType]:
        return [*SECURE_POLICIES, *([ua.SecurityPolicyType.NoSecurity] if self.allow_none else [])]

    def summary(self) -> str:
        names = ", ".join(p.name for p in self.policies)
        return (f"endpoints {names}; identity: user name{', anonymous (read-only)' if self.allow_anonymous else ''}; "
                f"trust list {self.pki.trusted}; users {self.users_path}")


@dataclass
class TwinUser(User):
    """The user of one session: asyncua's User (role User: never asyncua's Admin, who may change the
    address space) with the twin's role, the client's certificate thumbprint and address."""

    twin_role: Role = Role.VIEWER
    cert_thumbprint: str = ""
    client: str = ""
    anonymous: bool = False


_UNSET = object()
_CURRENT: contextvars.ContextVar[_TwinUaProcessor | None] = contextvars.ContextVar("twin_opcua_connection",
                                                                                  default=None)


def current_user() -> TwinUser | None:
    """The user of the request being served (None: not a client's request, e.g. the server's own
    internal session)."""
    proc = _CURRENT.get()
    if proc is None or proc.session is None:
        return None
    user = proc.session.user
    return user if isinstance(user, TwinUser) else None


def current_peer() -> str:
    """The address of the client whose request is being served ("" outside a request)."""
    proc = _CURRENT.get()
    return proc.peer if proc is not None else ""


_ALLOWED_SERVICES = frozenset(ua.NodeId(t) for t in USER_TYPES)
_SESSION_SERVICES = frozenset({_CREATE, _ACTIVATE, _CLOSE, *_DISCOVERY,
                               ua.NodeId(_ID.RegisterServerRequest_Encoding_DefaultBinary),
                               ua.NodeId(_ID.RegisterServer2Request_Encoding_DefaultBinary)})


class _TwinRuleset(PermissionRuleset):
    """Service-level permissions: a session whose user is a TwinUser may use the user services (Read,
    Write, Call, Browse, subscriptions, HistoryRead ...; roles are checked per node and method by the
    server's handlers); nobody may change the address space (AddNodes, DeleteNodes, references), and a
    session not (yet) activated may do nothing. (SessionGuard.before refuses and audits the same
    requests first; this is asyncua's own check, kept as a second line.)"""

    def check_validity(self, user: Any, action_type_id: ua.NodeId, body: Any) -> bool:
        return isinstance(user, TwinUser) and action_type_id in _ALLOWED_SERVICES


class _TwinUserManager(UserManager):
    """asyncua's (synchronous) user check: hands over the login the connection awaited just before."""

    def get_user(self, iserver: Any, username: str | None = None, password: str | None = None,
                 certificate: Any = None) -> User | None:
        proc = _CURRENT.get()
        if proc is None or proc.pending_user is _UNSET:
            log.error("ActivateSession without a checked login: refused")
            return None
        user, proc.pending_user = proc.pending_user, _UNSET
        return user  # type: ignore[return-value]


class SessionGuard:
    """Certificates, logins and the audit trail of one server (see the module docstring). The
    constructor does no I/O; ``await start()`` opens the audit trail, ``await stop()`` closes it."""

    def __init__(self, security: ServerSecurity, application_uri: str) -> None:
        self.security = security
        self.application_uri = application_uri
        self.trust = TrustList(security.pki)
        self.checker = CertificateChecker(self.trust, on_reject=self._certificate_rejected)
        self.authenticator = Authenticator(UserStore(security.users_path, kdf=security.kdf), security.throttle)
        self.audit = AsyncAuditTrail(AuditTrail(security.audit_path))
        self._login_thread: ThreadPoolExecutor | None = None
        self._background: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        await self.audit.start()
        # One thread: logins of one client are checked in order (the throttle counts each before the
        # next), and at most one scrypt (32 MiB) runs at a time.
        self._login_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="opcua-login")

    async def stop(self) -> None:
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
        if self._login_thread is not None:
            self._login_thread.shutdown(wait=True)
            self._login_thread = None
        await self.audit.stop()

    # -- the audit trail ----------------------------------------------------------------------------
    async def record(self, **fields: object) -> bool:
        """Append one record; False (and an error in the log) when it could not be written."""
        try:
            await self.audit.append(**fields)
            return True
        except (AuditError, ParameterError, ParameterTypeError) as exc:
            log.error("audit record not written (%s): %s", fields.get("action"), exc)
            return False

    def record_soon(self, **fields: object) -> None:
        """Append from synchronous code (the record lands after the current request)."""
        task = asyncio.get_running_loop().create_task(self.record(**fields))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _certificate_rejected(self, thumb: str, status: str, detail: str) -> None:
        await self.record(user=_peer_user(), action="refused", target=current_peer() or "client",
                          outcome="refused", cert_thumbprint=thumb, detail=f"{status}: {detail}")

    # -- what each request passes first ------------------------------------------------------------
    async def before(self, proc: _TwinUaProcessor, typeid: ua.NodeId, requesthdr: Any, body: Any) -> None:
        """Raises ServiceError (sent as a ServiceFault) for a request to refuse."""
        policy = proc._connection.security_policy
        if policy.URI == SecurityPolicyNone.URI and not self.security.allow_none and typeid not in _DISCOVERY:
            if not proc.refused_none:
                proc.refused_none = True
                await self.record(user=_peer_user(), action="refused", target=proc.peer, outcome="refused",
                                  detail="SecurityPolicy None is off: only endpoint discovery on an unsecured "
                                         "channel (BadSecurityPolicyRejected)")
            raise ServiceError(ua.StatusCodes.BadSecurityPolicyRejected)
        if typeid not in _SESSION_SERVICES:
            user = proc.session.user if proc.session is not None else None
            if not isinstance(user, TwinUser) or typeid not in _ALLOWED_SERVICES:
                if not proc.refused_service:  # once per connection: a client looping on it cannot fill the disk
                    proc.refused_service = True
                    twin = user if isinstance(user, TwinUser) else None
                    await self.record(user=(twin.name or "anonymous") if twin else "<not logged in>",
                                      role=str(twin.twin_role) if twin else "",
                                      cert_thumbprint=twin.cert_thumbprint if twin else proc.client_thumbprint,
                                      action="refused", target=proc.peer, outcome="refused",
                                      detail=f"service {typeid.to_string()} refused (BadUserAccessDenied): "
                                             + ("not allowed to any session" if twin else "the session is not activated"))
                raise ServiceError(ua.StatusCodes.BadUserAccessDenied)
        if typeid == _CREATE:
            params = struct_from_binary(ua.CreateSessionParameters, body.copy())
            given = params.ClientCertificate or None
            channel = policy.peer_certificate or None
            if channel is not None and given is not None and uacrypto.der_from_x509(uacrypto.x509_from_der(given)) \
                    != uacrypto.der_from_x509(uacrypto.x509_from_der(channel)):
                await self.record(user=_peer_user(), action="refused", target=proc.peer, outcome="refused",
                                  cert_thumbprint=thumbprint(uacrypto.der_from_x509(uacrypto.x509_from_der(channel))),
                                  detail="CreateSession with another certificate than the secure channel's")
                raise ServiceError(ua.StatusCodes.BadCertificateInvalid)
            der = channel or given
            uri = params.ClientDescription.ApplicationUri if params.ClientDescription else None
            proc.client_thumbprint = await self._check_certificate(der, uri) if der else ""
        elif typeid == _ACTIVATE:
            if policy.peer_certificate:  # a new channel may activate an existing session: check it again
                proc.client_thumbprint = await self._check_certificate(policy.peer_certificate, None)
            params = struct_from_binary(ua.ActivateSessionParameters, body.copy())
            session = proc.session or proc.iserver.lookup_external_session(requesthdr.AuthenticationToken)
            proc.pending_user = await self._identify(proc, session, params)
        elif typeid == _CLOSE and proc.session is not None and isinstance(proc.session.user, TwinUser):
            u = proc.session.user
            await self.record(user=u.name or "anonymous", role=str(u.twin_role), cert_thumbprint=u.cert_thumbprint,
                              action="logout", target=proc.peer, outcome="success", detail="CloseSession")

    async def _check_certificate(self, der: bytes, application_uri: str | None) -> str:
        cert = uacrypto.x509_from_der(der)
        try:
            return await self.checker.check(cert, application_uri)
        except CertificateRejected as exc:
            await self._certificate_rejected(exc.thumbprint, ua.StatusCode(exc.status).name, exc.detail)
            raise ServiceError(exc.status) from None

    async def _identify(self, proc: _TwinUaProcessor, session: Any, params: ua.ActivateSessionParameters
                        ) -> TwinUser | None:
        token = params.UserIdentityToken
        if isinstance(token, ua.ExtensionObject) and token.TypeId == ua.NodeId(ua.ObjectIds.Null):
            token = ua.AnonymousIdentityToken()  # OPC 10000-4 §5.6.3: a null token is anonymous
        tp = proc.client_thumbprint
        client = proc.peer_host + (f"/{tp}" if tp else "")
        if isinstance(token, ua.AnonymousIdentityToken):
            if not self.security.allow_anonymous:
                await self.record(user="anonymous", action="login_failed", target=client, outcome="refused",
                                  cert_thumbprint=tp, detail="anonymous access is off (BadIdentityTokenRejected)")
                return None
            await self.record(user="anonymous", role=str(Role.VIEWER), action="login", target=client,
                              outcome="success", cert_thumbprint=tp, detail="anonymous session: read-only")
            return TwinUser(role=UserRole.User, name="anonymous", twin_role=Role.VIEWER, cert_thumbprint=tp,
                            client=client, anonymous=True)
        if not isinstance(token, ua.UserNameIdentityToken):
            await self.record(user="<certificate>", action="login_failed", target=client, outcome="refused",
                              cert_thumbprint=tp, detail=f"{type(token).__name__} not accepted: log in with a "
                                                         "user name and password")
            return None
        name = token.UserName or ""
        if session is None:
            return None  # asyncua answers BadSessionIdInvalid
        if not token.EncryptionAlgorithm and proc._connection.security_policy.Mode != ua.MessageSecurityMode.SignAndEncrypt:
            await self.record(user=name or "<empty>", action="login_failed", target=client, outcome="refused",
                              cert_thumbprint=tp, detail="password sent in plain text over an unencrypted channel: "
                                                         "refused unchecked")
            return None
        try:
            _, password = proc.iserver.decrypt_user_token(session, token)
        except Exception as exc:  # noqa: BLE001 -- whatever a malformed token raises, it is a failed login
            await self.record(user=name or "<empty>", action="login_failed", target=client, outcome="failure",
                              cert_thumbprint=tp, detail=f"password token could not be decrypted: {exc}")
            return None
        loop = asyncio.get_running_loop()
        assert self._login_thread is not None, "SessionGuard.start() not awaited"
        decision = await loop.run_in_executor(self._login_thread, self.authenticator.login, name,
                                              password if isinstance(password, str) else "", client, tp)
        if not await self.record(**decision.audit_fields()) and decision.ok:
            log.error("login of %s refused: it could not be audited", name)
            return None
        if not decision.ok:
            log.info("login of %r from %s refused: %s", name, client, decision.detail)
            return None
        return TwinUser(role=UserRole.User, name=decision.user, twin_role=Role.parse(decision.role),
                        cert_thumbprint=tp, client=client)


def _peer_user() -> str:
    user = current_user()
    return (user.name or "anonymous") if user is not None else "<not logged in>"


class _TwinUaProcessor(UaProcessor):
    """asyncua's request processor with the guard in front of every request."""

    def __init__(self, iserver: Any, transport: Any, limits: Any, guard: SessionGuard) -> None:
        super().__init__(iserver, transport, limits)
        self.guard = guard
        name = self.name if isinstance(self.name, tuple) else ("?", 0)
        self.peer_host = str(name[0])
        self.peer = f"{name[0]}:{name[1]}"
        self.pending_user: object = _UNSET
        self.client_thumbprint = ""
        self.refused_none = False
        self.refused_service = False

    def open_secure_channel(self, algohdr: Any, seqhdr: Any, body: Any) -> None:
        try:
            super().open_secure_channel(algohdr, seqhdr, body)
        except Exception as exc:  # a policy or mode not offered, a certificate asyncua cannot use
            self.guard.record_soon(user="<not logged in>", action="refused", target=self.peer, outcome="refused",
                                   detail=f"OpenSecureChannel refused ({getattr(algohdr, 'SecurityPolicyURI', '?')}): "
                                          f"{exc}")
            raise

    async def _process_message(self, typeid: ua.NodeId, requesthdr: Any, seqhdr: Any, body: Any) -> Any:
        token = _CURRENT.set(self)
        try:
            await self.guard.before(self, typeid, requesthdr, body)
            return await super()._process_message(typeid, requesthdr, seqhdr, body)
        finally:
            self.pending_user = _UNSET
            _CURRENT.reset(token)


class _TwinProtocol(OPCUAProtocol):
    def __init__(self, *args: Any, guard: SessionGuard, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._guard = guard

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        if self.processor is not None:  # replaced before its message loop runs (a task, not started yet)
            self.processor = _TwinUaProcessor(self.iserver, self.transport, self.limits, self._guard)
            self.processor.set_policies(self.policies)


class _TwinBinaryServer(BinaryServer):
    def __init__(self, *args: Any, guard: SessionGuard, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._guard = guard

    def _make_protocol(self) -> OPCUAProtocol:
        return _TwinProtocol(iserver=self.iserver, policies=self._policies, clients=self.clients,
                             closing_tasks=self.closing_tasks, limits=self.limits, guard=self._guard)


class TwinServer(Server):
    """asyncua's Server whose connections pass the :class:`SessionGuard` (``start`` as asyncua's, with
    the guard's connection handler)."""

    def __init__(self, guard: SessionGuard) -> None:
        super().__init__(user_manager=_TwinUserManager())
        self.guard = guard

    async def start(self) -> None:
        if self.iserver.certificate is not None:
            uacrypto.check_certificate(self.iserver.certificate, self._application_uri, None)
        await self._setup_server_nodes()
        await self.iserver.start()
        try:
            host, port = self._get_bind_socket_info()
            self.bserver = _TwinBinaryServer(self.iserver, host, port, self.limits, guard=self.guard)
            self.bserver.set_policies(self._policies)
            await self.bserver.start()
        except Exception:
            await self.iserver.stop()
            raise

    async def configure(self) -> None:
        """Endpoints, identity tokens, the server certificate (generated on first start) and the
        certificate validator; call after ``init()`` and ``set_application_uri``, before ``start()``."""
        from gateways.certs import ensure_server_certificate

        sec = self.guard.security
        host = self.endpoint.hostname or "127.0.0.1"
        cert, key, created = await asyncio.to_thread(ensure_server_certificate, sec.pki, self._application_uri,
                                                     [host, *sec.hosts])
        await self.load_certificate(str(cert))
        await self.load_private_key(str(key))
        self.set_security_policy(sec.policies, permission_ruleset=_TwinRuleset())
        tokens: list[type] = [ua.UserNameIdentityToken]
        if sec.allow_anonymous:
            tokens.append(ua.AnonymousIdentityToken)
        self.set_identity_tokens(tokens)
        self.set_certificate_validator(self.guard.checker)
        if sec.allow_none:
            log.warning("OPC UA SecurityPolicy None is ON (configuration): traffic on that endpoint is neither "
                        "signed nor encrypted")
        if sec.allow_anonymous:
            log.warning("OPC UA anonymous access is ON (configuration): anonymous sessions may browse, read, "
                        "subscribe and read history (no writes, no methods)")
        log.info("OPC UA security: %s; server certificate %s (%s, thumbprint %s)", sec.summary(), cert,
                 "generated now" if created else "reused", thumbprint(cert.read_bytes()))
