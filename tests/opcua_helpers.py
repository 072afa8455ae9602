"""Helpers for tests of the OPC UA server: a ReactorControl that records calls and can refuse, a server
running in its own thread and event loop (so sync tests, and synchronous clients such as the `opcua`
package, can talk to it), its security (a data folder with one user per role, cheap scrypt parameters,
client certificates), and small asyncua client functions (a configured client, one Read request for
many attributes, a method call that returns the whole CallMethodResult, a write that returns the status
code)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Coroutine, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from asyncua import Client, ua
from asyncua.crypto.security_policies import SecurityPolicy, SecurityPolicyBasic256Sha256

from gateways.certs import Pki, TrustList, generate_client_certificate
from gateways.model import RequestRefused
from gateways.opcua_server import NAMESPACE_URI, BuildInfo, TwinIdentity, TwinOpcUaServer
from gateways.security import ServerSecurity
from gateways.users import TEST_ONLY_KDF, LoginThrottle, UserStore
from twin_core.recipe import Recipe

USERS = {"vic": ("viewer", "viewer-pass-1"), "olga": ("operator", "operator-pass-1"),
         "emil": ("engineer", "engineer-pass-1"), "ada": ("admin", "admin-pass-1")}
"""One user per role: name -> (role, password)."""
ADMIN = "ada"


def make_security(data_dir: Path, *, allow_none: bool = True, allow_anonymous: bool = False,
                  throttle: LoginThrottle | None = None) -> ServerSecurity:
    """A server data folder with every user of :data:`USERS` (cheap scrypt: tests only)."""
    store = UserStore(Path(data_dir) / "users.json", kdf=TEST_ONLY_KDF)
    for name, (role, password) in USERS.items():
        if store.get(name) is None:
            store.add(name, role, password)
    return ServerSecurity(Path(data_dir), allow_none=allow_none, allow_anonymous=allow_anonymous,
                          throttle=throttle if throttle is not None else LoginThrottle(max_failures=1000),
                          kdf=TEST_ONLY_KDF)


@dataclass(frozen=True)
class ClientCert:
    """A client certificate made for a test: its files and the application URI it was made for."""

    cert: Path
    key: Path
    application_uri: str


def make_client_cert(folder: Path, name: str, *, trust_in: Path | None = None) -> ClientCert:
    """A self-signed client certificate; put on the trust list of the server whose data folder is
    ``trust_in`` when given."""
    uri = f"urn:test:{name}"
    cert, key = generate_client_certificate(folder, uri, name)
    if trust_in is not None:
        TrustList(Pki(trust_in)).trust(cert)
    return ClientCert(cert, key, uri)


async def make_client(url: str, user: str | None = ADMIN, password: str | None = None, *,
                      cert: ClientCert | None = None, policy: type[SecurityPolicy] = SecurityPolicyBasic256Sha256,
                      timeout_s: float = 10.0) -> Client:
    """An asyncua client (not connected): SignAndEncrypt with ``policy`` when ``cert`` is given, else
    SecurityPolicy None; logged in as ``user`` (password from :data:`USERS` unless given; None:
    anonymous)."""
    client = Client(url, timeout=timeout_s)
    if cert is not None:
        client.application_uri = cert.application_uri
        await client.set_security(policy, str(cert.cert), str(cert.key))
    if user is not None:
        client.set_user(user)
        client.set_password(password if password is not None else USERS[user][1])
    return client

T = TypeVar("T")


@dataclass
class RecordingControl:
    """A ReactorControl for tests: records every call as (method, args); ``refuse[key] = reason`` makes
    the call whose key is the command name, "start_batch", "reset_twin", "enter_lab_result" or the
    written signal's name raise RequestRefused(key, reason)."""

    calls: list[tuple[str, tuple[Any, ...]]] = field(default_factory=list)
    refuse: dict[str, str] = field(default_factory=dict)

    def _record(self, method: str, key: str, *args: Any) -> None:
        if key in self.refuse:
            raise RequestRefused(key, self.refuse[key])
        self.calls.append((method, args))

    async def start_batch(self, recipe: Recipe) -> None:
        self._record("start_batch", "start_batch", recipe)

    async def command(self, name: str) -> None:
        self._record("command", name, name)

    async def reset_twin(self) -> None:
        self._record("reset_twin", "reset_twin")

    async def enter_lab_result(self, sample_time_s: float, c_B_mol_per_m3: float, c_C_mol_per_m3: float) -> None:
        self._record("enter_lab_result", "enter_lab_result", sample_time_s, c_B_mol_per_m3, c_C_mol_per_m3)

    async def write(self, name: str, value: float) -> None:
        self._record("write", name, name, value)


class ServerThread:
    """A TwinOpcUaServer started in a daemon thread with its own event loop; :meth:`run` runs a
    coroutine there (e.g. ``server.publish``) and returns its result. Use as a context manager."""

    def __init__(self, endpoint: str, plant: str, reactors: Mapping[str, Any], *, security: ServerSecurity,
                 history_db: Path | None = None, build_info: BuildInfo | None = None,
                 twins: Mapping[str, TwinIdentity] | None = None) -> None:
        self.security = security
        self.server = TwinOpcUaServer(endpoint, plant, reactors, security=security, history_db=history_db,
                                      build_info=build_info, twins=twins)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="opcua-server", daemon=True)

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Run ``coro`` on the server's loop; from another loop, ``await asyncio.wrap_future(...)`` it."""
        return asyncio.run_coroutine_threadsafe(coro, self._loop)

    def run(self, coro: Coroutine[Any, Any, T], timeout_s: float = 30.0) -> T:
        """Run ``coro`` on the server's loop and wait for its result (from a thread without a loop)."""
        return self.submit(coro).result(timeout_s)

    def __enter__(self) -> ServerThread:
        self._thread.start()
        self.run(self.server.start())  # returns once the server listens: readiness, not a sleep
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.run(self.server.stop())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10.0)
            self._loop.close()

    @property
    def url(self) -> str:
        return self.server.endpoint_url


async def namespace_index(client: Client) -> int:
    return await client.get_namespace_index(NAMESPACE_URI)


def signal_node_id(ns: int, plant: str, reactor: str, folder: str, name: str) -> ua.NodeId:
    """The NodeId the server gives a signal (``<plant>.<reactor>.<Folder>.<signal>``)."""
    return ua.NodeId(f"{plant}.{reactor}.{folder}.{name}", ns)


async def read_many(client: Client, requests: Iterable[tuple[ua.NodeId, ua.AttributeIds]]) -> list[ua.DataValue]:
    """One Read request for many (node, attribute) pairs."""
    params = ua.ReadParameters()
    params.NodesToRead = [ua.ReadValueId(NodeId=nid, AttributeId=attr) for nid, attr in requests]
    params.TimestampsToReturn = ua.TimestampsToReturn.Both
    return await client.uaclient.read(params)


async def call_full(client: Client, object_id: ua.NodeId, method_id: ua.NodeId,
                    *args: ua.Variant) -> ua.CallMethodResult:
    """Call a method and return the whole result (status, per-argument results, output arguments),
    without raising on a Bad status."""
    request = ua.CallMethodRequest(ObjectId=object_id, MethodId=method_id, InputArguments=list(args))
    return (await client.uaclient.call([request]))[0]


async def write_status(client: Client, nodeid: ua.NodeId, variant: ua.Variant) -> int:
    """Write a node's value; the status code the server answered (no exception on Bad)."""
    params = ua.WriteParameters()
    params.NodesToWrite = [ua.WriteValue(NodeId=nodeid, AttributeId=ua.AttributeIds.Value,
                                         Value=ua.DataValue(variant))]
    return (await client.uaclient.write(params))[0].value


class DataChanges:
    """A subscription handler collecting data changes as (node id, DataValue); :meth:`next` waits
    (with a timeout, never a fixed sleep) for the next one."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[tuple[ua.NodeId, ua.DataValue]] = asyncio.Queue()

    def datachange_notification(self, node: Any, val: Any, data: Any) -> None:
        self.queue.put_nowait((node.nodeid, data.monitored_item.Value))

    async def next(self, timeout_s: float = 10.0) -> tuple[ua.NodeId, ua.DataValue]:
        return await asyncio.wait_for(self.queue.get(), timeout_s)
