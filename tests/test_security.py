"""The OPC UA server's security against real clients on loopback: the security matrix of issue 11 as a
table -- each refused case refused with its status code AND found in the audit trail, each allowed case
done and audited -- run with asyncua's client and with the `opcua` package (python-opcua 0.98, a separate
synchronous code base); endpoints, the server certificate, the trust list on a running server, login
throttling, None and anonymous turned on.

One server per module (SignAndEncrypt only, anonymous read-only on); the client certificates are made
in a temporary folder: ``hmi`` trusted, ``rogue`` never trusted, ``stolen`` trusted and then revoked.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from asyncua import Client, ua
from asyncua.crypto.security_policies import (
    SecurityPolicyAes128Sha256RsaOaep,
    SecurityPolicyAes256Sha256RsaPss,
    SecurityPolicyBasic256Sha256,
)
from conftest import free_port
from opcua_helpers import (
    USERS,
    ClientCert,
    RecordingControl,
    ServerThread,
    make_client,
    make_client_cert,
    make_security,
)

from gateways.audit import AuditRecord, AuditTrail
from gateways.certs import (
    CertificateChecker,
    CertificateError,
    CertificateRejected,
    Pki,
    TrustList,
    ensure_server_certificate,
    load_certificate_file,
    thumbprint,
)
from gateways.model import Value
from gateways.opcua_server import NAMESPACE_URI
from gateways.users import LoginThrottle
from twin_core.signals.runtime import PUBLISHED, Quality

PLANT = "plant"
RECIPE = 'name = "demo"\nmode = "jacket"\nend_time_s = 3600\npoints = [[0, 330], [3600, 350]]\n'


@dataclass
class Matrix:
    """The module's server and what the cases need of it."""

    st: ServerThread
    data: Path
    control: RecordingControl
    certs: dict[str, ClientCert]

    @property
    def url(self) -> str:
        return self.st.url

    def trail(self) -> list[AuditRecord]:
        with AuditTrail(self.data / "audit.sqlite", create=False) as t:
            return t.show()


@pytest.fixture(scope="module")
def matrix(tmp_path_factory: pytest.TempPathFactory) -> Matrix:
    data = tmp_path_factory.mktemp("secure-server")
    certs_dir = tmp_path_factory.mktemp("client-certs")
    certs = {"hmi": make_client_cert(certs_dir, "hmi", trust_in=data),
             "rogue": make_client_cert(certs_dir, "rogue"),
             "stolen": make_client_cert(certs_dir, "stolen", trust_in=data),
             "guesser": make_client_cert(certs_dir, "guesser", trust_in=data)}
    TrustList(Pki(data)).revoke(thumbprint(load_certificate_file(certs["stolen"].cert)))
    control = RecordingControl()
    security = make_security(data, allow_none=False, allow_anonymous=True, throttle=LoginThrottle())
    with ServerThread(f"opc.tcp://127.0.0.1:{free_port()}/batch-twin/", PLANT, {"R1": control},
                      security=security) as st:
        when = datetime(2026, 12, 1, 10, 0, tzinfo=UTC)
        st.run(st.server.publish("R1", {p.name: Value(p.signal.nominal if p.signal.min <= p.signal.nominal
                                                      <= p.signal.max else p.signal.min, Quality.GOOD, when)
                                        for p in PUBLISHED if p.writable or p.name == "T_reactor"}))
        yield Matrix(st, data, control, certs)


# -- two clients behind one interface --------------------------------------------------------------------
class Refused(Exception):
    """A connection or request refused with an OPC UA status code (``code``)."""

    def __init__(self, code: int) -> None:
        self.code = code
        super().__init__(ua.StatusCode(code).name)


@dataclass
class Session:
    """What a case does once connected: read, write and call by node-id text, answering status codes."""

    read: Callable[[str], Any]
    write: Callable[[str, Any, str], int]
    call: Callable[[str, list[tuple[Any, str]]], tuple[int, str]]


def run_asyncua(url: str, ns_uri: str, user: str | None, password: str | None, cert: ClientCert | None,
                steps: Callable[[Session], Any], policy: type = SecurityPolicyBasic256Sha256) -> Any:
    async def main() -> Any:
        client = await make_client(url, user, password, cert=cert, policy=policy)
        try:
            await client.connect()
        except ua.UaStatusCodeError as exc:
            raise Refused(exc.code) from None
        try:
            ns = await client.get_namespace_index(ns_uri)
            results: list[Any] = []
            loop_steps: list[tuple[str, tuple]] = []

            def read(name: str) -> Any:
                loop_steps.append(("read", (name,)))

            def write(name: str, value: Any, vtype: str) -> int:
                loop_steps.append(("write", (name, value, vtype)))
                return 0

            def call(method: str, args: list[tuple[Any, str]]) -> tuple[int, str]:
                loop_steps.append(("call", (method, args)))
                return 0, ""

            steps(Session(read, write, call))  # records what to do; done below, in order
            for kind, a in loop_steps:
                if kind == "read":
                    dv = await client.get_node(ua.NodeId(a[0], ns)).read_data_value(raise_on_bad_status=False)
                    results.append(dv.Value.Value if dv.Value is not None else None)
                elif kind == "write":
                    params = ua.WriteParameters()
                    params.NodesToWrite = [ua.WriteValue(NodeId=ua.NodeId(a[0], ns), AttributeId=ua.AttributeIds.Value,
                                                         Value=ua.DataValue(ua.Variant(a[1], getattr(ua.VariantType, a[2]))))]
                    results.append((await client.uaclient.write(params))[0].value)
                else:
                    method, args = a
                    obj = method.rsplit(".", 1)[0]
                    req = ua.CallMethodRequest(ObjectId=ua.NodeId(obj, ns), MethodId=ua.NodeId(method, ns),
                                               InputArguments=[ua.Variant(v, getattr(ua.VariantType, t)) for v, t in args])
                    res = (await client.uaclient.call([req]))[0]
                    results.append((res.StatusCode.value, res.OutputArguments[0].Value if res.OutputArguments else ""))
            return results
        finally:
            await client.disconnect()

    return asyncio.run(main())


def run_python_opcua(url: str, ns_uri: str, user: str | None, password: str | None, cert: ClientCert | None,
                     steps: Callable[[Session], Any]) -> Any:
    import opcua  # a dev dependency (requirements.lock): missing it fails, it does not skip

    client = opcua.Client(url, timeout=10)
    if cert is not None:
        client.application_uri = cert.application_uri
        client.set_security_string(f"Basic256Sha256,SignAndEncrypt,{cert.cert},{cert.key}")
    if user is not None:
        client.set_user(user)
        client.set_password(password if password is not None else USERS[user][1])
    try:
        client.connect()
    except opcua.ua.UaStatusCodeError as exc:
        try:
            client.disconnect()
        except Exception:  # noqa: BLE001 -- the half-open connection may already be gone
            pass
        raise Refused(exc.code) from None
    try:
        ns = client.get_namespace_index(ns_uri)
        results: list[Any] = []

        def read(name: str) -> Any:
            params = opcua.ua.ReadParameters()
            rv = opcua.ua.ReadValueId()
            rv.NodeId, rv.AttributeId = opcua.ua.NodeId(name, ns), opcua.ua.AttributeIds.Value
            params.NodesToRead = [rv]
            results.append(client.uaclient.read(params)[0].Value.Value)

        def write(name: str, value: Any, vtype: str) -> int:
            params = opcua.ua.WriteParameters()
            wv = opcua.ua.WriteValue()
            wv.NodeId, wv.AttributeId = opcua.ua.NodeId(name, ns), opcua.ua.AttributeIds.Value
            wv.Value = opcua.ua.DataValue(opcua.ua.Variant(value, getattr(opcua.ua.VariantType, vtype)))
            params.NodesToWrite = [wv]
            code = client.uaclient.write(params)[0].value
            results.append(code)
            return code

        def call(method: str, args: list[tuple[Any, str]]) -> tuple[int, str]:
            req = opcua.ua.CallMethodRequest()
            req.ObjectId = opcua.ua.NodeId(method.rsplit(".", 1)[0], ns)
            req.MethodId = opcua.ua.NodeId(method, ns)
            req.InputArguments = [opcua.ua.Variant(v, getattr(opcua.ua.VariantType, t)) for v, t in args]
            res = client.uaclient.call([req])[0]
            out = (res.StatusCode.value, res.OutputArguments[0].Value if res.OutputArguments else "")
            results.append(out)
            return out

        steps(Session(read, write, call))
        return results
    finally:
        client.disconnect()


CLIENTS = {"asyncua": run_asyncua, "python-opcua": run_python_opcua}


# -- the matrix ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Case:
    """One row: who connects how, what they do, what the server must answer, what the trail must hold."""

    user: str | None           # None: anonymous
    cert: str | None           # a certificate of the fixture (None: SecurityPolicy None, no certificate)
    steps: Callable[[Session], Any] = lambda s: None
    password: str | None = None
    refused_at_connect: int | None = None    # the status code of a refused connection
    results: tuple = ()                      # what each step answers (codes; (code, text-part) for calls)
    audit: dict = field(default_factory=dict)  # fields the trail's new records must include (one record)


def _write_trip(s: Session) -> None:
    s.write(f"{PLANT}.R1.Recipe.T_trip", 120.0, "Double")


def _call(method: str, *args: tuple[Any, str]) -> Callable[[Session], Any]:
    return lambda s: s.call(f"{PLANT}.R1.{method}", list(args))


OK, DENIED = ua.StatusCodes.Good, ua.StatusCodes.BadUserAccessDenied

CASES = {
    # -- refused -----------------------------------------------------------------------------------------
    "anonymous write": Case(None, "hmi", _write_trip, results=(DENIED,),
                            audit={"user": "anonymous", "role": "viewer", "action": "write", "outcome": "refused",
                                   "target": f"{PLANT}.R1.Recipe.T_trip", "new_value": "120.0",
                                   "detail": "an anonymous session may not write Recipe values", "cert": "hmi"}),
    "wrong password": Case("olga", "hmi", password="not-her-password", refused_at_connect=DENIED,
                           audit={"user": "olga", "action": "login_failed", "outcome": "failure",
                                  "detail": "wrong password", "cert": "hmi"}),
    "unknown user": Case("mallory", "hmi", password="whatever-1", refused_at_connect=DENIED,
                         audit={"user": "mallory", "action": "login_failed", "detail": "unknown user"}),
    "untrusted certificate": Case("olga", "rogue", refused_at_connect=ua.StatusCodes.BadCertificateUntrusted,
                                  audit={"action": "refused", "outcome": "refused", "cert": "rogue",
                                         "detail": "BadCertificateUntrusted"}),
    "revoked certificate": Case("olga", "stolen", refused_at_connect=ua.StatusCodes.BadCertificateRevoked,
                                audit={"action": "refused", "outcome": "refused", "cert": "stolen",
                                       "detail": "BadCertificateRevoked"}),
    "no security (None is off)": Case("olga", None, refused_at_connect=ua.StatusCodes.BadSecurityPolicyRejected,
                                      audit={"action": "refused", "detail": "SecurityPolicy None is off"}),
    "viewer calls a method": Case("vic", "hmi", _call("Hold"), results=((DENIED, "role viewer may not call Hold"),),
                                  audit={"user": "vic", "role": "viewer", "action": "method", "outcome": "refused",
                                         "target": f"{PLANT}.R1.Hold", "detail": "role viewer may not call Hold"}),
    "viewer writes a recipe value": Case("vic", "hmi", _write_trip, results=(DENIED,),
                                         audit={"user": "vic", "action": "write", "outcome": "refused",
                                                "detail": "role viewer may not write Recipe values"}),
    "operator changes a twin parameter": Case(
        "olga", "hmi", _call("SetTwinParameter", ("sigma_lab", "String"), (0.5, "Double"), ("recalibrated", "String")),
        results=((DENIED, "role operator may not call SetTwinParameter"),),
        audit={"user": "olga", "role": "operator", "action": "write", "outcome": "refused",
               "target": f"{PLANT}.R1.Twin.sigma_lab", "detail": "twin_parameters needs engineer"}),
    "operator writes a twin node": Case(
        "olga", "hmi", lambda s: s.write(f"{PLANT}.R1.Twin.sigma_lab", 0.5, "Double"), results=(DENIED,),
        audit={"user": "olga", "action": "write", "outcome": "refused", "target": f"{PLANT}.R1.Twin.sigma_lab",
               "detail": "role operator may not write Twin values"}),
    "engineer without a reason": Case(
        "emil", "hmi", _call("SetTwinParameter", ("sigma_lab", "String"), (0.5, "Double"), ("   ", "String")),
        results=((DENIED, "a non-blank Reason"),),
        audit={"user": "emil", "role": "engineer", "action": "write", "outcome": "refused", "reason": "",
               "target": f"{PLANT}.R1.Twin.sigma_lab", "detail": "critical action"}),
    "engineer writes a twin node directly": Case(
        "emil", "hmi", lambda s: s.write(f"{PLANT}.R1.Twin.sigma_lab", 0.5, "Double"), results=(DENIED,),
        audit={"user": "emil", "action": "write", "outcome": "refused", "detail": "SetTwinParameter(Name, Value, Reason)"}),
    "operator aborts without a reason": Case(
        "olga", "hmi", _call("Abort", ("", "String")), results=((DENIED, "a non-blank Reason"),),
        audit={"user": "olga", "action": "method", "outcome": "refused", "target": f"{PLANT}.R1.Abort",
               "detail": "critical action"}),
    "operator enters a lab result without a reason": Case(
        "olga", "hmi", _call("EnterLabResult", (1.0, "Double"), (0.5, "Double"), (0.05, "Double"), ("", "String")),
        results=((DENIED, "a non-blank Reason"),),
        audit={"user": "olga", "action": "method", "outcome": "refused", "target": f"{PLANT}.R1.EnterLabResult"}),
    # -- allowed -----------------------------------------------------------------------------------------
    "anonymous reads": Case(None, "hmi", lambda s: s.read(f"{PLANT}.R1.Recipe.T_trip"), results=("float",),
                            audit={"user": "anonymous", "action": "login", "outcome": "success", "role": "viewer"}),
    "viewer reads": Case("vic", "hmi", lambda s: s.read(f"{PLANT}.R1.Measurements.T_reactor"), results=("float",),
                         audit={"user": "vic", "action": "login", "outcome": "success", "cert": "hmi"}),
    "operator holds": Case("olga", "hmi", _call("Hold"), results=((OK, "done"),),
                           audit={"user": "olga", "role": "operator", "action": "method", "outcome": "success",
                                  "target": f"{PLANT}.R1.Hold", "cert": "hmi"}),
    "operator writes a recipe value": Case("olga", "hmi", _write_trip, results=(OK,),
                                           audit={"user": "olga", "action": "write", "outcome": "success",
                                                  "new_value": "120.0", "old_value": "*"}),
    "operator starts a batch with a reason": Case(
        "olga", "hmi", _call("StartBatch", (RECIPE, "String"), ("campaign 7, batch 2", "String")),
        results=((OK, "done"),),
        audit={"user": "olga", "action": "method", "outcome": "success", "target": f"{PLANT}.R1.StartBatch",
               "reason": "campaign 7, batch 2", "new_value": "*end_time_s = 3600*"}),
    "operator enters a lab result with a reason": Case(
        "olga", "hmi", _call("EnterLabResult", (1.0, "Double"), (0.5, "Double"), (0.05, "Double"),
                             ("LIMS 4711", "String")), results=((OK, "done"),),
        audit={"user": "olga", "action": "method", "outcome": "success", "reason": "LIMS 4711",
               "new_value": "SampleTime=1.0, c_B=0.5, c_C=0.05"}),
    "engineer sets a twin parameter with a reason": Case(
        "emil", "hmi", _call("SetTwinParameter", ("sigma_lab", "String"), (0.25, "Double"), ("recalibrated", "String")),
        results=((OK, "done"),),
        audit={"user": "emil", "role": "engineer", "action": "write", "outcome": "success",
               "target": f"{PLANT}.R1.Twin.sigma_lab", "new_value": "0.25", "old_value": "*", "reason": "recalibrated"}),
    "admin aborts with a reason": Case("ada", "hmi", _call("Abort", ("agitator fault", "String")),
                                       results=((OK, "done"),),
                                       audit={"user": "ada", "role": "admin", "action": "method",
                                              "outcome": "success", "reason": "agitator fault"}),
}


def _matches(record: AuditRecord, expected: dict, thumbs: dict[str, str]) -> bool:
    for key, want in expected.items():
        if key == "cert":
            if record.cert_thumbprint != thumbs[want]:
                return False
            continue
        got = getattr(record, key)
        if key == "detail" or (isinstance(want, str) and want.startswith("*")):
            pattern = want.strip("*")
            if pattern not in got or (want == "*" and got == ""):
                return False
        elif got != want:
            return False
    return True


@pytest.mark.parametrize("client", list(CLIENTS))
@pytest.mark.parametrize("name", list(CASES))
def test_security_matrix(matrix: Matrix, client: str, name: str) -> None:
    case = CASES[name]
    thumbs = {k: thumbprint(load_certificate_file(c.cert)) for k, c in matrix.certs.items()}
    before = len(matrix.trail())
    cert = matrix.certs[case.cert] if case.cert is not None else None
    run = CLIENTS[client]
    if case.refused_at_connect is not None:
        with pytest.raises(Refused) as exc:
            run(matrix.url, NAMESPACE_URI, case.user, case.password, cert, case.steps)
        assert exc.value.code == case.refused_at_connect, ua.StatusCode(exc.value.code).name
    else:
        results = run(matrix.url, NAMESPACE_URI, case.user, case.password, cert, case.steps)
        assert len(results) == len(case.results)
        for got, want in zip(results, case.results):
            if want == "float":
                assert isinstance(got, float)
            elif isinstance(want, tuple):
                assert got[0] == want[0], (ua.StatusCode(got[0]).name, got[1])
                assert want[1] in got[1]
            else:
                assert got == want, ua.StatusCode(got).name
    new = matrix.trail()[before:]
    found = [r for r in new if _matches(r, case.audit, thumbs)]
    assert len(found) == 1, "\n".join(f"{r.user} {r.role} {r.action} {r.target} {r.outcome} {r.reason!r} {r.detail}"
                                      for r in new)


def test_the_matrix_reached_the_controller_only_for_allowed_cases(matrix: Matrix) -> None:
    """The refused cases stopped before the runtime: none of their requests (sigma_lab = 0.5 mol/L, an
    empty-reason Abort) reached the controller; the engineer's 0.25 mol/L did, in SI (250 mol/m3)."""
    calls = matrix.control.calls
    sigma = [c[1][1] for c in calls if c[0] == "write" and c[1][0] == "sigma_lab"]
    assert sigma and all(v == pytest.approx(250.0, rel=1e-12) for v in sigma)
    aborts = sum(1 for c in calls if c == ("command", ("abort",)))
    assert aborts <= len(CLIENTS)  # only the admin's, with its reason


def test_the_trail_of_the_matrix_verifies(matrix: Matrix) -> None:
    with AuditTrail(matrix.data / "audit.sqlite", create=False) as t:
        result = t.verify()
    assert result.broken is None and result.records >= len(CASES)


# -- endpoints and certificates --------------------------------------------------------------------------
def test_endpoints_are_the_three_sign_and_encrypt_policies_only(matrix: Matrix) -> None:
    endpoints = _endpoints(matrix.url)  # discovery: no session, a None channel
    assert sorted((e.SecurityPolicyUri.rsplit("#", 1)[1], e.SecurityMode) for e in endpoints) == sorted(
        (p, ua.MessageSecurityMode.SignAndEncrypt) for p in ("Basic256Sha256", "Aes256_Sha256_RsaPss",
                                                             "Aes128_Sha256_RsaOaep"))
    for e in endpoints:
        assert {t.TokenType for t in e.UserIdentityTokens} == {ua.UserTokenType.UserName, ua.UserTokenType.Anonymous}
        assert e.Server.ApplicationUri == f"urn:batch-reactor-twin:{PLANT}"


def _endpoints(url: str) -> list[ua.EndpointDescription]:
    async def main() -> list[ua.EndpointDescription]:
        c = Client(url, timeout=10)
        return await c.connect_and_get_server_endpoints()

    return asyncio.run(main())


@pytest.mark.parametrize("policy", [SecurityPolicyBasic256Sha256, SecurityPolicyAes256Sha256RsaPss,
                                    SecurityPolicyAes128Sha256RsaOaep])
def test_each_policy_carries_a_login_and_a_call(matrix: Matrix, policy: type) -> None:
    before = len(matrix.trail())
    results = run_asyncua(matrix.url, NAMESPACE_URI, "olga", None, matrix.certs["hmi"], _call("Hold"), policy=policy)
    assert results == [(OK, "done")]
    actions = [(r.user, r.action, r.outcome) for r in matrix.trail()[before:]]
    assert actions == [("olga", "login", "success"), ("olga", "method", "success"), ("olga", "logout", "success")]


def test_a_policy_that_is_not_offered_is_refused_and_audited(matrix: Matrix) -> None:
    """Basic256Sha256 Sign (not SignAndEncrypt) is not an endpoint: the secure channel is refused."""
    before = len(matrix.trail())
    with pytest.raises(Exception):  # noqa: B017 -- asyncua ends the connection, with whatever error
        run_asyncua_mode(matrix.url, matrix.certs["hmi"], ua.MessageSecurityMode.Sign, Pki(matrix.data).cert_path)
    deadline = time.monotonic() + 10.0
    while True:  # the refusal is recorded from asyncua's synchronous handler: it may land just after
        records = [r for r in matrix.trail()[before:] if r.action == "refused"]
        if records or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert len(records) == 1 and "OpenSecureChannel refused" in records[0].detail
    assert "Basic256Sha256" in records[0].detail


def run_asyncua_mode(url: str, cert: ClientCert, mode: ua.MessageSecurityMode, server_cert: Path) -> None:
    async def main() -> None:
        client = Client(url, timeout=2)  # the server answers a refused channel by closing it, or not at all
        client.application_uri = cert.application_uri
        # the server certificate given: the client does not look the (missing) endpoint up, it just asks
        await client.set_security(SecurityPolicyBasic256Sha256, str(cert.cert), str(cert.key),
                                  server_certificate=str(server_cert), mode=mode)
        client.set_user("olga")
        client.set_password(USERS["olga"][1])
        async with client:
            pass

    asyncio.run(main())


def test_server_certificate_has_the_servers_application_uri_and_is_reused(matrix: Matrix) -> None:
    pki = Pki(matrix.data)
    cert = load_certificate_file(pki.cert_path)
    from gateways.certs import application_uri_of

    assert application_uri_of(cert) == matrix.st.server.application_uri == f"urn:batch-reactor-twin:{PLANT}"
    endpoint_cert = _endpoints(matrix.url)[0].ServerCertificate
    assert thumbprint(endpoint_cert) == thumbprint(cert)
    assert (pki.key_path.stat().st_mode & 0o777) == 0o600
    again = ensure_server_certificate(pki, application_uri_of(cert))
    assert again == (pki.cert_path, pki.key_path, False)
    assert thumbprint(load_certificate_file(pki.cert_path)) == thumbprint(cert)


def test_a_certificate_for_another_uri_is_refused_naming_the_file(tmp_path: Path) -> None:
    pki = Pki(tmp_path)
    _, _, created = ensure_server_certificate(pki, "urn:batch-reactor-twin:A")
    assert created
    with pytest.raises(CertificateError, match=r"made for application URI 'urn:batch-reactor-twin:A'.*remove"):
        ensure_server_certificate(pki, "urn:batch-reactor-twin:B")
    pki.key_path.unlink()
    with pytest.raises(CertificateError, match="missing"):
        ensure_server_certificate(pki, "urn:batch-reactor-twin:A")


def test_trust_and_revoke_take_effect_on_a_running_server(matrix: Matrix, tmp_path: Path) -> None:
    late = make_client_cert(tmp_path, "late")
    with pytest.raises(Refused) as exc:
        run_asyncua(matrix.url, NAMESPACE_URI, "vic", None, late, lambda s: None)
    assert exc.value.code == ua.StatusCodes.BadCertificateUntrusted
    trust = TrustList(Pki(matrix.data))
    info = trust.trust(late.cert)
    assert run_asyncua(matrix.url, NAMESPACE_URI, "vic", None, late, lambda s: s.read(f"{PLANT}.R1.Recipe.T_trip"))
    trust.revoke(info.thumbprint)
    with pytest.raises(Refused) as exc:
        run_asyncua(matrix.url, NAMESPACE_URI, "vic", None, late, lambda s: None)
    assert exc.value.code == ua.StatusCodes.BadCertificateRevoked
    with pytest.raises(ValueError, match="revoked"):
        trust.trust(late.cert)


def test_failed_logins_are_throttled_and_audited(matrix: Matrix) -> None:
    """5 wrong passwords from one client (address + certificate) within 60 s: the 6th attempt, even with
    the right password, is refused unchecked; other clients are not affected."""
    guesser = matrix.certs["guesser"]
    before = len(matrix.trail())
    for _ in range(5):
        with pytest.raises(Refused):
            run_asyncua(matrix.url, NAMESPACE_URI, "emil", "guess-guess", guesser, lambda s: None)
    with pytest.raises(Refused) as exc:
        run_asyncua(matrix.url, NAMESPACE_URI, "emil", None, guesser, lambda s: None)
    assert exc.value.code == DENIED
    records = matrix.trail()[before:]
    assert [(r.action, r.outcome) for r in records] == [("login_failed", "failure")] * 5 + [("login_throttled", "refused")]
    assert "throttled for 300 s" in records[4].detail and "refused unchecked" in records[5].detail
    assert run_asyncua(matrix.url, NAMESPACE_URI, "emil", None, matrix.certs["hmi"], lambda s: None) == []


# -- the checker on its own ------------------------------------------------------------------------------
def test_checker_refuses_a_uri_that_is_not_the_certificates(tmp_path: Path) -> None:
    c = make_client_cert(tmp_path, "x", trust_in=tmp_path / "srv")
    checker = CertificateChecker(TrustList(Pki(tmp_path / "srv")))
    cert = load_certificate_file(c.cert)
    assert asyncio.run(checker.check(cert, c.application_uri)) == thumbprint(cert)
    with pytest.raises(CertificateRejected) as exc:
        asyncio.run(checker.check(cert, "urn:someone:else"))
    assert exc.value.status == ua.StatusCodes.BadCertificateUriInvalid


# -- None and anonymous turned on ------------------------------------------------------------------------
@pytest.mark.slow
def test_none_and_anonymous_on_warn_at_start_and_anonymous_stays_read_only(tmp_path: Path,
                                                                          caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="gateways.security")
    control = RecordingControl()
    with ServerThread(f"opc.tcp://127.0.0.1:{free_port()}/batch-twin/", PLANT, {"R1": control},
                      security=make_security(tmp_path, allow_none=True, allow_anonymous=True)) as st:
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert any("SecurityPolicy None is ON" in w for w in warnings)
        assert any("anonymous access is ON" in w for w in warnings)
        policies = {e.SecurityPolicyUri.rsplit("#", 1)[1] for e in _endpoints(st.url)}
        assert policies == {"None", "Basic256Sha256", "Aes256_Sha256_RsaPss", "Aes128_Sha256_RsaOaep"}
        for run in CLIENTS.values():
            assert run(st.url, NAMESPACE_URI, None, None, None, _write_trip) == [DENIED]
            assert run(st.url, NAMESPACE_URI, None, None, None, _call("Hold")) == [
                (DENIED, "an anonymous session may not call Hold (batch_method needs operator or above)")]
            assert run(st.url, NAMESPACE_URI, "olga", None, None, _call("Hold")) == [(OK, "done")]
        assert control.calls == [("command", ("hold",))] * 2

        class PlainTextClient(Client):
            """A client that sends its password unencrypted over the None channel (asyncua does when the
            server's token policy names no encryption; ours names one)."""

            def server_policy(self, token_type: ua.UserTokenType) -> ua.UserTokenPolicy:
                policy = copy.copy(super().server_policy(token_type))
                policy.SecurityPolicyUri = "http://opcfoundation.org/UA/SecurityPolicy#None"
                return policy

        async def plain() -> int:
            client = PlainTextClient(st.url, timeout=10)
            client.set_user("olga")
            client.set_password(USERS["olga"][1])
            try:
                await client.connect()
            except ua.UaStatusCodeError as exc:
                return exc.code
            await client.disconnect()
            return OK

        assert asyncio.run(plain()) == DENIED
        with AuditTrail(tmp_path / "audit.sqlite", create=False) as t:
            last = [r for r in t.show() if r.action == "login_failed"][-1]
        assert (last.user, last.outcome) == ("olga", "refused") and "plain text" in last.detail


# -- twin certs --------------------------------------------------------------------------------------------
@pytest.mark.slow  # two RSA keys generated: seconds on a loaded machine
def test_twin_certs_trust_list_revoke_show_are_audited(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """The commands in-process (the CLI's main): every change and every refused one in the trail."""
    from twin_core.offline.cli import main

    c = make_client_cert(tmp_path / "clients", "hmi7")
    tp = thumbprint(load_certificate_file(c.cert))
    cfg = tmp_path / "run.toml"
    cfg.write_text(f'data_dir = "{tmp_path / "data"}"\n')
    common = ["--config", str(cfg)]
    assert main(["certs", "show", *common]) == 2
    assert "no server certificate yet" in capsys.readouterr().err
    assert main(["certs", "trust", str(c.cert), "--reason", "HMI 7 commissioned", *common]) == 0
    assert main(["certs", "trust", str(c.cert), *common]) == 2
    assert "already trusted" in capsys.readouterr().err
    assert main(["certs", "list", *common]) == 0
    assert f"{tp}  trusted" in capsys.readouterr().out
    assert main(["certs", "revoke", tp.upper(), "--reason", "HMI 7 lost", *common]) == 0
    assert main(["certs", "trust", str(c.cert), *common]) == 2
    assert main(["certs", "revoke", "00" * 20, *common]) == 2
    assert main(["certs", "revoke", "not-hex", *common]) == 2
    ensure_server_certificate(Pki(tmp_path / "data"), "urn:batch-reactor-twin:plant")
    assert main(["certs", "show", *common]) == 0
    out = capsys.readouterr().out
    assert "urn:batch-reactor-twin:plant" in out and thumbprint(load_certificate_file(Pki(tmp_path / "data").cert_path)) in out
    with AuditTrail(tmp_path / "data" / "audit.sqlite", create=False) as t:
        records = t.show()
        assert t.verify().ok
    assert [(r.action, r.outcome, r.reason) for r in records] == [
        ("certificate_change", "success", "HMI 7 commissioned"), ("certificate_change", "refused", ""),
        ("certificate_change", "success", "HMI 7 lost"), ("certificate_change", "refused", ""),
        ("certificate_change", "refused", ""), ("certificate_change", "refused", "")]
    assert all(r.role == "local" for r in records)
    assert records[0].target == f"certificate:{tp}" and records[2].old_value == "trusted"
    assert "is revoked: it cannot be trusted again" in records[3].detail
    assert "not on the trust list" in records[4].detail and "40 hex digits" in records[5].detail


def test_a_session_that_was_never_activated_may_do_nothing_and_is_audited(matrix: Matrix) -> None:
    """CreateSession without ActivateSession, then a Read: refused (asyncua's default would allow it on a
    channel without permissions), once in the trail."""
    before = len(matrix.trail())
    cert = matrix.certs["hmi"]

    async def main() -> int:
        client = await make_client(matrix.url, None, cert=cert)
        await client.connect_socket()
        try:
            await client.send_hello()
            await client.open_secure_channel()
            await client.create_session()
            params = ua.ReadParameters()
            params.NodesToRead = [ua.ReadValueId(NodeId=ua.NodeId(ua.ObjectIds.Server_ServerStatus),
                                                 AttributeId=ua.AttributeIds.Value)]
            try:
                await client.uaclient.read(params)
            except ua.UaStatusCodeError as exc:
                return exc.code
            return ua.StatusCodes.Good
        finally:
            client.disconnect_socket()

    assert asyncio.run(main()) == DENIED
    new = [r for r in matrix.trail()[before:] if r.action == "refused"]
    assert len(new) == 1 and "the session is not activated" in new[0].detail
    assert new[0].cert_thumbprint == thumbprint(load_certificate_file(cert.cert))


def test_server_security_from_the_runtime_configuration(tmp_path: Path) -> None:
    from gateways.config import config_from_mapping
    from gateways.security import SECURE_POLICIES, ServerSecurity

    default = ServerSecurity.from_config(config_from_mapping({"data_dir": str(tmp_path)}))
    assert (default.allow_none, default.allow_anonymous) == (False, False)
    assert default.policies == list(SECURE_POLICIES)
    assert (default.users_path, default.audit_path, default.pki.trusted) == (
        tmp_path / "users.json", tmp_path / "audit.sqlite", tmp_path / "pki" / "trusted")
    on = ServerSecurity.from_config(config_from_mapping({"data_dir": str(tmp_path), "opcua_allow_none": True,
                                                         "opcua_allow_anonymous": True}))
    assert on.policies == [*SECURE_POLICIES, ua.SecurityPolicyType.NoSecurity] and on.allow_anonymous
    with pytest.raises(TypeError, match="allow_none"):
        ServerSecurity(tmp_path, allow_none=1)  # type: ignore[arg-type]


def test_a_login_being_checked_does_not_stop_other_sessions(matrix: Matrix) -> None:
    """The password check runs on the login thread, not on the event loop: while one login's check is
    held on that thread, another session's Read is answered (on the loop, it would wait for the check,
    and the read would time out)."""
    import threading

    guard = matrix.st.server._guard
    assert guard is not None
    started, release = threading.Event(), threading.Event()
    original = guard.authenticator.login

    def held_login(*args: Any, **kwargs: Any) -> Any:
        started.set()
        release.wait(20.0)
        return original(*args, **kwargs)

    async def main() -> tuple[object, bool]:
        other = await make_client(matrix.url, "vic", cert=matrix.certs["hmi"], timeout_s=5.0)
        async with other:
            ns = await other.get_namespace_index(NAMESPACE_URI)
            guard.authenticator.login = held_login  # type: ignore[method-assign]
            try:
                pending = asyncio.create_task(_connect_and_close(matrix.url, "olga", matrix.certs["hmi"]))
                assert await asyncio.to_thread(started.wait, 20.0)
                value = await other.get_node(ua.NodeId(f"{PLANT}.R1.Recipe.T_trip", ns)).read_value()
                still_pending = not pending.done()
                release.set()
                await pending
            finally:
                release.set()
                guard.authenticator.login = original  # type: ignore[method-assign]
        return value, still_pending

    value, still_pending = asyncio.run(main())
    assert isinstance(value, float) and still_pending


async def _connect_and_close(url: str, user: str, cert: ClientCert) -> None:
    client = await make_client(url, user, cert=cert, timeout_s=30.0)
    async with client:
        pass
