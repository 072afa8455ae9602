"""The PLC as a Modbus device, without sockets: the register image and request handling.

:class:`PlcModbusDevice` turns one request PDU (function code + data) into one response PDU, using
the register map generated from twin_core.signals. pymodbus (pinned) decodes the request PDUs
and encodes the responses; the checks and the translation to PLC calls are ours, so every refusal has
the exception code the Modbus application protocol specifies:

    01 illegal function  function code not implemented (only 1, 3, 4, 5, 6, 15, 16 are);
    02 illegal address   any register or coil of the request outside the mapped addresses
                         (gaps between blocks included, partial overlaps included);
    03 illegal value     malformed PDU or quantity out of range; value NaN or outside the signal's
                         min/max; half of a float32/uint32 written; a coil value other than
                         0x0000/0xFF00; more than one command in one request; the PLC refused
                         (PlcWriteError / PlcCommandError: wrong phase ...). Nothing changes.
    04 device failure    the PLC raised another TwinError (a bug: logged).

Reads never have side effects. After a successful write the image is refreshed at once, so a read
that follows a write sees it (the scan loop refreshes it after every scan tick).

The generic part (the register image and its FC1/3/4 reads, the exception responses and the dispatch
on the function code) is gateways.modbus_tcp, the project's one Modbus server layer, shared with the
twin's read-only mirror; what is here is the PLC's own: its writes, its commands and its refusals.
"""

from __future__ import annotations

import logging
import math
import struct
from collections.abc import Iterable, Sequence

from pymodbus.pdu.bit_message import (
    WriteMultipleCoilsRequest,
    WriteMultipleCoilsResponse,
    WriteSingleCoilResponse,
)
from pymodbus.pdu.register_message import (
    WriteMultipleRegistersRequest,
    WriteMultipleRegistersResponse,
    WriteSingleRegisterRequest,
    WriteSingleRegisterResponse,
)

from gateways.modbus_tcp import (
    FC_READ_COILS,
    FC_READ_HOLDING,
    FC_READ_INPUT,
    FC_WRITE_COIL,
    FC_WRITE_COILS,
    FC_WRITE_REGISTER,
    FC_WRITE_REGISTERS,
    ExcCodes,
    ModbusRequestError,
    RegisterImage,
    answer,
    decode_request,
    exception_pdu,
    is_exception,
    pdu_bytes,
)
from plant_sim.interface import PlcCommandError, PlcPort, PlcWriteError
from twin_core.errors import TwinError
from twin_core.signals.modbus import RegisterEntry
from twin_core.signals.plc import PLC_REGISTER_MAP

__all__ = ["SUPPORTED_FUNCTION_CODES", "ModbusRequestError", "PlcModbusDevice", "exception_pdu"]

log = logging.getLogger(__name__)

SUPPORTED_FUNCTION_CODES = (FC_READ_COILS, FC_READ_HOLDING, FC_READ_INPUT, FC_WRITE_COIL, FC_WRITE_REGISTER,
                            FC_WRITE_COILS, FC_WRITE_REGISTERS)
"""FC2 (discrete inputs) is absent because the PLC has none; FC 0x17, 0x16, 0x07, 0x08, 0x14, 0x2B are
not implemented: all answer exception 01."""

MAX_WRITE_REGISTERS = 123
MAX_WRITE_COILS = 1968
COIL_ON, COIL_OFF = 0xFF00, 0x0000


class PlcModbusDevice:
    """Register image of a PLC and the handler of Modbus request PDUs (no I/O; not thread-safe).

    The snapshot keys are the register map's signal names (the simulation hooks included); writes
    go to ``plc.write_setting`` / ``plc.write_settings`` (settings, sim_sensor_fault), commands to
    ``plc.command`` (coil ``cmd_<name>`` -> ``command(name)``; coil ``sim_inject_runaway`` ->
    ``write_setting("sim_inject_runaway", 0 or 1)``). The image, its reads and the exception
    responses are gateways.modbus_tcp's (the one Modbus server layer); the writes are the PLC's own.
    """

    def __init__(self, plc: PlcPort, entries: Iterable[RegisterEntry] = PLC_REGISTER_MAP) -> None:
        self.plc = plc
        self.image = RegisterImage(entries, ("coil", "input", "holding"))
        self.entries = self.image.entries
        self._owner = self.image.owner
        # What refresh() does per entry, resolved once; command coils always read back 0.
        self._plan = [(e.signal.name, e.binding, self.image.words[e.binding.table], tuple(e.addresses))
                      for e in self.entries if e.kind != "command"]
        self._published: list[object] = [None] * len(self._plan)
        self._handlers = {FC_READ_HOLDING: self.image.read_registers, FC_READ_INPUT: self.image.read_registers,
                          FC_READ_COILS: self.image.read_coils, FC_WRITE_REGISTER: self._write_register,
                          FC_WRITE_REGISTERS: self._write_registers, FC_WRITE_COIL: self._write_coil,
                          FC_WRITE_COILS: self._write_coils}
        self.requests = 0
        self.exceptions = 0

    # -- image ---------------------------------------------------------------------------------
    def refresh(self) -> None:
        """Re-encode the whole image from ``plc.snapshot()`` (measurements saturate, see encode)."""
        snap = self.plc.snapshot()
        published = self._published
        for i, (name, binding, img, addresses) in enumerate(self._plan):
            v = snap[name]
            old = published[i]
            # Most values (settings, status) do not change from one tick to the next: skip them. The same
            # NaN object compares by identity; 0.0 and -0.0 count as equal (both decode to zero).
            if v is old or v == old:
                continue
            published[i] = v
            for a, w in zip(addresses, binding.encode(v, saturate=True), strict=True):
                img[a] = w

    def read_words(self, table: str, address: int, count: int) -> list[int]:
        """Raw words (or 0/1 bits) of the image; ModbusRequestError(02) if any is unmapped."""
        return self.image.read_words(table, address, count)

    # -- requests ------------------------------------------------------------------------------
    def handle(self, pdu: bytes) -> bytes:
        """Response PDU for one request PDU (an exception response when refused)."""
        self.requests += 1
        response = answer(pdu, self._handlers, "PLC")
        if is_exception(response):
            self.exceptions += 1
        return response

    def _check_mapped(self, table: str, address: int, count: int) -> None:
        self.image.check_mapped(table, address, count)

    def _entries_covered(self, table: str, address: int, count: int) -> list[RegisterEntry]:
        """Entries a write of ``count`` words at ``address`` touches; each must be covered whole."""
        self._check_mapped(table, address, count)
        owner = self._owner[table]
        out: list[RegisterEntry] = []
        end = address + count
        for a in range(address, end):
            e, i = owner[a]
            if i == 0:
                if e.binding.address + e.binding.width > end:
                    raise ModbusRequestError(ExcCodes.ILLEGAL_VALUE, f"write covers only part of {e.name}")
                out.append(e)
            elif a == address:
                raise ModbusRequestError(ExcCodes.ILLEGAL_VALUE, f"write starts inside {e.name}")
        return out

    @staticmethod
    def _value(e: RegisterEntry, words: Sequence[int]) -> float:
        """Decoded, range-checked value of a write to ``e``."""
        if e.access == "R":
            raise ModbusRequestError(ExcCodes.ILLEGAL_ADDRESS, f"{e.name} is read-only")
        v = e.binding.decode(words)
        s = e.signal
        if math.isnan(v) or not s.min <= v <= s.max:
            raise ModbusRequestError(ExcCodes.ILLEGAL_VALUE, f"{e.name}={v!r} outside [{s.min}, {s.max}]")
        return int(v) if s.type in ("Integer", "Boolean") else v

    def _apply_settings(self, values: dict[str, float]) -> None:
        try:
            if len(values) == 1:
                ((name, v),) = values.items()
                self.plc.write_setting(name, v)
            else:
                self.plc.write_settings(values)
        except PlcWriteError as exc:
            raise ModbusRequestError(ExcCodes.ILLEGAL_VALUE, f"PLC refused: {exc}") from None
        except TwinError as exc:
            log.error("PLC failed on write %s: %s", values, exc)
            raise ModbusRequestError(ExcCodes.DEVICE_FAILURE, f"PLC failed: {exc}") from None
        self.refresh()

    def _write_register(self, pdu: bytes) -> bytes:
        req = WriteSingleRegisterRequest()
        decode_request(req, pdu, 5)
        (e,) = self._entries_covered("holding", req.address, 1)
        self._apply_settings({e.signal.name: self._value(e, req.registers)})
        return pdu_bytes(WriteSingleRegisterResponse(address=req.address, registers=list(req.registers)))

    def _write_registers(self, pdu: bytes) -> bytes:
        req = WriteMultipleRegistersRequest()
        decode_request(req, pdu)
        if not 1 <= req.count <= MAX_WRITE_REGISTERS or req.byte_count != 2 * req.count \
                or len(pdu) != 6 + 2 * req.count:
            raise ModbusRequestError(ExcCodes.ILLEGAL_VALUE, f"quantity {req.count} / byte count {req.byte_count} "
                                     f"/ PDU length {len(pdu)} inconsistent")
        values: dict[str, float] = {}
        for e in self._entries_covered("holding", req.address, req.count):
            k = e.binding.address - req.address
            values[e.signal.name] = self._value(e, req.registers[k:k + e.binding.width])
        self._apply_settings(values)
        return pdu_bytes(WriteMultipleRegistersResponse(address=req.address, count=req.count))

    def _apply_coil(self, e: RegisterEntry, on: bool) -> None:
        if e.kind == "command":
            if not on:
                return  # writing 0 to a command coil is a no-op: it always reads back 0
            name = e.signal.name.removeprefix("cmd_")
            try:
                self.plc.command(name)
            except PlcCommandError as exc:
                raise ModbusRequestError(ExcCodes.ILLEGAL_VALUE, f"PLC refused {name}: {exc}") from None
            except TwinError as exc:
                log.error("PLC failed on command %s: %s", name, exc)
                raise ModbusRequestError(ExcCodes.DEVICE_FAILURE, f"PLC failed: {exc}") from None
            self.refresh()
        else:
            self._apply_settings({e.signal.name: int(on)})

    def _write_coil(self, pdu: bytes) -> bytes:
        if len(pdu) != 5:
            raise ModbusRequestError(ExcCodes.ILLEGAL_VALUE, f"PDU of {len(pdu)} bytes, expected 5")
        address, raw = struct.unpack(">HH", pdu[1:5])
        if raw not in (COIL_ON, COIL_OFF):
            # pymodbus would read any non-zero value as ON; the protocol allows only these two
            raise ModbusRequestError(ExcCodes.ILLEGAL_VALUE, f"coil value 0x{raw:04X} is neither 0xFF00 nor 0x0000")
        self._check_mapped("coil", address, 1)
        self._apply_coil(self._owner["coil"][address][0], raw == COIL_ON)
        return pdu_bytes(WriteSingleCoilResponse(address=address, bits=[raw == COIL_ON]))

    def _write_coils(self, pdu: bytes) -> bytes:
        req = WriteMultipleCoilsRequest()
        decode_request(req, pdu)
        n_bytes = (req.count + 7) // 8
        if not 1 <= req.count <= MAX_WRITE_COILS or req.byte_count != n_bytes or len(pdu) != 6 + n_bytes:
            raise ModbusRequestError(ExcCodes.ILLEGAL_VALUE, f"quantity {req.count} / byte count {req.byte_count} "
                                     f"/ PDU length {len(pdu)} inconsistent")
        self._check_mapped("coil", req.address, req.count)
        targets = [(self._owner["coil"][req.address + k][0], bool(b)) for k, b in enumerate(req.bits)]
        # Commands are not transactional: two in one request could half-succeed, so one at most.
        if sum(1 for e, on in targets if on and e.kind == "command") > 1:
            raise ModbusRequestError(ExcCodes.ILLEGAL_VALUE, "more than one command in one request")
        for e, on in targets:
            if e.kind != "command":
                self._value(e, [int(on)])
        for e, on in targets:
            self._apply_coil(e, on)
        return pdu_bytes(WriteMultipleCoilsResponse(address=req.address, count=req.count))
