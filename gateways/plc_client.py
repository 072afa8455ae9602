"""Modbus TCP client of the PLC: typed reads and writes driven by the PLC register map.

Addresses and encodings come from twin_core.signals (generated from the signal table), so
this client never hard-codes a register. Reads are grouped into one request per contiguous block
of input registers; the recipe download is one write-multiple request (atomic in the PLC).
:meth:`PlcClient.read_sim_truth` reads the simulated plant's hidden truth (the SIMULATION ONLY block
at input register 900: for scoring; a real PLC has no such registers).
A Modbus exception response becomes :class:`PlcRequestError` carrying the exception code.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from pymodbus.client import AsyncModbusTcpClient, ModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException

from twin_core.errors import TwinError
from twin_core.recipe import Recipe
from twin_core.signals.plc import PLC_MEASUREMENTS, PLC_SIM_TRUTH, RECIPE_MAX_POINTS, register_entry
from twin_core.signals.table import Signal

log = logging.getLogger(__name__)


class PlcRequestError(TwinError, IOError):
    """The PLC refused a request (Modbus exception ``code``) or could not be reached (code None)."""

    def __init__(self, what: str, code: int | None, detail: str = "") -> None:
        self.code = code
        reason = {1: "illegal function", 2: "illegal data address", 3: "illegal data value",
                  4: "device failure"}.get(code or 0, detail or "no answer")
        # A detail that says more than the exception code (a check made here) is kept; pymodbus's
        # text of an exception response repeats the code.
        extra = f": {detail}" if code and detail and "ExceptionResponse" not in detail else ""
        super().__init__(f"{what}: {reason}" + (f" (exception {code})" if code else "") + extra)


@dataclass(frozen=True)
class _Block:
    start: int
    count: int
    names: tuple[str, ...]


def input_blocks(signals: Iterable[Signal]) -> tuple[_Block, ...]:
    """Contiguous runs of the input registers holding ``signals`` (one read request each)."""
    return _blocks(sorted((s.name for s in signals), key=lambda n: register_entry(n).binding.address))


def _blocks(ordered: list[str]) -> tuple[_Block, ...]:
    """Contiguous runs of the registers of ``ordered`` (names sorted by address)."""
    blocks: list[_Block] = []
    start = end = -1
    names: list[str] = []
    for name in ordered:
        b = register_entry(name).binding
        if names and b.address <= end:
            end = b.address + b.width
            names.append(name)
        else:
            if names:
                blocks.append(_Block(start, end - start, tuple(names)))
            start, end, names = b.address, b.address + b.width, [name]
    if names:
        blocks.append(_Block(start, end - start, tuple(names)))
    return tuple(blocks)


MEASUREMENT_BLOCKS = input_blocks(PLC_MEASUREMENTS)
SIM_TRUTH_BLOCKS = input_blocks(PLC_SIM_TRUTH)
"""The simulation-only truth block: one request."""


class PlcClient:
    """Synchronous Modbus TCP client of the simulated (or a real) PLC.

    The constructor does no I/O; ``connect()`` (or ``with``) opens the connection.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 5020, timeout_s: float = 5.0,
                 device_id: int = 1) -> None:
        self.host, self.port, self.device_id = host, port, device_id
        self._client = ModbusTcpClient(host, port=port, timeout=timeout_s, retries=1)

    def connect(self) -> PlcClient:
        if not self._client.connect():
            raise PlcRequestError(f"connect to {self.host}:{self.port}", None, "connection refused")
        return self

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> PlcClient:
        return self.connect()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def read_measurements(self) -> dict[str, float]:
        """Every PLC measurement, decoded to its SI unit (one request per register block)."""
        return self._read_blocks(MEASUREMENT_BLOCKS)

    def read_sim_truth(self) -> dict[str, float]:
        """SIMULATION ONLY: the simulated plant's hidden truth (input registers 900..), one request;
        ``sim_truth_scan_count`` says which scan it belongs to (compare with ``scan_count``)."""
        return self._read_blocks(SIM_TRUTH_BLOCKS)

    def _read_blocks(self, blocks: tuple[_Block, ...]) -> dict[str, float]:
        out: dict[str, float] = {}
        for blk in blocks:
            what = f"read input registers {blk.start}+{blk.count}"
            try:
                r = self._client.read_input_registers(blk.start, count=blk.count, device_id=self.device_id)
            except ModbusException as exc:
                raise PlcRequestError(what, None, str(exc)) from exc
            decode_block(blk, _check(what, r).registers, out)  # type: ignore[attr-defined]
        return out

    def write(self, name: str, value: float) -> None:
        """Write one holding-register setting by signal name (value in its SI unit)."""
        b = register_entry(name).binding
        r = self._client.write_registers(b.address, list(b.encode(value)), device_id=self.device_id)
        _check(f"write {name}={value}", r)

    def command(self, name: str) -> None:
        """Issue a PLC command (start, hold, resume, abort, reset, ack_alarms)."""
        b = register_entry(f"cmd_{name}").binding
        r = self._client.write_coil(b.address, True, device_id=self.device_id)
        _check(f"command {name}", r)

    def download_recipe(self, recipe: Recipe, sample_interval_s: float) -> None:
        """Write a jacket-programme recipe in one write-multiple request (the PLC applies it atomically)."""
        start, words = recipe_words(recipe, sample_interval_s)
        r = self._client.write_registers(start, words, device_id=self.device_id)
        _check(f"download recipe {recipe.name}", r)


class AsyncPlcClient:
    """The same client on asyncio (the runtime: one event loop serves every reactor).

    The constructor does no I/O; ``await connect()`` opens the connection (PlcRequestError when it
    cannot); pymodbus's own reconnection is off: the runtime decides when to try again.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 5020, timeout_s: float = 2.0,
                 device_id: int = 1) -> None:
        self.host, self.port, self.device_id = host, port, device_id
        self.timeout_s = timeout_s
        self._client = AsyncModbusTcpClient(host, port=port, timeout=timeout_s, retries=0, reconnect_delay=0)

    @property
    def connected(self) -> bool:
        return bool(self._client.connected)

    async def connect(self) -> AsyncPlcClient:
        try:
            ok = await self._client.connect()
        except (OSError, ModbusException) as exc:
            raise PlcRequestError(f"connect to {self.host}:{self.port}", None, str(exc)) from exc
        if not ok:
            raise PlcRequestError(f"connect to {self.host}:{self.port}", None, "connection refused")
        return self

    def close(self) -> None:
        self._client.close()

    async def read_measurements(self) -> dict[str, float]:
        """Every PLC measurement in its SI unit (one request per register block)."""
        return await self._read_blocks(MEASUREMENT_BLOCKS)

    async def read_sim_truth(self) -> dict[str, float]:
        """SIMULATION ONLY: the simulated plant's hidden truth (see PlcClient.read_sim_truth)."""
        return await self._read_blocks(SIM_TRUTH_BLOCKS)

    async def read_settings(self, names: Iterable[str]) -> dict[str, float]:
        """Holding-register settings by name, in their SI units (one request per contiguous block)."""
        out: dict[str, float] = {}
        for blk in setting_blocks(names):
            what = f"read holding registers {blk.start}+{blk.count}"
            r = await self._request(what, lambda b=blk: self._client.read_holding_registers(
                b.start, count=b.count, device_id=self.device_id))
            decode_block(blk, r.registers, out)
        return out

    async def _read_blocks(self, blocks: tuple[_Block, ...]) -> dict[str, float]:
        out: dict[str, float] = {}
        for blk in blocks:
            what = f"read input registers {blk.start}+{blk.count}"
            r = await self._request(what, lambda b=blk: self._client.read_input_registers(
                b.start, count=b.count, device_id=self.device_id))
            decode_block(blk, r.registers, out)
        return out

    async def _request(self, what: str, call: Callable[[], Awaitable[Any]]) -> Any:
        try:
            r = await call()  # pymodbus raises on the call itself when not connected
        except ModbusIOException as exc:  # pymodbus's "No response received after 0 retries, ..."
            raise PlcRequestError(what, None, f"no answer within {self.timeout_s:g} s") from exc
        except ConnectionException as exc:
            raise PlcRequestError(what, None, "not connected") from exc
        except (TimeoutError, ModbusException, OSError) as exc:
            raise PlcRequestError(what, None, str(exc) or type(exc).__name__) from exc
        return _check(what, r)

    async def write(self, name: str, value: float) -> None:
        """Write one holding-register setting by signal name (value in its SI unit)."""
        b = register_entry(name).binding
        await self._request(f"write {name}={value}",
                            lambda: self._client.write_registers(b.address, list(b.encode(value)), device_id=self.device_id))

    async def command(self, name: str) -> None:
        """Issue a PLC command (start, hold, resume, abort, reset, ack_alarms)."""
        b = register_entry(f"cmd_{name}").binding
        await self._request(f"command {name}", lambda: self._client.write_coil(b.address, True, device_id=self.device_id))

    async def download_recipe(self, recipe: Recipe, sample_interval_s: float) -> None:
        """Write a jacket-programme recipe in one write-multiple request (the PLC applies it atomically)."""
        start, words = recipe_words(recipe, sample_interval_s)
        await self._request(f"download recipe {recipe.name}",
                            lambda: self._client.write_registers(start, words, device_id=self.device_id))


def _check(what: str, response: object) -> Any:
    """The response, or PlcRequestError for none or a Modbus exception response."""
    if response is None:
        raise PlcRequestError(what, None)
    if response.isError():  # type: ignore[attr-defined]
        raise PlcRequestError(what, getattr(response, "exception_code", None), str(response))
    return response


def decode_block(blk: _Block, words: list[int], out: dict[str, float]) -> None:
    """Decode the registers of one block into ``out`` (signal name -> SI value)."""
    for name in blk.names:
        b = register_entry(name).binding
        i = b.address - blk.start
        out[name] = b.decode(words[i:i + b.width])


def setting_blocks(names: Iterable[str]) -> tuple[_Block, ...]:
    """Contiguous runs of the holding registers holding the settings ``names``."""
    return _blocks(sorted(names, key=lambda n: register_entry(n).binding.address))


def recipe_words(recipe: Recipe, sample_interval_s: float) -> tuple[int, list[int]]:
    """(first address, register words) of a recipe download: header and every programme point in one
    contiguous write (unused points repeat the last one so every register holds a valid value)."""
    if recipe.mode != "jacket":
        raise PlcRequestError(f"recipe {recipe.name}", 3, "the PLC runs jacket programmes only")
    n = len(recipe.times_s)
    if n > RECIPE_MAX_POINTS:
        raise PlcRequestError(f"recipe {recipe.name}", 3, f"more than {RECIPE_MAX_POINTS} points")
    values = {"recipe_n_points": n, "recipe_mode": 0, "recipe_end_time": recipe.end_time_s,
              "recipe_sample_interval": sample_interval_s}
    for i in range(RECIPE_MAX_POINTS):
        j = min(i, n - 1)
        values[f"recipe_time_{i}"] = recipe.times_s[j] if i < n else recipe.times_s[-1]
        values[f"recipe_T_{i}"] = recipe.temps_K[j]
    entries = sorted((register_entry(k) for k in values), key=lambda e: e.binding.address)
    start = entries[0].binding.address
    words: list[int] = []
    for e in entries:
        if e.binding.address != start + len(words):
            raise PlcRequestError("recipe download", None, f"recipe registers not contiguous at {e.name}")
        words += e.binding.encode(values[e.name])
    return start, words
