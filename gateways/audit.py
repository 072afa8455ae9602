"""The audit trail (21 CFR Part 11 style, ALCOA+): who did what, when, to which node, and why.

An append-only, hash-chained table in SQLite (WAL). Every record holds, in this order
(:data:`FIELDS`)::

    seq              1, 2, 3, ... without gaps (assigned by the trail)
    ts               UTC time of the append, ISO 8601 with microseconds and 'Z': 2026-12-01T10:44:37.123456Z
                     (assigned by the trail; non-decreasing along the sequence)
    user             who acted ("anonymous" for an anonymous session; the name tried for a failed login)
    role             the user's role then ("" when unknown, e.g. a failed login)
    cert_thumbprint  the client certificate's thumbprint (hex), "" without one
    action           what was attempted (:data:`ACTIONS`)
    target           the node or object acted on: "<plant>.<reactor>.<Folder>.<signal>" for a write,
                     "<plant>.<reactor>.<Method>" for a method, the client for a login, "user:NAME"...
    old_value        the value before ("" when none), as text (:func:`value_text`)
    new_value        the value asked for ("" when none), as text
    outcome          "success", "failure" (attempted and failed, e.g. the PLC refused) or "refused"
                     (denied before it was attempted: permission, missing reason, throttling)
    reason           the meaning of the electronic signature, as the user gave it; required (non-blank)
                     for the critical actions (:func:`requires_reason`) unless the outcome is "refused"
    detail           the system's explanation of the outcome ("wrong password", the PLC's refusal...)
    prev_hash        the previous record's hash (64 '0' for record 1)
    hash             SHA-256 (lowercase hex) of the canonical encoding of all the fields above

**Canonical encoding** (:func:`canonical_bytes`): the record's fields except ``hash`` as one JSON object
-- ``seq`` a JSON integer, every other field a JSON string -- with keys sorted, separators ``,`` and
``:`` (no whitespace) and non-ASCII characters escaped (``ensure_ascii``: ``\\u00e9``, lowercase hex,
surrogate pairs above U+FFFF); that text is ASCII, and its bytes are hashed. Because ``prev_hash`` is
one of the encoded fields, each hash covers the whole history before it. Values are stored as text
(:func:`value_text`): numbers are formatted before they are hashed (an int in decimal, a float as
Python's shortest round-trip ``repr``: ``0.1``, ``1e-05``, ``nan``, ``inf``; ``true``/``false``;
``None`` as ""), so the encoding never depends on a float formatter.

Append-only: the API has no update or delete, and SQLite triggers refuse UPDATE and DELETE on the table.
Whoever can write the file can drop the triggers; :meth:`AuditTrail.verify` then finds the first broken
record: a hash that does not match its fields (an edit), a ``prev_hash`` that is not the previous
record's hash (a deletion, an insertion, a reordering), a gap in the sequence, or a timestamp earlier
than its predecessor's. A chain without a key cannot detect a rewrite of the whole tail after the
tampered record or a cut-off tail: keep the head (``seq`` and ``hash`` that verify prints) somewhere
else and pass it back as ``anchor``.

Concurrency: :class:`AuditTrail` is synchronous (one connection behind a lock; each append is one
``BEGIN IMMEDIATE`` transaction, so several processes appending to one file -- the server and
``twin users`` -- still get one gap-free chain). :class:`AsyncAuditTrail` runs it on a single writer
thread of its own (see its docstring for why not ``asyncio.to_thread``).
"""

from __future__ import annotations

import asyncio
import csv
import hashlib
import json
import logging
import math
import os
import sqlite3
import threading
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from twin_core.clock import Clock, WallClock
from twin_core.errors import ParameterError, ParameterTypeError, TwinError

log = logging.getLogger(__name__)

__all__ = ["ACTIONS", "CRITICAL_METHODS", "FIELDS", "GENESIS_HASH", "OUTCOMES", "AsyncAuditTrail", "AuditError",
           "AuditRecord", "AuditTrail", "Broken", "ReasonRequired", "VerifyResult", "canonical_bytes",
           "format_ts", "parse_since", "record_hash", "requires_reason", "value_text"]

FORMAT_VERSION = 1
"""Schema and canonical-encoding version (SQLite ``PRAGMA user_version``)."""

ACTIONS = ("write", "method", "login", "login_failed", "login_throttled", "logout", "config_change",
           "user_change", "certificate_change", "refused")
"""What a record says was attempted. ``refused``: a request refused that is none of the others (an
untrusted certificate, an anonymous session where anonymous is off); a refused write or method keeps its
action and has the outcome ``refused``."""

OUTCOMES = ("success", "failure", "refused")

CRITICAL_METHODS = ("StartBatch", "Abort", "EnterLabResult", "SetTwinParameter")
"""Methods whose call needs a reason (the lab entry is ``EnterLabResult``; ``SetTwinParameter`` is how a
client changes the twin's parameters, recorded as a ``write`` of the Twin node it changes)."""

CRITICAL_WRITE_FOLDERS = ("Twin",)
"""Folders whose writes need a reason: the twin's parameters and tuning."""

GENESIS_HASH = "0" * 64
"""``prev_hash`` of record 1."""

FIELDS = ("seq", "ts", "user", "role", "cert_thumbprint", "action", "target", "old_value", "new_value",
          "outcome", "reason", "detail", "prev_hash", "hash")
"""Every field of a record, in storage, display and CSV order."""

_TEXT_INPUTS = ("user", "role", "cert_thumbprint", "target", "old_value", "new_value", "reason", "detail")
MAX_FIELD_CHARS = 1 << 20
"""Longest text field [characters]: a recipe's TOML fits many times over; a runaway value does not."""

_SCHEMA = """
CREATE TABLE audit (
    seq INTEGER PRIMARY KEY,
    ts TEXT NOT NULL,
    user TEXT NOT NULL,
    role TEXT NOT NULL,
    cert_thumbprint TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    old_value TEXT NOT NULL,
    new_value TEXT NOT NULL,
    outcome TEXT NOT NULL,
    reason TEXT NOT NULL,
    detail TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
);
CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit trail is append-only: UPDATE refused'); END;
CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit trail is append-only: DELETE refused'); END;
"""
TRIGGERS = ("audit_no_update", "audit_no_delete")
PAGE_RECORDS = 1000
"""Records read per query by show, export and verify."""


class AuditError(TwinError):
    """The audit trail cannot be opened or written, or failed verification."""


class ReasonRequired(ParameterError):
    """A critical action came without a reason (the meaning of its electronic signature)."""

    def __init__(self, action: str, target: str) -> None:
        super().__init__("reason", "", f"{action} on {target} is a critical action: a reason is required "
                                       "(the meaning of the signature)")


def value_text(value: object) -> str:
    """A value as the trail stores (and hashes) it: None -> "", str as is, bool -> true/false, int in
    decimal, float as its shortest round-trip repr (nan, inf, -inf included). Anything else: TypeError."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)
    raise ParameterTypeError("value", value, "None, str, bool, int or float")


def format_ts(t: datetime) -> str:
    """An aware datetime as the trail's timestamp: UTC, ISO 8601, microseconds, 'Z'."""
    if t.tzinfo is None:
        raise ParameterError("ts", t, "must be timezone-aware")
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_since(text: str | datetime) -> str:
    """A ``since`` bound (ISO 8601 text or datetime; naive means UTC: the whole trail is UTC) as a
    timestamp in the trail's format, so it compares as text."""
    if isinstance(text, datetime):
        t = text
    elif isinstance(text, str):
        try:
            t = datetime.fromisoformat(text.strip())
        except ValueError:
            raise ParameterError("since", text, "is not an ISO 8601 date or time (e.g. 2026-12-01T10:00:00Z)") from None
    else:
        raise ParameterTypeError("since", text, "an ISO 8601 string or datetime")
    return format_ts(t if t.tzinfo is not None else t.replace(tzinfo=UTC))


def requires_reason(action: str, target: str) -> bool:
    """Whether ``action`` on ``target`` is critical: a call of StartBatch, Abort, EnterLabResult or SetTwinParameter
    (``<plant>.<reactor>.<Method>``) or a write into a reactor's Twin folder
    (``<plant>.<reactor>.Twin.<signal>``)."""
    parts = target.split(".")
    if action == "method":
        return parts[-1] in CRITICAL_METHODS
    if action == "write":
        return len(parts) >= 2 and parts[-2] in CRITICAL_WRITE_FOLDERS
    return False


@dataclass(frozen=True)
class AuditRecord:
    """One record of the trail (fields: see the module docstring)."""

    seq: int
    ts: str
    user: str
    role: str
    cert_thumbprint: str
    action: str
    target: str
    old_value: str
    new_value: str
    outcome: str
    reason: str
    detail: str
    prev_hash: str
    hash: str

    def as_row(self) -> tuple:
        return tuple(getattr(self, f) for f in FIELDS)


def canonical_bytes(fields: Mapping[str, object]) -> bytes:
    """The canonical encoding of a record: every field of :data:`FIELDS` but ``hash`` as sorted-key,
    whitespace-free, ASCII-escaped JSON (seq an integer, the rest strings)."""
    obj = {f: fields[f] for f in FIELDS if f != "hash"}
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                      allow_nan=False).encode("ascii")


def record_hash(fields: Mapping[str, object]) -> str:
    """SHA-256 (lowercase hex) of :func:`canonical_bytes`."""
    return hashlib.sha256(canonical_bytes(fields)).hexdigest()


@dataclass(frozen=True)
class Broken:
    """The first broken record: its ``seq`` (as stored) and every problem found at it."""

    seq: int
    problems: tuple[str, ...]

    def __str__(self) -> str:
        return f"record {self.seq}: " + "; ".join(self.problems)


@dataclass(frozen=True)
class VerifyResult:
    """records: how many were checked (up to and including the broken one); head_seq/head_hash: the last
    record's (0 and GENESIS_HASH when empty); broken: None when the chain holds; triggers_present: both
    append-only triggers are still in the file (their absence alone is not a broken chain)."""

    records: int
    head_seq: int
    head_hash: str
    broken: Broken | None
    triggers_present: bool

    @property
    def ok(self) -> bool:
        return self.broken is None


def _check_text(name: str, value: object, *, required: bool = False) -> str:
    if not isinstance(value, str):
        raise ParameterTypeError(name, value, "a str")
    if required and not value.strip():
        raise ParameterError(name, value, "must not be empty")
    if "\x00" in value:
        raise ParameterError(name, value, "must not contain NUL characters")
    if len(value) > MAX_FIELD_CHARS:
        raise ParameterError(name, f"<{len(value)} characters>", f"longer than {MAX_FIELD_CHARS} characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ParameterError(name, value, "is not valid Unicode (lone surrogate)") from None
    return value


def _connect(path: Path) -> sqlite3.Connection:
    # isolation_level=None: transactions are explicit (BEGIN IMMEDIATE ... COMMIT), never implicit.
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=10.0)
    conn.execute("PRAGMA journal_mode=WAL")
    # FULL: an acknowledged record survives a power cut, not only a crash of the process (WAL + NORMAL
    # would lose the last transactions). An fsync per append is why appends leave the event loop.
    conn.execute("PRAGMA synchronous=FULL")
    return conn


class AuditTrail:
    """The trail in one SQLite file (synchronous; thread-safe).

    path: the SQLite file (created with its folder on :meth:`open`; ``create=False``: open an existing
    trail to read or verify it, and refuse a missing one);
    clock: the source of timestamps, seconds since the Unix epoch (default :class:`WallClock`: wall time
    advanced by the monotonic clock, so timestamps never go back within a process).

    The constructor does no I/O; :meth:`open` (or ``with AuditTrail(path) as trail``) opens the file.
    """

    def __init__(self, path: str | Path, *, clock: Clock | None = None, create: bool = True) -> None:
        self.path = Path(path)
        self._clock = clock if clock is not None else WallClock()
        self._create = create
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()

    # -- lifecycle -------------------------------------------------------------------------------
    def open(self) -> AuditTrail:
        if self._conn is not None:
            return self
        if not self.path.exists():
            if not self._create:
                raise AuditError(f"{self.path}: no audit trail here")
            self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            conn = _connect(self.path)
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        except sqlite3.DatabaseError as exc:
            raise AuditError(f"{self.path}: not an audit trail ({exc})") from None
        if version == 0 and not tables:
            # IF NOT EXISTS: two processes creating the same new file at once both end with one schema.
            conn.executescript("BEGIN IMMEDIATE;" + _SCHEMA.replace("CREATE TABLE", "CREATE TABLE IF NOT EXISTS")
                               .replace("CREATE TRIGGER", "CREATE TRIGGER IF NOT EXISTS")
                               + f"PRAGMA user_version={FORMAT_VERSION}; COMMIT;")
        elif version != FORMAT_VERSION or "audit" not in tables:
            conn.close()
            raise AuditError(f"{self.path}: not an audit trail of format {FORMAT_VERSION} "
                             f"(user_version {version}, tables {sorted(tables)})")
        self._conn = conn
        # A writer says so at once; a reader (create=False: verify, show) reports it in verify's result.
        if self._create and not self._triggers_present():
            log.warning("%s: the append-only triggers are missing (tampered with?); run twin audit verify",
                        self.path)
        return self

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def __enter__(self) -> AuditTrail:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise AuditError(f"{self.path}: the audit trail is not open (call open())")
        return self._conn

    def _triggers_present(self) -> bool:
        names = {r[0] for r in self._db.execute("SELECT name FROM sqlite_master WHERE type='trigger'")}
        return all(t in names for t in TRIGGERS)

    # -- writing ---------------------------------------------------------------------------------
    def append(self, *, user: str, action: str, target: str, outcome: str, role: str = "",
               cert_thumbprint: str = "", old_value: object = None, new_value: object = None,
               reason: str = "", detail: str = "") -> AuditRecord:
        """Append one record and return it (with its seq, timestamp and hash).

        Raises :class:`ReasonRequired` (a ParameterError) for a critical action (:func:`requires_reason`)
        whose outcome is not ``refused`` and whose reason is blank -- the caller then refuses the request
        and records that, with outcome ``refused``; ParameterError/ParameterTypeError for a bad field;
        AuditError when the file cannot be written (the caller should then not carry out the action).
        """
        if action not in ACTIONS:
            raise ParameterError("action", action, f"must be one of {', '.join(ACTIONS)}")
        if outcome not in OUTCOMES:
            raise ParameterError("outcome", outcome, f"must be one of {', '.join(OUTCOMES)}")
        fields: dict[str, object] = {"action": action, "outcome": outcome}
        for name, value in (("user", user), ("role", role), ("cert_thumbprint", cert_thumbprint),
                            ("target", target), ("old_value", value_text(old_value)),
                            ("new_value", value_text(new_value)), ("reason", reason), ("detail", detail)):
            fields[name] = _check_text(name, value, required=name in ("user", "target"))
        if outcome != "refused" and requires_reason(action, target) and not reason.strip():
            raise ReasonRequired(action, target)
        now_s = self._clock.now()
        if not math.isfinite(now_s):
            raise AuditError(f"clock reads {now_s!r}: no timestamp")
        ts = format_ts(datetime.fromtimestamp(now_s, UTC))
        with self._lock:
            db = self._db
            try:
                db.execute("BEGIN IMMEDIATE")
                try:
                    last = db.execute("SELECT seq, ts, hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
                    seq, prev_ts, prev_hash = last if last is not None else (0, "", GENESIS_HASH)
                    if ts < prev_ts:
                        # Another process's clock (or a stepped system clock after a restart) is ahead:
                        # keep the order the trail promises and say so, rather than lose the record.
                        log.warning("audit clock %s is before the last record's %s: stamped %s", ts, prev_ts,
                                    prev_ts)
                        ts = prev_ts
                    fields.update(seq=seq + 1, ts=ts, prev_hash=prev_hash)
                    fields["hash"] = record_hash(fields)
                    record = AuditRecord(**fields)  # type: ignore[arg-type]
                    db.execute(f"INSERT INTO audit ({', '.join(FIELDS)}) VALUES ({', '.join('?' * len(FIELDS))})",
                               record.as_row())
                    db.execute("COMMIT")
                except BaseException:
                    db.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:
                raise AuditError(f"{self.path}: cannot append to the audit trail: {exc}") from None
        return record

    # -- reading ---------------------------------------------------------------------------------
    def _records(self, clauses: tuple[str, ...] = (), params: tuple = ()) -> Iterator[AuditRecord]:
        # Page by seq: a long trail is never held in memory at once, and appends from other threads wait
        # for one page at a time, not for a whole verify.
        sql = (f"SELECT {', '.join(FIELDS)} FROM audit WHERE " + " AND ".join((*clauses, "seq > ?"))
               + f" ORDER BY seq LIMIT {PAGE_RECORDS}")
        after: int | float = -math.inf
        while True:
            with self._lock:
                rows = self._db.execute(sql, (*params, after)).fetchall()
            for row in rows:
                yield AuditRecord(*row)
            if len(rows) < PAGE_RECORDS:
                return
            after = rows[-1][0]

    def show(self, since: str | datetime | None = None, user: str | None = None) -> list[AuditRecord]:
        """The records in sequence order, those stamped at or after ``since`` (ISO 8601; naive = UTC) and
        by ``user`` when given."""
        clauses, params = [], []
        if since is not None:
            clauses.append("ts >= ?")
            params.append(parse_since(since))
        if user is not None:
            clauses.append("user = ?")
            params.append(_check_text("user", user, required=True))
        return list(self._records(tuple(clauses), tuple(params)))

    def export_csv(self, path: str | Path) -> int:
        """Write every record, every field (header :data:`FIELDS`, UTC timestamps), to a CSV file
        (UTF-8; written to a temporary file, then renamed). Returns the number of records."""
        path = Path(path)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        n = 0
        try:
            with open(tmp, "w", encoding="utf-8", newline="") as f:
                w = csv.writer(f)
                w.writerow(FIELDS)
                for rec in self._records():
                    w.writerow(rec.as_row())
                    n += 1
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        return n

    def verify(self, anchor: tuple[int, str] | None = None) -> VerifyResult:
        """Walk the chain from record 1 and return the first broken record, if any.

        anchor: a (seq, hash) recorded earlier (e.g. the head printed by a previous verify): the record
        with that seq must exist and carry that hash, which catches a cut-off tail or a rewritten chain.
        """
        expected_seq, prev_hash, prev_ts, n = 1, GENESIS_HASH, "", 0
        head = (0, GENESIS_HASH)
        anchor_seen = False
        for rec in self._records():
            n += 1
            problems = []
            if not isinstance(rec.seq, int):
                problems.append(f"sequence number {rec.seq!r} is not an integer")
            elif rec.seq != expected_seq:
                problems.append(f"gap in sequence: expected {expected_seq}, found {rec.seq}"
                                if rec.seq > expected_seq else f"sequence out of order: expected {expected_seq}")
            if rec.prev_hash != prev_hash:
                problems.append("chain broken: prev_hash is not the previous record's hash (a record before "
                                "it was deleted, inserted or changed)")
            try:
                actual = record_hash(asdict(rec))
            except (TypeError, ValueError) as exc:
                problems.append(f"fields cannot be encoded: {exc}")
            else:
                if actual != rec.hash:
                    problems.append(f"hash mismatch: its fields hash to {actual[:16]}..., stored {str(rec.hash)[:16]}... "
                                    "(the record was edited)")
            if isinstance(rec.ts, str) and rec.ts < prev_ts:
                problems.append(f"timestamps reordered: {rec.ts} is before the previous record's {prev_ts}")
            if anchor is not None and rec.seq == anchor[0]:
                anchor_seen = True
                if rec.hash != anchor[1]:
                    problems.append(f"does not match the anchor: hash {str(rec.hash)[:16]}..., anchor "
                                    f"{anchor[1][:16]}...")
            if problems:
                return VerifyResult(n, head[0], head[1], Broken(rec.seq, tuple(problems)), self._triggers_present())
            head = (rec.seq, rec.hash)
            expected_seq, prev_hash, prev_ts = rec.seq + 1, rec.hash, rec.ts
        broken = None
        if anchor is not None and not anchor_seen:
            broken = Broken(anchor[0], (f"missing: the anchor names record {anchor[0]}, the trail ends at "
                                        f"{head[0]} (records were cut off)",))
        return VerifyResult(n, head[0], head[1], broken, self._triggers_present())


class AsyncAuditTrail:
    """The trail for asyncio code: ``await trail.append(...)`` runs the synchronous append on one writer
    thread of its own, so the event loop never waits for SQLite's fsync.

    Why one dedicated thread rather than ``asyncio.to_thread``: SQLite has one writer at a time anyway, so
    more threads would only queue on the lock, and ``to_thread``'s shared pool would hand appends to
    whichever thread runs first -- records could land in another order than the coroutines asked for,
    and a burst of appends would occupy threads other work (FMU steps, history) needs. One thread keeps
    the submission order (FIFO) and costs one thread.

        async with AsyncAuditTrail(AuditTrail("var/audit.sqlite")) as trail:
            await trail.append(user="alice", role="operator", action="method", target="plant.R1.Abort",
                               outcome="success", reason="agitator fault")
    """

    def __init__(self, trail: AuditTrail) -> None:
        self.trail = trail
        self._executor: ThreadPoolExecutor | None = None

    async def start(self) -> AsyncAuditTrail:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="audit-writer")
        try:
            await self._run(self.trail.open)
        except BaseException:
            self._executor.shutdown(wait=False)
            self._executor = None
            raise
        return self

    async def stop(self) -> None:
        """Wait for the appends already queued, then close the file."""
        if self._executor is None:
            return
        await self._run(self.trail.close)
        self._executor.shutdown(wait=True)
        self._executor = None

    async def __aenter__(self) -> AsyncAuditTrail:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _run(self, fn: Callable, *args: object, **kwargs: object):  # noqa: ANN202
        if self._executor is None:
            raise AuditError("the async audit trail is not started (await start())")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, lambda: fn(*args, **kwargs))

    async def append(self, **fields: object) -> AuditRecord:
        """:meth:`AuditTrail.append` on the writer thread (same arguments, same errors)."""
        return await self._run(self.trail.append, **fields)

    async def verify(self, anchor: tuple[int, str] | None = None) -> VerifyResult:
        return await self._run(self.trail.verify, anchor)

    async def show(self, since: str | datetime | None = None, user: str | None = None) -> list[AuditRecord]:
        return await self._run(self.trail.show, since, user)
