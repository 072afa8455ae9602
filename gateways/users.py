"""Users, roles and logins of the plant-floor servers.

**Roles** are ordered; each includes everything the one before it may do (:data:`MINIMUM_ROLE` declares,
once, the least role for each :class:`Action`; :func:`permits` is what the server asks)::

    viewer    browse, read, subscribe, history
    operator  + batch methods (StartBatch, Hold, Resume, Abort), recipe writes, lab entry, alarm acknowledgement
    engineer  + twin tuning and parameters (ResetTwin; SetTwinParameter, the only way to change the Twin folder)
    admin     + users, certificates

**Users** live in a JSON file (:class:`UserStore`; default ``<data_dir>/users.json``), written atomically
(a temporary file in the same folder, fsync, rename; mode 0600) under an exclusive lock on a side file so
two ``twin users`` commands cannot lose each other's change. A password is never stored: only its
scrypt hash with a random 16-byte salt and the scrypt parameters used, so a stronger default later does not
invalidate existing hashes. Passwords are compared with :func:`hmac.compare_digest`.

**scrypt parameters** (:data:`DEFAULT_KDF`): N = 2**15, r = 8, p = 3, 32-byte key. This is one of OWASP's
equivalent-strength scrypt settings (the same work as N = 2**17, r = 8, p = 1) with a quarter of the memory:
32 MiB per verification instead of 128, so a handful of sessions logging in at once stays within a small
server's memory, while each guess still costs about 0.25 s of CPU and 32 MiB (measured on the development
machine) -- slow for an offline attack on a stolen file. A verification is CPU work: the server must run
it off the event loop. Tests pass cheap parameters explicitly (``UserStore(path, kdf=ScryptParams(...))``,
:data:`TEST_ONLY_KDF`); the default is never weakened.

**Logins** (:class:`Authenticator`) are throttled per client (:class:`LoginThrottle`): after
``max_failures`` (5) failed logins from one client within ``window_s`` (60 s) the client is refused for
``lockout_s`` (300 s) without its password even being checked (so a guesser cannot make the server hash
at will). Every login returns a :class:`LoginDecision` whose :meth:`~LoginDecision.audit_fields` are the
keyword arguments of :meth:`gateways.audit.AuditTrail.append`. A disabled user cannot log in.
"""

from __future__ import annotations

import base64
import enum
import hashlib
import hmac
import json
import os
import re
import secrets
import threading
import unicodedata
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

from twin_core.clock import Clock, WallClock
from twin_core.errors import ParameterError, ParameterTypeError, TwinError

__all__ = ["DEFAULT_KDF", "MINIMUM_ROLE", "TEST_ONLY_KDF", "Action", "Authenticator", "LoginDecision",
           "LoginThrottle", "Role", "ScryptParams", "User", "UserStore", "UserStoreError", "action_for_method",
           "action_for_write", "permits"]

FILE_FORMAT = 1


class Role(enum.IntEnum):
    """Ordered roles: a higher role may do everything a lower one may."""

    VIEWER = 1
    OPERATOR = 2
    ENGINEER = 3
    ADMIN = 4

    @classmethod
    def parse(cls, value: Role | str) -> Role:
        if isinstance(value, Role):
            return value
        if not isinstance(value, str):
            raise ParameterTypeError("role", value, "a role name")
        try:
            return cls[value.strip().upper()]
        except KeyError:
            raise ParameterError("role", value, f"must be one of {', '.join(r.name.lower() for r in cls)}") from None

    def __str__(self) -> str:
        return self.name.lower()


class Action(enum.StrEnum):
    """Everything a session may ask for, as the server checks it."""

    BROWSE = "browse"
    READ = "read"
    SUBSCRIBE = "subscribe"
    HISTORY = "history"
    BATCH_METHOD = "batch_method"
    RECIPE_WRITE = "recipe_write"
    LAB_ENTRY = "lab_entry"
    ALARM_ACK = "alarm_ack"
    TWIN_TUNING = "twin_tuning"
    TWIN_PARAMETERS = "twin_parameters"
    MANAGE_USERS = "manage_users"
    MANAGE_CERTIFICATES = "manage_certificates"


MINIMUM_ROLE: dict[Action, Role] = {
    Action.BROWSE: Role.VIEWER,
    Action.READ: Role.VIEWER,
    Action.SUBSCRIBE: Role.VIEWER,
    Action.HISTORY: Role.VIEWER,
    Action.BATCH_METHOD: Role.OPERATOR,
    Action.RECIPE_WRITE: Role.OPERATOR,
    Action.LAB_ENTRY: Role.OPERATOR,
    Action.ALARM_ACK: Role.OPERATOR,
    Action.TWIN_TUNING: Role.ENGINEER,
    Action.TWIN_PARAMETERS: Role.ENGINEER,
    Action.MANAGE_USERS: Role.ADMIN,
    Action.MANAGE_CERTIFICATES: Role.ADMIN,
}
"""The least role allowed each action: the one declaration of who may do what."""

_METHOD_ACTIONS = {"StartBatch": Action.BATCH_METHOD, "Hold": Action.BATCH_METHOD, "Resume": Action.BATCH_METHOD,
                   "Abort": Action.BATCH_METHOD, "AcknowledgeAlarms": Action.ALARM_ACK,
                   "EnterLabResult": Action.LAB_ENTRY, "ResetTwin": Action.TWIN_TUNING,
                   "SetTwinParameter": Action.TWIN_PARAMETERS}
_WRITE_ACTIONS = {"Recipe": Action.RECIPE_WRITE, "Twin": Action.TWIN_PARAMETERS}


def _action(value: Action | str) -> Action:
    if isinstance(value, Action):
        return value
    try:
        return Action(value)
    except ValueError:
        raise ParameterError("action", value, f"must be one of {', '.join(a.value for a in Action)}") from None


def permits(role: Role | str, action: Action | str) -> bool:
    """Whether ``role`` may do ``action``. An unknown role or action raises ParameterError (a typo in the
    server must fail loudly, not silently allow or deny)."""
    return Role.parse(role) >= MINIMUM_ROLE[_action(action)]


def action_for_method(method: str) -> Action:
    """The action a call of a reactor's method is (StartBatch -> batch_method, ...)."""
    try:
        return _METHOD_ACTIONS[method]
    except KeyError:
        raise ParameterError("method", method, f"unknown method (known: {', '.join(_METHOD_ACTIONS)})") from None


def action_for_write(folder: str) -> Action:
    """The action a write into a reactor's folder is (Recipe -> recipe_write, Twin -> twin_parameters);
    other folders are not writable."""
    try:
        return _WRITE_ACTIONS[folder]
    except KeyError:
        raise ParameterError("folder", folder, f"is not writable (writable: {', '.join(_WRITE_ACTIONS)})") from None


# -- password hashing ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ScryptParams:
    """scrypt cost: n (CPU/memory cost, a power of 2 > 1), r (block size), p (parallelism), dklen [bytes].
    Memory per hash is about 128 * r * n bytes."""

    n: int
    r: int
    p: int
    dklen: int = 32

    def __post_init__(self) -> None:
        for name in ("n", "r", "p", "dklen"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int):
                raise ParameterTypeError(f"scrypt.{name}", v, "an int")
        if self.n < 2 or self.n & (self.n - 1) or self.n > 2 ** 20:
            raise ParameterError("scrypt.n", self.n, "must be a power of 2 in [2, 2**20]")
        if not 1 <= self.r <= 32 or not 1 <= self.p <= 16:
            raise ParameterError("scrypt.r/p", (self.r, self.p), "must be r in [1, 32], p in [1, 16]")
        if not 16 <= self.dklen <= 64:
            raise ParameterError("scrypt.dklen", self.dklen, "must be in [16, 64] bytes")

    def derive(self, password: bytes, salt: bytes) -> bytes:
        # maxmem: OpenSSL's default (32 MiB) is just below what n=2**15, r=8 needs.
        return hashlib.scrypt(password, salt=salt, n=self.n, r=self.r, p=self.p, dklen=self.dklen,
                              maxmem=256 * self.r * self.n + (1 << 20))


DEFAULT_KDF = ScryptParams(n=2 ** 15, r=8, p=3)
"""The parameters of every new hash (see the module docstring for why)."""

TEST_ONLY_KDF = ScryptParams(n=2 ** 4, r=8, p=1)
"""Cheap parameters for tests, passed explicitly; never for a real user file."""

SALT_BYTES = 16
MIN_PASSWORD_CHARS = 8
MAX_PASSWORD_CHARS = 1024
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def _password_bytes(password: object) -> bytes:
    if not isinstance(password, str):
        raise ParameterTypeError("password", "<hidden>", "a str")
    # NFC: the same password typed on two keyboards (composed or decomposed accents) is the same password.
    pw = unicodedata.normalize("NFC", password)
    if len(pw) < MIN_PASSWORD_CHARS:
        raise ParameterError("password", "<hidden>", f"must be at least {MIN_PASSWORD_CHARS} characters")
    if len(pw) > MAX_PASSWORD_CHARS:
        raise ParameterError("password", "<hidden>", f"must be at most {MAX_PASSWORD_CHARS} characters")
    if "\x00" in pw or "\n" in pw or "\r" in pw:
        raise ParameterError("password", "<hidden>", "must not contain NUL or line breaks")
    try:
        return pw.encode("utf-8")
    except UnicodeEncodeError:
        raise ParameterError("password", "<hidden>", "is not valid Unicode") from None


def check_name(name: object) -> str:
    """A user name: 1..64 letters, digits, '.', '_' or '-', starting with a letter or digit."""
    if not isinstance(name, str):
        raise ParameterTypeError("name", name, "a str")
    if not _NAME.fullmatch(name):
        raise ParameterError("name", name, "must be 1..64 letters, digits, '.', '_' or '-', starting with a "
                                           "letter or digit")
    return name


def _b64(b: bytes) -> str:
    return base64.b64encode(b).decode("ascii")


def _now_text() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True)
class User:
    """One user as stored: name, role, enabled, created/changed (UTC ISO 8601) and the password hash
    (``password``: scheme, parameters, salt and hash; never the password; left out of repr)."""

    name: str
    role: Role
    enabled: bool
    created: str
    changed: str
    password: dict

    def __repr__(self) -> str:
        return f"User({self.name!r}, {self.role}, {'enabled' if self.enabled else 'disabled'})"

    def to_json(self) -> dict:
        return {"role": str(self.role), "enabled": self.enabled, "created": self.created, "changed": self.changed,
                "password": self.password}


def hash_password(password: str, kdf: ScryptParams = DEFAULT_KDF) -> dict:
    """The stored form of a password: ``{"scheme": "scrypt", "n", "r", "p", "salt", "hash"}`` (base64)."""
    salt = secrets.token_bytes(SALT_BYTES)
    return {"scheme": "scrypt", "n": kdf.n, "r": kdf.r, "p": kdf.p, "salt": _b64(salt),
            "hash": _b64(kdf.derive(_password_bytes(password), salt))}


def check_password(stored: dict, password: str) -> bool:
    """Whether ``password`` matches a stored hash (constant-time comparison). A password that breaks the
    password rules simply does not match."""
    try:
        pw = _password_bytes(password)
    except (ParameterError, ParameterTypeError):
        return False
    salt, expected = base64.b64decode(stored["salt"]), base64.b64decode(stored["hash"])
    kdf = ScryptParams(n=stored["n"], r=stored["r"], p=stored["p"], dklen=len(expected))
    return hmac.compare_digest(kdf.derive(pw, salt), expected)


class UserStoreError(TwinError):
    """The user file cannot be read, is malformed, or cannot be written."""


_USER_KEYS = {"role", "enabled", "created", "changed", "password"}
_PASSWORD_KEYS = {"scheme", "n", "r", "p", "salt", "hash"}


def _user_from_json(name: str, data: object, source: str) -> User:
    where = f"{source}: users.{name}"
    if not isinstance(data, dict):
        raise UserStoreError(f"{where}: expected a table")
    unknown, missing = set(data) - _USER_KEYS, _USER_KEYS - set(data)
    if unknown or missing:
        raise UserStoreError(f"{where}: " + "; ".join(
            ([f"unknown keys {sorted(unknown)}"] if unknown else []) + ([f"missing keys {sorted(missing)}"] if missing else [])))
    pw = data["password"]
    if not isinstance(pw, dict) or set(pw) != _PASSWORD_KEYS or pw["scheme"] != "scrypt":
        raise UserStoreError(f"{where}.password: expected a scrypt hash with keys {sorted(_PASSWORD_KEYS)}")
    if not isinstance(data["enabled"], bool):
        raise UserStoreError(f"{where}.enabled: expected true or false")
    try:
        check_name(name)
        role = Role.parse(data["role"])
        ScryptParams(n=pw["n"], r=pw["r"], p=pw["p"])
        for key in ("salt", "hash"):
            base64.b64decode(pw[key], validate=True)
    except (ParameterError, ParameterTypeError, ValueError, TypeError) as exc:
        raise UserStoreError(f"{where}: {exc}") from None
    return User(name, role, data["enabled"], str(data["created"]), str(data["changed"]), pw)


class UserStore:
    """The user file (JSON: ``{"format": 1, "users": {NAME: {...}}}``).

    path: the file (created on the first :meth:`add`); kdf: scrypt parameters of new hashes (default
    :data:`DEFAULT_KDF`; tests pass :data:`TEST_ONLY_KDF`). Every call reads the file afresh, so a change
    made by ``twin users`` is seen by a running server at its next login. The constructor does no I/O.
    """

    def __init__(self, path: str | Path, *, kdf: ScryptParams = DEFAULT_KDF) -> None:
        if not isinstance(kdf, ScryptParams):
            raise ParameterTypeError("kdf", kdf, "ScryptParams")
        self.path = Path(path)
        self.kdf = kdf
        self._dummy: dict | None = None

    def _load(self) -> dict[str, User]:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise UserStoreError(f"{self.path}: cannot read: {exc.strerror or exc}") from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise UserStoreError(f"{self.path}: not JSON ({exc})") from None
        if not isinstance(data, dict) or set(data) != {"format", "users"} or not isinstance(data["users"], dict):
            raise UserStoreError(f"{self.path}: expected {{\"format\": {FILE_FORMAT}, \"users\": {{...}}}}")
        if data["format"] != FILE_FORMAT:
            raise UserStoreError(f"{self.path}: format {data['format']!r}, this version reads {FILE_FORMAT}")
        return {name: _user_from_json(name, u, str(self.path)) for name, u in data["users"].items()}

    def _save(self, users: dict[str, User]) -> None:
        text = json.dumps({"format": FILE_FORMAT, "users": {n: u.to_json() for n, u in sorted(users.items())}},
                          indent=2) + "\n"
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
            if hasattr(os, "O_DIRECTORY"):
                # The rename itself must reach the disk, or a power cut could bring the old file back.
                dfd = os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY)
                try:
                    os.fsync(dfd)
                finally:
                    os.close(dfd)
        finally:
            tmp.unlink(missing_ok=True)

    @contextmanager
    def _locked(self) -> Iterator[dict[str, User]]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_name(self.path.name + ".lock"), "a") as lock:
            try:
                import fcntl
            except ImportError:  # not POSIX: no inter-process lock (one administrator at a time)
                fcntl = None  # type: ignore[assignment]
            if fcntl is not None:
                fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            yield self._load()

    # -- queries -----------------------------------------------------------------------------------------
    def list(self) -> list[User]:
        """Every user, by name."""
        return sorted(self._load().values(), key=lambda u: u.name)

    def get(self, name: str) -> User | None:
        return self._load().get(check_name(name))

    # -- changes ------------------------------------------------------------------------------------------
    def add(self, name: str, role: Role | str, password: str) -> User:
        """Add an enabled user; refuses a name that exists (disabled users keep their name: the audit trail
        refers to them)."""
        name, role = check_name(name), Role.parse(role)
        pw = hash_password(password, self.kdf)
        with self._locked() as users:
            if name in users:
                raise ParameterError("name", name, "already exists" + ("" if users[name].enabled else " (disabled)"))
            now = _now_text()
            users[name] = User(name, role, True, now, now, pw)
            self._save(users)
        return users[name]

    def disable(self, name: str) -> User:
        """Disable a user (it can no longer log in; its records stay attributable)."""
        name = check_name(name)
        with self._locked() as users:
            if name not in users:
                raise ParameterError("name", name, "no such user")
            if not users[name].enabled:
                raise ParameterError("name", name, "is already disabled")
            users[name] = replace(users[name], enabled=False, changed=_now_text())
            self._save(users)
        return users[name]

    def verify(self, name: str, password: str) -> tuple[User | None, str]:
        """(user, "") when the password is right and the user enabled, else (user or None, why): "unknown
        user", "wrong password" or "user disabled". The why is for the audit trail, not for the client."""
        try:
            user = self._load().get(check_name(name))
        except (ParameterError, ParameterTypeError):
            user = None
        if user is None:
            # An unknown user costs what a known one does: no user enumeration by timing.
            if self._dummy is None:
                self._dummy = hash_password("not-a-password-" + secrets.token_hex(8), self.kdf)
            check_password(self._dummy, password)
            return None, "unknown user"
        if not check_password(user.password, password):
            return user, "wrong password"
        if not user.enabled:
            return user, "user disabled"
        return user, ""


# -- logins ------------------------------------------------------------------------------------------

class LoginThrottle:
    """Failed logins per client: after ``max_failures`` failures within ``window_s`` the client is locked
    out for ``lockout_s`` (its attempts then are refused unchecked and do not extend the lockout). A
    success clears the client's failures. Times come from ``clock`` [s] (default WallClock; tests pass a
    ManualClock). At most ``max_clients`` are tracked (stale ones are forgotten first), so a flood of
    addresses cannot grow it without bound."""

    def __init__(self, *, max_failures: int = 5, window_s: float = 60.0, lockout_s: float = 300.0,
                 clock: Clock | None = None, max_clients: int = 10_000) -> None:
        if isinstance(max_failures, bool) or not isinstance(max_failures, int) or max_failures < 1:
            raise ParameterError("max_failures", max_failures, "must be an int >= 1")
        for name, v in (("window_s", window_s), ("lockout_s", lockout_s)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 < v < float("inf"):
                raise ParameterError(name, v, "must be a finite number > 0 [s]")
        if isinstance(max_clients, bool) or not isinstance(max_clients, int) or max_clients < 1:
            raise ParameterError("max_clients", max_clients, "must be an int >= 1")
        self.max_failures, self.window_s, self.lockout_s = max_failures, float(window_s), float(lockout_s)
        self.max_clients = max_clients
        self.clock = clock if clock is not None else WallClock()
        self._failures: dict[str, deque[float]] = {}
        self._locked_until: dict[str, float] = {}
        self._lock = threading.Lock()  # logins are checked on worker threads

    def retry_after_s(self, client: str) -> float:
        """Seconds until ``client`` may try again (0: now)."""
        with self._lock:
            return max(0.0, self._locked_until.get(client, 0.0) - self.clock.now())

    def failed(self, client: str) -> float:
        """Count a failure; returns the lockout it starts [s] (0 when none)."""
        with self._lock:
            return self._failed(client)

    def _failed(self, client: str) -> float:
        now = self.clock.now()
        q = self._failures.setdefault(client, deque())
        q.append(now)
        while q and q[0] <= now - self.window_s:
            q.popleft()
        started = 0.0
        if len(q) >= self.max_failures:
            self._locked_until[client] = now + self.lockout_s
            q.clear()
            started = self.lockout_s
        self._prune(now)
        return started

    def succeeded(self, client: str) -> None:
        with self._lock:
            self._failures.pop(client, None)

    def _prune(self, now: float) -> None:
        if len(self._failures) + len(self._locked_until) <= self.max_clients:
            return
        for c in [c for c, t in self._locked_until.items() if t <= now]:
            del self._locked_until[c]
        for c in [c for c, q in self._failures.items() if not q or q[-1] <= now - self.window_s]:
            del self._failures[c]
        while len(self._failures) + len(self._locked_until) > self.max_clients and self._failures:
            del self._failures[next(iter(self._failures))]  # oldest first (insertion order)


@dataclass(frozen=True)
class LoginDecision:
    """The outcome of one login: ``ok``; ``user`` (the name tried) and ``role`` ("" unless it succeeded);
    ``action`` (login, login_failed or login_throttled: the audit trail's); ``detail`` (why, for the audit
    trail: unknown user, wrong password, user disabled, throttled ...); ``retry_after_s`` (while throttled);
    ``client`` and ``cert_thumbprint`` as the server gave them. Tell the client only :attr:`client_message`,
    which does not say whether the user exists."""

    ok: bool
    user: str
    role: str
    action: str
    detail: str
    client: str
    cert_thumbprint: str = ""
    retry_after_s: float = 0.0

    @property
    def client_message(self) -> str:
        if self.ok:
            return "logged in"
        if self.action == "login_throttled":
            return f"too many failed logins: try again in {self.retry_after_s:.0f} s"
        return "login refused: unknown user, wrong password or disabled account"

    def audit_fields(self) -> dict[str, object]:
        """Keyword arguments of :meth:`gateways.audit.AuditTrail.append` recording this decision."""
        return {"user": self.user or "<empty>", "role": self.role, "cert_thumbprint": self.cert_thumbprint,
                "action": self.action, "target": self.client, "outcome": ("success" if self.ok else "refused" if self.action == "login_throttled" else "failure"),
                "detail": self.detail}


class Authenticator:
    """Logins against a :class:`UserStore`, throttled per client by a :class:`LoginThrottle`.

    ``login`` hashes (tenths of a second with the default parameters): the server calls it off the event
    loop, on one login thread (which also caps scrypt's memory at 32 MiB): attempts of one client checked
    in parallel could all pass the throttle before their failures are counted."""

    def __init__(self, store: UserStore, throttle: LoginThrottle | None = None) -> None:
        self.store = store
        self.throttle = throttle if throttle is not None else LoginThrottle()

    def login(self, name: str, password: str, client: str, cert_thumbprint: str = "") -> LoginDecision:
        """Check one login from ``client`` (the peer's address, or whatever identifies the client)."""
        if not isinstance(client, str) or not client:
            raise ParameterError("client", client, "must be a non-empty str (the peer that asks)")
        shown = name if isinstance(name, str) else repr(name)

        def decision(ok: bool, action: str, detail: str, role: str = "", retry: float = 0.0) -> LoginDecision:
            return LoginDecision(ok, shown, role, action, detail, client, cert_thumbprint, retry)

        wait = self.throttle.retry_after_s(client)
        if wait > 0.0:
            return decision(False, "login_throttled", f"client throttled after {self.throttle.max_failures} failed "
                                                      f"logins: refused unchecked, {wait:.0f} s left", retry=wait)
        user, why = self.store.verify(name, password)
        if not why and user is not None:
            self.throttle.succeeded(client)
            return decision(True, "login", "", role=str(user.role))
        lockout = self.throttle.failed(client)
        if lockout:
            why += (f"; {self.throttle.max_failures} failures within {self.throttle.window_s:g} s: client "
                    f"throttled for {lockout:g} s")
        return decision(False, "login_failed", why, retry=lockout)
