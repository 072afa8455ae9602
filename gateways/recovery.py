"""Crash recovery of the runtime: every reactor's twin checkpointed to SQLite, restored at start.

What a checkpoint of one reactor holds (:class:`ReactorCheckpoint`): the FMU's own serialized state
(fmi2SerializeFMUstate through FMPy; the FMU declares canSerializeFMUstate, and its state embeds the
soft sensor's estimator checkpoint, twin_core.estimation.checkpoint, so the restored FMU continues
bit-identically), the last PLC scan the twin processed (plant time, batch id, batch time) and the
runtime's own state of that reactor (the LIMS lab queue, the last lab sequence number, counters,
tuning writes, which events were already raised). Each row is tagged with the checkpoint format
version, the FMU's GUID and a SHA-256 over all of it (the FMU state is stored zlib-compressed; the
checksum covers it uncompressed).

The store (``data_dir``/checkpoint.sqlite) is written in WAL mode, every batch of rows in one
transaction, so a SIGKILL at any moment leaves either the previous or the new checkpoint, never half
of one. At start, :meth:`CheckpointStore.load` returns a reactor's checkpoint only if every check
passes; otherwise a :class:`CheckpointRejected` names what is wrong (not a database, a malformed or
truncated file, a checksum mismatch, another format version, another FMU build) and the runtime starts
that reactor's twin afresh from the batch's charge. A file that is not a readable database is moved
aside (``checkpoint.sqlite.rejected-<UTC>``) so new checkpoints can be written. A write that fails
(disk full, read-only folder) raises :class:`CheckpointWriteError`; the runtime keeps serving live
values and flags it (``checkpoint_state`` FAILING).
"""

from __future__ import annotations

import contextlib
import enum
import hashlib
import json
import logging
import math
import sqlite3
import threading
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from twin_core.errors import TwinError

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT_VERSION = 1
"""Version of the checkpoint rows (the layout of ReactorCheckpoint and of its ``runtime`` mapping)."""
CHECKPOINT_FILE = "checkpoint.sqlite"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS checkpoint (
    reactor      TEXT PRIMARY KEY,
    version      INTEGER NOT NULL,
    fmu_guid     TEXT NOT NULL,
    saved_utc    TEXT NOT NULL,
    plant_time_s REAL NOT NULL,
    runtime      TEXT NOT NULL,
    fmu_state    BLOB,
    sha256       TEXT NOT NULL
)
"""


class CheckpointState(enum.IntEnum):
    """``checkpoint_state`` of a reactor (published over OPC UA, in the status line)."""

    WRITTEN = 0    # the last checkpoint was written
    NONE_YET = 1   # none written yet (or checkpoints off)
    FAILING = 2    # the last write failed (disk full, read-only folder): no crash recovery now
    REJECTED = 3   # the stored checkpoint was rejected at start; the twin restarted from the charge


class CheckpointRejected(TwinError, ValueError):
    """A stored checkpoint that must not be restored; ``reason`` says why."""

    def __init__(self, where: str, reason: str) -> None:
        self.where, self.reason = where, reason
        super().__init__(f"checkpoint {where}: {reason}")


class CheckpointWriteError(TwinError, OSError):
    """Checkpoints could not be written (the SQLite error names the cause: disk full, read-only ...)."""


@dataclass(frozen=True)
class ReactorCheckpoint:
    """One reactor's checkpoint (SI units).

    plant_time_s: plant time of the last PLC scan the twin processed; batch_id / batch_time_s: the
    batch the twin tracks and the batch time it has reached (-1 / NaN: none); runtime: the runtime's
    state of the reactor as JSON-ready data; fmu_state: the FMU's serialized state (None: no twin
    running, e.g. between batches).
    """

    reactor: str
    fmu_guid: str
    plant_time_s: float
    batch_id: int
    batch_time_s: float
    runtime: dict
    fmu_state: bytes | None
    saved_utc: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="milliseconds"))
    version: int = CHECKPOINT_FORMAT_VERSION

    def runtime_text(self) -> str:
        # NaN is legal here (Python's json reads it back); sort_keys: one text for one content.
        return json.dumps({"batch_id": self.batch_id, "batch_time_s": self.batch_time_s, **self.runtime},
                          sort_keys=True, separators=(",", ":"))

    def digest(self) -> str:
        return checksum(self.reactor, self.version, self.fmu_guid, self.saved_utc, self.plant_time_s,
                        self.runtime_text(), self.fmu_state)


def checksum(reactor: str, version: int, fmu_guid: str, saved_utc: str, plant_time_s: float, runtime: str,
             fmu_state: bytes | None) -> str:
    """SHA-256 over every column of a row (length-prefixed, so no two rows share a byte string)."""
    h = hashlib.sha256()
    for part in (reactor.encode(), str(version).encode(), fmu_guid.encode(), saved_utc.encode(),
                 repr(float(plant_time_s)).encode(), runtime.encode(), b"\x00none" if fmu_state is None else fmu_state):
        h.update(len(part).to_bytes(8, "big"))
        h.update(part)
    return h.hexdigest()


class CheckpointStore:
    """The checkpoint file of one runtime. The constructor does no I/O; :meth:`open` opens or creates
    it (a file that is not a readable database is moved aside and reported), :meth:`save` writes rows
    in one transaction, :meth:`load` reads and checks one reactor's row, :meth:`close`.

    Thread-safe (one lock): the runtime writes from a worker thread, off its event loop.
    max_pages: SQLite's page limit for the file (None: none). A file at its limit fails a write the
    way a full disk does (SQLITE_FULL), which is how the tests exercise that path.
    """

    def __init__(self, path: str | Path, *, max_pages: int | None = None) -> None:
        self.path = Path(path)
        self.max_pages = max_pages
        self._db: sqlite3.Connection | None = None
        self._lock = threading.Lock()
        self.problems: list[CheckpointRejected] = []
        """What :meth:`open` found wrong with the file (then moved aside)."""

    # -- life cycle ---------------------------------------------------------------------------------
    def open(self) -> CheckpointStore:
        """Open (or create) the file; CheckpointWriteError when the folder cannot hold it."""
        with self._lock:
            if self._db is not None:
                return self
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise CheckpointWriteError(f"checkpoint folder {self.path.parent}: {exc}") from exc
            try:
                self._db = self._connect()
            except sqlite3.DatabaseError as exc:
                if not self.path.exists() or isinstance(exc, sqlite3.OperationalError) and \
                        "unable to open" in str(exc):
                    raise CheckpointWriteError(f"checkpoint file {self.path}: {exc}") from exc
                self.problems.append(CheckpointRejected(str(self.path), f"not a readable checkpoint database: {exc}"))
                self._move_aside()
                try:
                    self._db = self._connect()
                except sqlite3.DatabaseError as exc2:
                    raise CheckpointWriteError(f"checkpoint file {self.path}: {exc2}") from exc2
            return self

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=5.0)
        try:
            # quick_check reads every page: a flipped byte in the b-tree or a truncated file shows here.
            rows = db.execute("PRAGMA quick_check").fetchall()
            if rows != [("ok",)]:
                raise sqlite3.DatabaseError(f"integrity check: {'; '.join(str(r[0]) for r in rows[:3])}")
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: a crash of the process loses nothing
            if self.max_pages is not None:
                db.execute(f"PRAGMA max_page_count={int(self.max_pages)}")
            db.execute(_SCHEMA)
        except BaseException:
            db.close()
            raise
        return db

    def _move_aside(self) -> None:
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        for suffix in ("", "-wal", "-shm"):
            src = Path(f"{self.path}{suffix}")
            if src.exists():
                with contextlib.suppress(OSError):
                    src.replace(Path(f"{self.path}.rejected-{stamp}{suffix}"))

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                with contextlib.suppress(sqlite3.Error):
                    self._db.close()
                self._db = None

    def __enter__(self) -> CheckpointStore:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- rows ---------------------------------------------------------------------------------------
    def save(self, checkpoints: Sequence[ReactorCheckpoint]) -> None:
        """Write ``checkpoints`` (replacing each reactor's previous one) in one transaction."""
        if not checkpoints:
            return
        with self._lock:
            db = self._db
            if db is None:
                raise CheckpointWriteError("the checkpoint store is not open")
            try:
                db.execute("BEGIN IMMEDIATE")
                try:
                    db.executemany(
                        "INSERT OR REPLACE INTO checkpoint VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                        [(c.reactor, c.version, c.fmu_guid, c.saved_utc, c.plant_time_s, c.runtime_text(),
                          None if c.fmu_state is None else sqlite3.Binary(zlib.compress(c.fmu_state, 1)), c.digest())
                         for c in checkpoints])
                    db.execute("COMMIT")
                except BaseException:
                    with contextlib.suppress(sqlite3.Error):
                        db.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:
                raise CheckpointWriteError(f"{len(checkpoints)} checkpoint(s) not written to {self.path}: {exc}") from exc

    def reactors(self) -> list[str]:
        with self._lock:
            if self._db is None:
                return []
            return [r[0] for r in self._db.execute("SELECT reactor FROM checkpoint ORDER BY reactor")]

    def load(self, reactor: str, fmu_guid: str) -> ReactorCheckpoint | None:
        """``reactor``'s checkpoint (None: there is none); CheckpointRejected when it fails a check
        (malformed, checksum, another format version, another FMU GUID)."""
        where = f"{self.path} reactor {reactor}"
        with self._lock:
            if self._db is None:
                raise CheckpointWriteError("the checkpoint store is not open")
            try:
                row = self._db.execute("SELECT * FROM checkpoint WHERE reactor = ?", (reactor,)).fetchone()
            except sqlite3.DatabaseError as exc:
                raise CheckpointRejected(where, f"unreadable: {exc}") from exc
        if row is None:
            return None
        try:
            name, version, guid, saved, plant_time, runtime_text, blob, digest = row
        except ValueError as exc:
            raise CheckpointRejected(where, f"a row of {len(row)} columns, expected 8") from exc
        if not isinstance(runtime_text, str) or not isinstance(saved, str) or not isinstance(guid, str):
            raise CheckpointRejected(where, "a column has the wrong type")
        if blob is not None:
            try:
                blob = zlib.decompress(bytes(blob))
            except zlib.error as exc:
                raise CheckpointRejected(where, f"the FMU state does not decompress: {exc}") from exc
        try:
            expected = checksum(name, int(version), guid, saved, float(plant_time), runtime_text, blob)
        except (TypeError, ValueError) as exc:
            raise CheckpointRejected(where, f"a column has the wrong type: {exc}") from exc
        if expected != digest:
            raise CheckpointRejected(where, "checksum mismatch: the row was altered or damaged")
        if version != CHECKPOINT_FORMAT_VERSION:
            raise CheckpointRejected(where, f"format version {version}; this runtime reads version "
                                            f"{CHECKPOINT_FORMAT_VERSION}")
        if guid != fmu_guid:
            raise CheckpointRejected(where, f"written by another FMU build (GUID {guid}); this FMU is {fmu_guid}")
        try:
            runtime = json.loads(runtime_text)
            batch_id, batch_time = int(runtime.pop("batch_id")), float(runtime.pop("batch_time_s"))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise CheckpointRejected(where, f"runtime state unreadable: {exc!r}") from exc
        if not math.isfinite(float(plant_time)):
            raise CheckpointRejected(where, f"plant time {plant_time!r} is not finite")
        return ReactorCheckpoint(name, guid, float(plant_time), batch_id, batch_time, runtime, blob, saved, version)
