"""Users, roles, password hashes and login throttling (gateways/users.py); the security CLI
(gateways/security_commands.py) through the installed ``twin`` script."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from gateways.audit import AuditTrail
from gateways.users import (
    DEFAULT_KDF,
    MINIMUM_ROLE,
    TEST_ONLY_KDF,
    Action,
    Authenticator,
    LoginThrottle,
    Role,
    ScryptParams,
    UserStore,
    UserStoreError,
    action_for_method,
    action_for_write,
    check_password,
    permits,
)
from twin_core.clock import ManualClock
from twin_core.errors import ParameterError, ParameterTypeError

PASSWORD = "correct horse battery"
TWIN = Path(sys.executable).with_name("twin")


@pytest.fixture
def store(tmp_path: Path) -> UserStore:
    return UserStore(tmp_path / "users.json", kdf=TEST_ONLY_KDF)


# -- roles ------------------------------------------------------------------------------------------

# Written out from issue 11, independently of MINIMUM_ROLE: what each role adds to the one before.
GRANTS = {
    "viewer": {"browse", "read", "subscribe", "history"},
    "operator": {"batch_method", "recipe_write", "lab_entry", "alarm_ack"},
    "engineer": {"twin_tuning", "twin_parameters"},
    "admin": {"manage_users", "manage_certificates"},
}


@pytest.mark.parametrize("role", list(GRANTS))
@pytest.mark.parametrize("action", [a.value for a in Action])
def test_permits_matches_the_issue(role: str, action: str) -> None:
    allowed: set[str] = set()
    for r, grants in GRANTS.items():
        allowed |= grants
        if r == role:
            break
    assert permits(role, action) is (action in allowed)
    assert permits(Role.parse(role), Action(action)) is (action in allowed)


def test_every_action_has_a_minimum_role() -> None:
    assert set(MINIMUM_ROLE) == set(Action)
    assert set().union(*GRANTS.values()) == {a.value for a in Action}


@pytest.mark.parametrize(("role", "action", "error"), [
    ("root", "read", ParameterError), ("", "read", ParameterError), (3, "read", ParameterTypeError),
    ("viewer", "write", ParameterError), ("admin", "", ParameterError),
])
def test_permits_refuses_unknown_names(role: object, action: object, error: type) -> None:
    with pytest.raises(error):
        permits(role, action)  # type: ignore[arg-type]


def test_methods_and_folders_map_to_actions() -> None:
    assert {m: action_for_method(m).value for m in ("StartBatch", "Hold", "Resume", "Abort", "AcknowledgeAlarms",
                                                    "EnterLabResult", "ResetTwin")} == {
        "StartBatch": "batch_method", "Hold": "batch_method", "Resume": "batch_method", "Abort": "batch_method",
        "AcknowledgeAlarms": "alarm_ack", "EnterLabResult": "lab_entry", "ResetTwin": "twin_tuning"}
    assert action_for_write("Recipe") is Action.RECIPE_WRITE and action_for_write("Twin") is Action.TWIN_PARAMETERS
    for bad, fn in (("Launch", action_for_method), ("Estimates", action_for_write)):
        with pytest.raises(ParameterError):
            fn(bad)


# -- the user file and password hashes ------------------------------------------------------------

def test_the_default_scrypt_parameters_are_not_weakened() -> None:
    assert (DEFAULT_KDF.n, DEFAULT_KDF.r, DEFAULT_KDF.p, DEFAULT_KDF.dklen) == (2 ** 15, 8, 3, 32)
    assert UserStore("x.json").kdf is DEFAULT_KDF


def test_the_password_is_never_stored(store: UserStore) -> None:
    store.add("alice", "operator", PASSWORD)
    store.add("bob", "viewer", PASSWORD)
    raw = store.path.read_bytes()
    for form in (PASSWORD.encode(), PASSWORD.encode("utf-16-le"), base64.b64encode(PASSWORD.encode()),
                 PASSWORD.encode().hex().encode()):
        assert form not in raw
    users = json.loads(raw)["users"]
    assert users["alice"]["password"]["salt"] != users["bob"]["password"]["salt"]
    assert users["alice"]["password"]["hash"] != users["bob"]["password"]["hash"]
    assert stat.S_IMODE(os.stat(store.path).st_mode) == 0o600
    assert [p.name for p in store.path.parent.iterdir() if p.name.endswith(".tmp")] == []


def test_the_stored_hash_is_scrypt_of_the_password_and_salt(store: UserStore) -> None:
    store.add("alice", "operator", PASSWORD)
    pw = json.loads(store.path.read_text())["users"]["alice"]["password"]
    salt = base64.b64decode(pw["salt"])
    assert len(salt) == 16 and (pw["n"], pw["r"], pw["p"]) == (TEST_ONLY_KDF.n, TEST_ONLY_KDF.r, TEST_ONLY_KDF.p)
    expected = hashlib.scrypt(PASSWORD.encode(), salt=salt, n=pw["n"], r=pw["r"], p=pw["p"], dklen=32)
    assert base64.b64decode(pw["hash"]) == expected


def test_a_default_strength_hash_verifies(tmp_path: Path) -> None:
    store = UserStore(tmp_path / "users.json")
    store.add("alice", "admin", PASSWORD)
    assert json.loads(store.path.read_text())["users"]["alice"]["password"]["n"] == 2 ** 15
    assert store.verify("alice", PASSWORD) == (store.get("alice"), "")


def test_logins_wrong_password_unknown_and_disabled_users(store: UserStore) -> None:
    store.add("alice", "operator", PASSWORD)
    store.add("bob", "engineer", PASSWORD)
    assert store.verify("alice", PASSWORD)[1] == ""
    assert store.verify("alice", PASSWORD + "!")[1] == "wrong password"
    assert store.verify("alice", PASSWORD.upper())[1] == "wrong password"
    assert store.verify("alice", "")[1] == "wrong password"
    assert store.verify("carol", PASSWORD) == (None, "unknown user")
    assert store.verify("bad name!", PASSWORD) == (None, "unknown user")
    disabled = store.disable("bob")
    assert not disabled.enabled and disabled.role is Role.ENGINEER
    assert store.verify("bob", PASSWORD)[1] == "user disabled"
    assert [(u.name, str(u.role), u.enabled) for u in store.list()] == [("alice", "operator", True),
                                                                       ("bob", "engineer", False)]
    assert "hash" not in repr(store.get("alice"))


def test_a_composed_and_a_decomposed_accent_are_the_same_password(store: UserStore) -> None:
    store.add("alice", "operator", "caf\u00e9-au-lait")
    assert store.verify("alice", "cafe\u0301-au-lait")[1] == ""


@pytest.mark.parametrize(("name", "role", "password", "error", "match"), [
    ("", "viewer", PASSWORD, ParameterError, "name"),
    ("-alice", "viewer", PASSWORD, ParameterError, "name"),
    ("al ice", "viewer", PASSWORD, ParameterError, "name"),
    ("a" * 65, "viewer", PASSWORD, ParameterError, "name"),
    ("al/ice", "viewer", PASSWORD, ParameterError, "name"),
    (None, "viewer", PASSWORD, ParameterTypeError, "name"),
    ("alice", "superuser", PASSWORD, ParameterError, "role"),
    ("alice", None, PASSWORD, ParameterTypeError, "role"),
    ("alice", "viewer", "", ParameterError, "at least 8"),
    ("alice", "viewer", "1234567", ParameterError, "at least 8"),
    ("alice", "viewer", "x" * 1025, ParameterError, "at most"),
    ("alice", "viewer", "pass\nword1", ParameterError, "line breaks"),
    ("alice", "viewer", "pass\x00word1", ParameterError, "NUL"),
    ("alice", "viewer", "\ud800" * 8, ParameterError, "Unicode"),
    ("alice", "viewer", b"bytes-password", ParameterTypeError, "password"),
])
def test_bad_users_are_refused(store: UserStore, name: object, role: object, password: object, error: type,
                               match: str) -> None:
    with pytest.raises(error, match=match) as info:
        store.add(name, role, password)  # type: ignore[arg-type]
    assert not isinstance(password, str) or not password or password not in str(info.value)
    assert not store.path.exists()


def test_changes_that_cannot_be_made_are_refused(store: UserStore) -> None:
    store.add("alice", "operator", PASSWORD)
    with pytest.raises(ParameterError, match="already exists"):
        store.add("alice", "admin", PASSWORD)
    with pytest.raises(ParameterError, match="no such user"):
        store.disable("bob")
    store.disable("alice")
    with pytest.raises(ParameterError, match="already disabled"):
        store.disable("alice")
    with pytest.raises(ParameterError, match=r"already exists \(disabled\)"):
        store.add("alice", "viewer", PASSWORD)


@pytest.mark.parametrize(("n", "r", "p"), [(1000, 8, 1), (1, 8, 1), (2 ** 21, 8, 1), (16, 0, 1), (16, 8, 0), (16.0, 8, 1)])
def test_bad_scrypt_parameters(n: object, r: int, p: int) -> None:
    with pytest.raises((ParameterError, ParameterTypeError)):
        ScryptParams(n=n, r=r, p=p)  # type: ignore[arg-type]


def _valid_file(store: UserStore) -> dict:
    store.add("alice", "operator", PASSWORD)
    return json.loads(store.path.read_text())


@pytest.mark.parametrize(("corrupt", "match"), [
    (lambda d: "{not json", "not JSON"),
    (lambda d: {**d, "format": 2}, "format 2"),
    (lambda d: {**d, "extra": 1}, "expected"),
    (lambda d: {"format": 1, "users": {"alice": {**d["users"]["alice"], "admin": True}}}, "unknown keys"),
    (lambda d: {"format": 1, "users": {"alice": {k: v for k, v in d["users"]["alice"].items() if k != "enabled"}}},
     "missing keys"),
    (lambda d: {"format": 1, "users": {"alice": {**d["users"]["alice"], "password": PASSWORD}}}, "scrypt hash"),
    (lambda d: {"format": 1, "users": {"alice": {**d["users"]["alice"], "role": "root"}}}, "role"),
    (lambda d: {"format": 1, "users": {"alice": {**d["users"]["alice"], "enabled": "yes"}}}, "enabled"),
    (lambda d: {"format": 1, "users": {"bad name": d["users"]["alice"]}}, "name"),
])
def test_a_malformed_user_file_is_reported(store: UserStore, corrupt, match: str) -> None:  # noqa: ANN001
    data = corrupt(_valid_file(store))
    store.path.write_text(data if isinstance(data, str) else json.dumps(data))
    with pytest.raises(UserStoreError, match=match):
        store.list()


def test_check_password_does_not_raise_on_a_password_that_breaks_the_rules(store: UserStore) -> None:
    store.add("alice", "operator", PASSWORD)
    stored = json.loads(store.path.read_text())["users"]["alice"]["password"]
    for bad in ("", "short", None, "x" * 5000):
        assert check_password(stored, bad) is False  # type: ignore[arg-type]


# -- throttling ---------------------------------------------------------------------------------------

@pytest.fixture
def auth(store: UserStore) -> tuple[Authenticator, ManualClock]:
    store.add("alice", "operator", PASSWORD)
    clock = ManualClock(t0_s=1000.0)
    return Authenticator(store, LoginThrottle(max_failures=5, window_s=60.0, lockout_s=300.0, clock=clock)), clock


def test_five_failures_in_a_minute_lock_the_client_out(auth) -> None:  # noqa: ANN001
    a, clock = auth
    for _ in range(4):
        d = a.login("alice", "wrong password", "10.0.0.9")
        assert (d.ok, d.action, d.detail) == (False, "login_failed", "wrong password")
        clock.step(10)
    d = a.login("alice", "wrong password", "10.0.0.9")  # 5th within 40 s
    assert d.action == "login_failed" and "throttled for 300 s" in d.detail and d.retry_after_s == 300.0
    clock.step(1)
    d = a.login("alice", PASSWORD, "10.0.0.9")  # even the right password is refused, unchecked
    assert (d.ok, d.action, d.role) == (False, "login_throttled", "")
    assert d.retry_after_s == pytest.approx(299.0) and "try again in 299 s" in d.client_message
    assert a.login("alice", PASSWORD, "10.0.0.10").ok  # another client is not affected
    clock.set(1040.0 + 300.0)
    d = a.login("alice", PASSWORD, "10.0.0.9")
    assert d.ok and d.action == "login" and d.role == "operator"


def test_failures_spread_beyond_the_window_do_not_lock_out(auth) -> None:  # noqa: ANN001
    a, clock = auth
    for _ in range(12):
        assert a.login("alice", "wrong password", "10.0.0.9").action == "login_failed"
        clock.step(15)  # 4 failures per minute at most
    assert a.login("alice", PASSWORD, "10.0.0.9").ok


def test_a_success_clears_the_failures(auth) -> None:  # noqa: ANN001
    a, clock = auth
    for _ in range(4):
        a.login("alice", "wrong password", "c")
    assert a.login("alice", PASSWORD, "c").ok
    for _ in range(4):
        assert a.login("alice", "wrong password", "c").action == "login_failed"
    assert a.login("alice", PASSWORD, "c").ok


def test_unknown_and_disabled_users_count_as_failures_and_say_nothing_to_the_client(auth, store) -> None:  # noqa: ANN001
    a, clock = auth
    store.add("bob", "viewer", PASSWORD)
    store.disable("bob")
    d_unknown = a.login("mallory", PASSWORD, "c")
    d_wrong = a.login("alice", "wrong password", "c")
    d_disabled = a.login("bob", PASSWORD, "c")
    assert [d.detail for d in (d_unknown, d_wrong, d_disabled)] == ["unknown user", "wrong password", "user disabled"]
    assert len({d.client_message for d in (d_unknown, d_wrong, d_disabled)}) == 1
    a.login("", "", "c")
    assert "throttled" in a.login("x", "y", "c").detail  # the fifth failure of this client


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"max_failures": 0}, "max_failures"), ({"max_failures": 2.5}, "max_failures"), ({"window_s": 0.0}, "window_s"),
    ({"lockout_s": float("inf")}, "lockout_s"), ({"window_s": "60"}, "window_s"), ({"max_clients": 0}, "max_clients"),
])
def test_bad_throttle_settings(kwargs: dict, match: str) -> None:
    with pytest.raises(ParameterError, match=match):
        LoginThrottle(**kwargs)


def test_the_throttle_tracks_a_bounded_number_of_clients() -> None:
    clock = ManualClock()
    t = LoginThrottle(max_failures=3, clock=clock, max_clients=100)
    for i in range(1000):
        t.failed(f"10.0.{i // 256}.{i % 256}")
    assert len(t._failures) + len(t._locked_until) <= 100


def test_login_decisions_go_into_the_audit_trail(auth, tmp_path: Path) -> None:  # noqa: ANN001
    a, clock = auth
    with AuditTrail(tmp_path / "audit.sqlite", clock=clock) as trail:
        for password in ("wrong password",) * 5 + (PASSWORD,):
            trail.append(**a.login("alice", password, "10.0.0.9:4711", cert_thumbprint="ab" * 20).audit_fields())
        trail.append(**a.login("alice", PASSWORD, "10.0.0.8:4711").audit_fields())
        recs = trail.show()
        assert trail.verify().ok
    assert [(r.action, r.outcome) for r in recs] == [("login_failed", "failure")] * 5 + [
        ("login_throttled", "refused"), ("login", "success")]
    assert recs[0].target == "10.0.0.9:4711" and recs[0].cert_thumbprint == "ab" * 20 and recs[0].role == ""
    assert recs[-1].role == "operator" and recs[-1].user == "alice"
    assert PASSWORD not in (tmp_path / "audit.sqlite").read_bytes().decode("latin-1")


# -- the CLI, through the installed script -----------------------------------------------------------

def _twin(*args: str, cwd: Path, stdin: str = "") -> subprocess.CompletedProcess:
    return subprocess.run([str(TWIN), *args], cwd=cwd, input=stdin, capture_output=True, text=True, timeout=120)


@pytest.mark.slow
def test_cli_users_and_audit(tmp_path: Path) -> None:
    r = _twin("users", "add", "alice", "--role", "operator", "--password-stdin", "--reason", "new shift lead",
              cwd=tmp_path, stdin=PASSWORD + "\n")
    assert r.returncode == 0, r.stderr
    users_file, audit_file = tmp_path / "var" / "users.json", tmp_path / "var" / "audit.sqlite"  # the data_dir default
    assert users_file.exists() and PASSWORD.encode() not in users_file.read_bytes()
    assert UserStore(users_file).verify("alice", PASSWORD)[1] == ""

    r = _twin("users", "add", "alice", "--role", "admin", "--password-stdin", cwd=tmp_path, stdin=PASSWORD + "\n")
    assert r.returncode == 2 and r.stderr.startswith("twin users: error: name='alice': already exists"), r.stderr
    r = _twin("users", "add", "bob", "--role", "viewer", cwd=tmp_path)  # no terminal, no --password-stdin
    assert r.returncode == 2 and "--password-stdin" in r.stderr
    r = _twin("users", "disable", "alice", "--reason", "left the company", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    r = _twin("users", "list", cwd=tmp_path)
    assert r.returncode == 0 and "alice" in r.stdout and "disabled" in r.stdout

    r = _twin("audit", "verify", cwd=tmp_path)
    assert r.returncode == 0 and "4 records verified" in r.stdout, r.stdout + r.stderr
    head = r.stdout.split("head ")[1].strip()
    r = _twin("audit", "show", "--user", _os_user(), cwd=tmp_path)
    assert r.returncode == 0 and r.stdout.count("user_change") == 4 and "left the company" in r.stdout
    r = _twin("audit", "export", "out.csv", "--audit", str(audit_file), cwd=tmp_path)
    assert r.returncode == 0 and (tmp_path / "out.csv").read_text().count("\n") == 5

    conn = sqlite3.connect(audit_file)
    conn.execute("DROP TRIGGER audit_no_update")
    conn.execute("UPDATE audit SET new_value = 'role=admin enabled=true' WHERE seq = 1")
    conn.commit()
    conn.close()
    r = _twin("audit", "verify", "--anchor", head, cwd=tmp_path)
    last = r.stderr.strip().splitlines()[-1]
    assert r.returncode == 2 and last.startswith("twin audit: error:") and "record 1: hash mismatch" in last
    assert "triggers are missing" in r.stderr


def _os_user() -> str:
    import getpass

    return getpass.getuser()


@pytest.mark.slow
def test_cli_refuses_bad_arguments(tmp_path: Path) -> None:
    r = _twin("audit", "show", "--since", "tomorrow", "--audit", "missing.sqlite", cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.startswith("twin audit: error:") and "no audit trail here" in r.stderr
    assert not (tmp_path / "missing.sqlite").exists()
    r = _twin("audit", "verify", "--anchor", "5:xyz", cwd=tmp_path)
    assert r.returncode == 2 and "SEQ:HASH" in r.stderr
    r = _twin("users", "add", "carol", "--role", "root", "--password-stdin", cwd=tmp_path, stdin=PASSWORD)
    assert r.returncode == 2 and "invalid choice" in r.stderr
