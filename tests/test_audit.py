"""The audit trail (gateways/audit.py): record format, canonical encoding, append-only, tamper detection."""

from __future__ import annotations

import asyncio
import csv
import hashlib
import re
import sqlite3
from pathlib import Path

import pytest

from gateways.audit import (
    FIELDS,
    GENESIS_HASH,
    AsyncAuditTrail,
    AuditError,
    AuditTrail,
    ReasonRequired,
    record_hash,
    requires_reason,
    value_text,
)
from twin_core.clock import ManualClock
from twin_core.errors import ParameterError, ParameterTypeError

T0_S = 1_780_000_000.0  # 2026-05-28T20:26:40Z
TS = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z")


def _record(i: int) -> dict:
    return {"user": "alice", "role": "operator", "action": "write", "target": f"plant.R1.Recipe.T_set_{i}",
            "old_value": float(i), "new_value": float(i) + 0.5, "outcome": "success"}


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(t0_s=T0_S, dt_s=0.25)


@pytest.fixture
def trail(tmp_path: Path, clock: ManualClock):
    with AuditTrail(tmp_path / "audit.sqlite", clock=clock) as t:
        yield t


def _fill(trail: AuditTrail, clock: ManualClock, n: int = 5) -> None:
    for i in range(1, n + 1):
        trail.append(**_record(i))
        clock.step()


def _tamper(path: Path, *statements: tuple[str, tuple]) -> None:
    """What someone with write access to the file can do: drop the triggers, then edit."""
    conn = sqlite3.connect(path)
    conn.execute("DROP TRIGGER IF EXISTS audit_no_update")
    conn.execute("DROP TRIGGER IF EXISTS audit_no_delete")
    for sql, params in statements:
        conn.execute(sql, params)
    conn.commit()
    conn.close()


def _rows(path: Path) -> list[dict]:
    conn = sqlite3.connect(path)
    conn.row_factory = sqlite3.Row
    rows = [dict(r) for r in conn.execute("SELECT * FROM audit ORDER BY seq")]
    conn.close()
    return rows


def _rewrite_chain(path: Path, rows: list[dict]) -> None:
    """Replace the whole table by ``rows`` with every hash recomputed: a tamperer who knows the format."""
    prev = GENESIS_HASH
    for r in rows:
        r["prev_hash"] = prev
        r["hash"] = prev = record_hash(r)
    _tamper(path, ("DELETE FROM audit", ()),
            *((f"INSERT INTO audit ({', '.join(FIELDS)}) VALUES ({', '.join('?' * len(FIELDS))})",
               tuple(r[f] for f in FIELDS)) for r in rows))


# -- the record and its hash ------------------------------------------------------------------------

def test_hash_is_reproducible_from_the_documented_canonical_encoding(trail: AuditTrail) -> None:
    rec = trail.append(user="bob", role="engineer", cert_thumbprint="ab12", action="write",
                       target="plant.R1.Twin.sigma_lab", old_value=0.01, new_value=0.02, outcome="success",
                       reason="Kalibrierung Fühler", detail="")
    # The canonical encoding written out by hand from docs/security.md: sorted keys, no whitespace,
    # seq an integer, ASCII with \\u escapes, prev_hash of record 1 = 64 zeros, hash excluded.
    expected = ('{"action":"write","cert_thumbprint":"ab12","detail":"","new_value":"0.02","old_value":"0.01",'
                '"outcome":"success","prev_hash":"' + "0" * 64 + '","reason":"Kalibrierung F\\u00fchler",'
                '"role":"engineer","seq":1,"target":"plant.R1.Twin.sigma_lab","ts":"2026-05-28T20:26:40.000000Z",'
                '"user":"bob"}').encode("ascii")
    assert rec.hash == hashlib.sha256(expected).hexdigest()
    assert _rows(trail.path)[0]["hash"] == rec.hash
    # The next record chains on it.
    rec2 = trail.append(user="bob", action="logout", target="10.0.0.7:50000", outcome="success")
    assert rec2.prev_hash == rec.hash and rec2.seq == 2


def test_record_fields_and_timestamps(trail: AuditTrail, clock: ManualClock) -> None:
    clock.set(T0_S + 0.123456)
    rec = trail.append(user="alice", action="login", target="127.0.0.1:4000", outcome="success")
    assert rec.ts == "2026-05-28T20:26:40.123456Z"
    assert TS.fullmatch(rec.ts)
    assert tuple(_rows(trail.path)[0]) == FIELDS


@pytest.mark.parametrize(("value", "text"), [
    (None, ""), ("", ""), ("abc", "abc"), (True, "true"), (False, "false"), (0, "0"), (-12, "-12"),
    (0.1, "0.1"), (1e-05, "1e-05"), (70.0, "70.0"), (float("nan"), "nan"), (float("-inf"), "-inf"),
    (2 ** 70, "1180591620717411303424"),
])
def test_value_text(value: object, text: str) -> None:
    assert value_text(value) == text


@pytest.mark.parametrize(("action", "target", "critical"), [
    ("method", "plant.R1.StartBatch", True),
    ("method", "plant.R1.Abort", True),
    ("method", "plant.R1.EnterLabResult", True),
    ("write", "plant.R1.Twin.sigma_lab", True),
    ("method", "plant.R1.Hold", False),
    ("method", "plant.R1.AcknowledgeAlarms", False),
    ("write", "plant.R1.Recipe.T_set", False),
    ("login", "plant.R1.Abort", False),
])
def test_requires_reason(action: str, target: str, critical: bool) -> None:
    assert requires_reason(action, target) is critical


BAD_APPENDS = [
    ({"action": "delete"}, ParameterError, "action"),
    ({"outcome": "ok"}, ParameterError, "outcome"),
    ({"user": ""}, ParameterError, "user"),
    ({"user": "   "}, ParameterError, "user"),
    ({"target": ""}, ParameterError, "target"),
    ({"user": 7}, ParameterTypeError, "user"),
    ({"reason": None}, ParameterTypeError, "reason"),
    ({"detail": "a\x00b"}, ParameterError, "NUL"),
    ({"new_value": "\ud800"}, ParameterError, "surrogate"),
    ({"old_value": [1, 2]}, ParameterTypeError, "value"),
    ({"new_value": "x" * ((1 << 20) + 1)}, ParameterError, "longer than"),
    ({"action": "method", "target": "plant.R1.StartBatch"}, ReasonRequired, "reason is required"),
    ({"action": "method", "target": "plant.R1.Abort", "reason": "  "}, ReasonRequired, "reason is required"),
    ({"action": "method", "target": "plant.R1.EnterLabResult", "outcome": "failure"}, ReasonRequired, "reason"),
    ({"action": "write", "target": "plant.R1.Twin.sigma_lab"}, ReasonRequired, "reason is required"),
]


@pytest.mark.parametrize(("change", "error", "match"), BAD_APPENDS)
def test_bad_appends_are_refused_and_leave_nothing(trail: AuditTrail, change: dict, error: type, match: str) -> None:
    fields = {"user": "alice", "action": "write", "target": "plant.R1.Recipe.T_set", "outcome": "success", **change}
    with pytest.raises(error, match=match):
        trail.append(**fields)
    assert trail.show() == []


def test_a_refused_critical_action_is_recorded_without_a_reason(trail: AuditTrail) -> None:
    rec = trail.append(user="eve", role="engineer", action="method", target="plant.R1.StartBatch",
                       outcome="refused", detail="no reason given")
    assert rec.reason == "" and rec.outcome == "refused"
    assert trail.verify().ok


# -- append-only ------------------------------------------------------------------------------------

@pytest.mark.parametrize("sql", ["UPDATE audit SET new_value = '99' WHERE seq = 2", "DELETE FROM audit WHERE seq = 2",
                                 "DELETE FROM audit"])
def test_triggers_refuse_update_and_delete(trail: AuditTrail, clock: ManualClock, sql: str) -> None:
    _fill(trail, clock, 3)
    conn = sqlite3.connect(trail.path)
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        conn.execute(sql)
    conn.close()
    assert len(trail.show()) == 3
    assert trail.verify().triggers_present


def test_api_offers_no_update_or_delete() -> None:
    assert not [n for n in dir(AuditTrail) if re.search(r"update|delete|remove|edit|truncate|clear", n, re.I)]


# -- tampering: verify names the first broken record --------------------------------------------------

def _edit_value(path: Path) -> None:
    _tamper(path, ("UPDATE audit SET new_value = '99.0' WHERE seq = 3", ()))


def _edit_and_rehash_one(path: Path) -> None:
    r = _rows(path)[2]
    r["new_value"] = "99.0"
    _tamper(path, ("UPDATE audit SET new_value = ?, hash = ? WHERE seq = 3", (r["new_value"], record_hash(r))))


def _edit_timestamp(path: Path) -> None:
    _tamper(path, ("UPDATE audit SET ts = '2026-05-28T20:26:40.300000Z' WHERE seq = 2", ()))


def _delete_middle(path: Path) -> None:
    _tamper(path, ("DELETE FROM audit WHERE seq = 3", ()))


def _delete_first(path: Path) -> None:
    _tamper(path, ("DELETE FROM audit WHERE seq = 1", ()))


def _insert_middle(path: Path) -> None:
    """Renumber records 3.. up by one and slip a well-formed record (own hash right) in as 3."""
    rows = _rows(path)
    forged = {**rows[1], "seq": 3, "new_value": "120.0", "prev_hash": rows[1]["hash"]}
    forged["hash"] = record_hash(forged)
    _tamper(path, ("UPDATE audit SET seq = -seq WHERE seq >= 3", ()), ("UPDATE audit SET seq = 1 - seq WHERE seq < 0", ()),
            (f"INSERT INTO audit ({', '.join(FIELDS)}) VALUES ({', '.join('?' * len(FIELDS))})",
             tuple(forged[f] for f in FIELDS)))


def _insert_past_the_end(path: Path) -> None:
    last = _rows(path)[-1]
    forged = {**last, "seq": 9, "prev_hash": last["hash"]}
    forged["hash"] = record_hash(forged)
    _tamper(path, (f"INSERT INTO audit ({', '.join(FIELDS)}) VALUES ({', '.join('?' * len(FIELDS))})",
                   tuple(forged[f] for f in FIELDS)))


def _insert_at_the_end_with_a_made_up_hash(path: Path) -> None:
    last = _rows(path)[-1]
    forged = {**last, "seq": 6, "prev_hash": last["hash"], "hash": "f" * 64}
    _tamper(path, (f"INSERT INTO audit ({', '.join(FIELDS)}) VALUES ({', '.join('?' * len(FIELDS))})",
                   tuple(forged[f] for f in FIELDS)))


def _swap_two(path: Path) -> None:
    """Reorder: records 2 and 3 exchange places (each keeps its own fields and hash)."""
    _tamper(path, ("UPDATE audit SET seq = 0 WHERE seq = 2", ()), ("UPDATE audit SET seq = 2 WHERE seq = 3", ()),
            ("UPDATE audit SET seq = 3 WHERE seq = 0", ()))


def _swap_two_and_rewrite_the_chain(path: Path) -> None:
    """Reorder records 2 and 3 and recompute every seq and hash: only the timestamps give it away."""
    rows = _rows(path)
    rows[1], rows[2] = rows[2], rows[1]
    for i, r in enumerate(rows, start=1):
        r["seq"] = i
    _rewrite_chain(path, rows)


TAMPERING = [
    # (how, first broken record, a problem it must name)
    (_edit_value, 3, "hash mismatch"),
    (_edit_and_rehash_one, 4, "chain broken"),
    (_edit_timestamp, 2, "hash mismatch"),
    (_delete_middle, 4, "gap in sequence: expected 3, found 4"),
    (_delete_first, 2, "gap in sequence: expected 1, found 2"),
    (_insert_middle, 4, "chain broken"),
    (_insert_past_the_end, 9, "gap in sequence: expected 6, found 9"),
    (_insert_at_the_end_with_a_made_up_hash, 6, "hash mismatch"),
    (_swap_two, 2, "chain broken"),
    (_swap_two_and_rewrite_the_chain, 3, "timestamps reordered"),
]


@pytest.mark.parametrize(("tamper", "seq", "problem"), TAMPERING, ids=[t[0].__name__.strip("_") for t in TAMPERING])
def test_verify_names_the_first_broken_record(trail: AuditTrail, clock: ManualClock, tamper, seq: int,
                                              problem: str) -> None:  # noqa: ANN001
    _fill(trail, clock, 5)
    before = trail.verify()
    assert before.ok and before.records == 5 and before.head_seq == 5 and before.triggers_present
    tamper(trail.path)
    result = trail.verify()
    assert not result.ok
    assert result.broken.seq == seq, result.broken
    assert any(problem in p for p in result.broken.problems), result.broken.problems
    assert not result.triggers_present


def test_the_same_record_reappended_as_new_breaks_at_it(trail: AuditTrail, clock: ManualClock) -> None:
    # Record 2 copied in as record 6 with its old hash: its fields no longer hash to it.
    _fill(trail, clock, 5)
    r2 = _rows(trail.path)[1]
    _tamper(trail.path, (f"INSERT INTO audit ({', '.join(FIELDS)}) VALUES ({', '.join('?' * len(FIELDS))})",
                         tuple({**r2, "seq": 6}[f] for f in FIELDS)))
    broken = trail.verify().broken
    assert broken.seq == 6 and any("chain broken" in p for p in broken.problems)


def test_a_cut_off_tail_or_rewritten_chain_needs_the_anchor(trail: AuditTrail, clock: ManualClock) -> None:
    _fill(trail, clock, 5)
    head = trail.verify()
    anchor = (head.head_seq, head.head_hash)
    _tamper(trail.path, ("DELETE FROM audit WHERE seq = 5", ()))
    assert trail.verify().ok  # a clean cut is a valid shorter chain ...
    broken = trail.verify(anchor=anchor).broken  # ... unless the old head is known
    assert broken.seq == 5 and "cut off" in broken.problems[0]

    rows = _rows(trail.path)
    rows[1]["new_value"] = "1000.0"
    rows.append({**rows[-1], "seq": 5, "new_value": "5.5", "ts": "2026-05-28T20:26:41.000000Z"})
    _rewrite_chain(trail.path, rows)
    assert trail.verify().ok
    broken = trail.verify(anchor=anchor).broken
    assert broken.seq == 5 and "anchor" in broken.problems[0]


# -- reading ----------------------------------------------------------------------------------------

def test_show_filters_by_time_and_user(trail: AuditTrail, clock: ManualClock) -> None:
    _fill(trail, clock, 4)  # 20:26:40.00, .25, .50, .75
    trail.append(user="bob", action="login", target="10.0.0.2:1", outcome="failure", detail="wrong password")
    assert [r.seq for r in trail.show()] == [1, 2, 3, 4, 5]
    assert [r.seq for r in trail.show(since="2026-05-28T20:26:40.5Z")] == [3, 4, 5]
    assert [r.seq for r in trail.show(since="2026-05-28T22:26:40.5+02:00")] == [3, 4, 5]
    assert [r.seq for r in trail.show(since="2026-05-28T20:26:40.5")] == [3, 4, 5]  # naive = UTC
    assert [r.seq for r in trail.show(user="bob")] == [5]
    assert [r.seq for r in trail.show(since="2026-05-28T20:26:40.5Z", user="alice")] == [3, 4]
    assert trail.show(since="2026-05-29") == []


@pytest.mark.parametrize("since", ["yesterday", "28.05.2026", "", 1780000000])
def test_show_refuses_a_bad_since(trail: AuditTrail, since: object) -> None:
    with pytest.raises((ParameterError, ParameterTypeError), match="since"):
        trail.show(since=since)


def test_export_csv_holds_every_field_of_every_record(trail: AuditTrail, clock: ManualClock, tmp_path: Path) -> None:
    _fill(trail, clock, 3)
    trail.append(user="carol", role="operator", action="method", target="plant.R1.StartBatch", outcome="success",
                 new_value='name = "x"\n[[step]]\nT_C = 70', reason="batch 42, line 2, \"urgent\"")
    out = tmp_path / "export.csv"
    assert trail.export_csv(out) == 4
    with open(out, encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0]) == FIELDS
    for row, rec in zip(rows, trail.show(), strict=True):
        assert row == {f: str(getattr(rec, f)) for f in FIELDS}
        assert TS.fullmatch(row["ts"])
        assert record_hash({**row, "seq": int(row["seq"])}) == row["hash"]  # an inspector can re-check


# -- opening, several writers, asyncio ----------------------------------------------------------------

def test_open_refuses_what_is_not_an_audit_trail(tmp_path: Path) -> None:
    other = tmp_path / "other.sqlite"
    conn = sqlite3.connect(other)
    conn.execute("CREATE TABLE history (t REAL)")
    conn.close()
    with pytest.raises(AuditError, match="not an audit trail"):
        AuditTrail(other).open()
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(AuditError, match="not an audit trail"):
        AuditTrail(junk).open()
    with pytest.raises(AuditError, match="no audit trail here"):
        AuditTrail(tmp_path / "missing.sqlite", create=False).open()
    assert not (tmp_path / "missing.sqlite").exists()
    with pytest.raises(AuditError, match="not open"):
        AuditTrail(tmp_path / "a.sqlite").show()


def test_two_writers_share_one_chain_and_time_never_goes_back(tmp_path: Path) -> None:
    path = tmp_path / "audit.sqlite"
    ahead, behind = ManualClock(t0_s=T0_S + 10.0), ManualClock(t0_s=T0_S)
    with AuditTrail(path, clock=ahead) as a, AuditTrail(path, clock=behind) as b:
        a.append(**_record(1))
        rec = b.append(**_record(2))  # its clock is 10 s behind: stamped at the last record's time
        a.append(**_record(3))
        assert rec.seq == 2 and rec.ts == a.show()[0].ts
        assert [r.seq for r in b.show()] == [1, 2, 3]
        assert a.verify().ok


def test_async_appends_keep_their_order_and_the_chain(tmp_path: Path, clock: ManualClock) -> None:
    async def main() -> list:
        async with AsyncAuditTrail(AuditTrail(tmp_path / "audit.sqlite", clock=clock)) as trail:
            recs = await asyncio.gather(*(trail.append(**_record(i)) for i in range(1, 41)))
            with pytest.raises(ReasonRequired):
                await trail.append(user="x", action="method", target="plant.R1.Abort", outcome="success")
            return [recs, await trail.verify(), await trail.show(user="alice")]

    recs, result, shown = asyncio.run(main())
    assert [r.seq for r in recs] == list(range(1, 41))
    assert [r.target for r in recs] == [f"plant.R1.Recipe.T_set_{i}" for i in range(1, 41)]
    assert result.ok and result.records == 40 and len(shown) == 40


def test_verify_and_show_page_through_a_long_trail(trail: AuditTrail, clock: ManualClock) -> None:
    from gateways.audit import PAGE_RECORDS

    n = 2 * PAGE_RECORDS + 7
    _fill(trail, clock, n)
    assert [r.seq for r in trail.show()] == list(range(1, n + 1))
    assert trail.verify().records == n
    _tamper(trail.path, ("DELETE FROM audit WHERE seq = ?", (PAGE_RECORDS + 1,)))
    assert trail.verify().broken.seq == PAGE_RECORDS + 2
