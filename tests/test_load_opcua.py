"""The twin's OPC UA server under load and against bad peers (bounded, fast form; the benchmark
benchmarks/bench_load.py runs the large sizes).

- N reactors x M subscribed sessions while other clients connect and drop at random (some close their
  session, some just vanish): every client that stays receives every published value of every reactor,
  in order (queues large enough that no sample may be coalesced);
- a raw TCP peer that completes the Hello/Acknowledge handshake and then sends junk is dropped (at once
  for a malformed header, else by asyncua's activation watchdog: no session activated in time), and
  the subscribed client beside it misses nothing;
- sessions opened and never closed (with and without subscriptions, the socket vanished) are closed by
  the server's session timeout (asyncua has no session-count limit: the timeout is what bounds them).
"""

from __future__ import annotations

import asyncio
import random
import socket
import struct
from pathlib import Path

import pytest
from asyncua import Client
from conftest import free_port, until
from opcua_helpers import RecordingControl, ServerThread, make_client, make_security, namespace_index, signal_node_id

from gateways.model import Value

PLANT = "plant"
VIEWER = "vic"


class Collect:
    def __init__(self) -> None:
        self.values: dict[str, list[float]] = {}

    def datachange_notification(self, node, val, data) -> None:  # noqa: ANN001
        self.values.setdefault(node.nodeid.Identifier, []).append(val)


async def _subscribe(url: str, reactors: list[str], queue: int) -> tuple[Client, Collect]:
    client = await make_client(url, VIEWER)
    await client.connect()
    ns = await namespace_index(client)
    handler = Collect()
    sub = await client.create_subscription(20, handler)
    nodes = [client.get_node(signal_node_id(ns, PLANT, r, "Estimates", "c_B")) for r in reactors]
    await sub.subscribe_data_change(nodes, queuesize=queue)
    return client, handler


def _server(tmp: Path, n: int) -> ServerThread:
    st = ServerThread(f"opc.tcp://127.0.0.1:{free_port()}/batch-twin/", PLANT,
                      {f"R{i}": RecordingControl() for i in range(1, n + 1)}, security=make_security(tmp))
    return st


async def _publish(st: ServerThread, reactors: list[str], k: int) -> None:
    for r in reactors:
        await asyncio.wrap_future(st.submit(st.server.publish(r, {"c_B": Value(1000.0 * (k + 1) + len(r))})))


def _sessions(st: ServerThread) -> int:
    return len(st.server._server.iserver._external_sessions)  # type: ignore[union-attr]


def test_subscribed_sessions_lose_no_notification_while_others_connect_and_drop(tmp_path: Path) -> None:
    n, m, rounds = 3, 6, 15
    reactors = [f"R{i}" for i in range(1, n + 1)]
    rng = random.Random(5)

    async def main() -> None:
        with _server(tmp_path, n) as st:
            await _publish(st, reactors, -1)  # a first value: every subscriber starts from it
            stay = [await _subscribe(st.url, reactors, rounds + 5) for _ in range(m)]
            await until(lambda: all(len(h.values) == n for _, h in stay))
            churn: list[Client] = []
            for k in range(rounds):
                await _publish(st, reactors, k)
                action = rng.random()
                if action < 0.4:
                    churn.append((await _subscribe(st.url, reactors, 2))[0])
                elif churn and action < 0.7:
                    await churn.pop(rng.randrange(len(churn))).disconnect()       # a clean close
                elif churn:
                    c = churn.pop(rng.randrange(len(churn)))
                    c.uaclient.protocol.transport.abort()                          # vanished
                await asyncio.sleep(0.03)  # above the 20 ms publishing interval
            for r in reactors:
                want = [(1000.0 * (k + 1) + len(r)) / 1000.0 for k in range(-1, rounds)]  # published in mol/L
                node_id = f"{PLANT}.{r}.Estimates.c_B"
                await until(lambda node_id=node_id, want=want: all(
                    len(h.values.get(node_id, [])) >= len(want) for _, h in stay), timeout_s=20)
                for _, h in stay:
                    assert h.values[node_id] == pytest.approx(want, rel=1e-12)  # all, in order
            for c, _ in stay:
                await c.disconnect()
            for c in churn:
                await c.disconnect()

    asyncio.run(main())


def _hello(url: str) -> bytes:
    body = struct.pack("<IIIII", 0, 65536, 65536, 0, 0) + struct.pack("<i", len(url)) + url.encode()
    return b"HELF" + struct.pack("<I", 8 + len(body)) + body


def test_garbage_after_the_handshake_is_dropped_without_affecting_others(tmp_path: Path) -> None:
    async def main() -> None:
        with _server(tmp_path, 1) as st:
            # asyncua closes a connection that has not activated a session within this window (default
            # 30 s): what drops a peer whose junk still parses as the start of a (huge) message.
            st.server._server.iserver.max_pending_activation_seconds = 1.0  # type: ignore[union-attr]
            await _publish(st, ["R1"], -1)
            client, h = await _subscribe(st.url, ["R1"], 50)
            node_id = f"{PLANT}.R1.Estimates.c_B"
            await until(lambda: len(h.values.get(node_id, [])) == 1)
            peers = []
            junk = [b"\xff" * 64, b"MSGF" + struct.pack("<I", 40) + bytes(32), b"OPNF" + struct.pack("<I", 12) + b"junk",
                    b"MSGF" + struct.pack("<I", 0x7FFFFFFF) + bytes(8), bytes(range(256))]
            for j in junk:
                s = socket.create_connection(("127.0.0.1", int(st.url.split(":")[2].split("/")[0])), timeout=10)
                s.sendall(_hello(st.url))
                head = s.recv(8, socket.MSG_WAITALL)
                assert head[:4] == b"ACKF"  # a valid handshake first
                s.recv(struct.unpack("<I", head[4:])[0] - 8, socket.MSG_WAITALL)
                s.sendall(j)
                peers.append(s)
            for s in peers:  # each is closed by the server (possibly after an ERR message)
                data = b""
                try:
                    while chunk := s.recv(4096):
                        data += chunk
                except ConnectionResetError:
                    pass
                assert data[:4] in (b"", b"ERRF"), data[:16]
                s.close()
            for k in range(5):
                await _publish(st, ["R1"], k)
                await asyncio.sleep(0.03)
            await until(lambda: len(h.values[node_id]) == 6)
            assert h.values[node_id] == pytest.approx([(1000.0 * (k + 1) + 2) / 1000.0 for k in range(-1, 5)], rel=1e-12)
            await client.disconnect()

    asyncio.run(main())


def test_sessions_never_closed_are_closed_by_the_session_timeout(tmp_path: Path) -> None:
    async def main() -> None:
        with _server(tmp_path, 1) as st:
            st.server._server.iserver.min_session_timeout_ms = 500  # type: ignore[union-attr]
            keeper, h = await _subscribe(st.url, ["R1"], 50)
            base = _sessions(st)
            abandoned = []
            for i in range(8):
                c = await make_client(st.url, VIEWER)
                c.session_timeout = 500  # ms; the server revises it to at least its minimum
                await c.connect()
                if i % 2 == 0:
                    sub = await c.create_subscription(50, Collect())
                    ns = await namespace_index(c)
                    await sub.subscribe_data_change(c.get_node(signal_node_id(ns, PLANT, "R1", "Estimates", "c_B")))
                abandoned.append(c)
            assert _sessions(st) == base + 8
            for c in abandoned:
                c.uaclient.protocol.transport.abort()  # gone without CloseSession
            await until(lambda: _sessions(st) == base, timeout_s=20)
            await _publish(st, ["R1"], 0)
            await until(lambda: len(h.values.get(f"{PLANT}.R1.Estimates.c_B", [])) >= 2)  # the keeper is unaffected
            await keeper.disconnect()

    asyncio.run(main())
