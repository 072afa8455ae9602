"""Start the simulated plant (`twin plant`) as a separate process and end it again.

gateways never imports plant_sim: the plant is another process, reached over Modbus TCP on
loopback only, exactly as a real PLC would be. :class:`PlantProcess` starts

    <python> -m <the twin command's module> plant --host 127.0.0.1 --port 0 --speed N --seed S --stop-on-eof

waits for the plant's readiness line (``PLC Modbus TCP server listening on HOST:PORT, ...``: the bound
port; no fixed sleep), and ends the process it started, by its PID, on every path: a normal end, an
exception, Ctrl-C. SIGINT first (the plant shuts down cleanly and prints ``PLC stopped``), SIGKILL if
it does not end in time. ``--stop-on-eof`` ties the plant to its stdin pipe, so even if this process
dies without cleaning up, the plant sees end of file and stops.

The child runs in its own session, so a Ctrl-C typed at the terminal reaches only this process, which
then stops the plant in order.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from importlib.metadata import entry_points
from types import TracebackType

from twin_core.errors import ParameterError, TwinError

log = logging.getLogger(__name__)

READY_LINE = re.compile(r"PLC Modbus TCP server listening on (?P<host>[^\s:]+):(?P<port>\d+)\b")
"""The readiness line `twin plant` prints once its port accepts connections."""
LOOPBACK = "127.0.0.1"


class PlantProcessError(TwinError, RuntimeError):
    """The plant process could not be started, or ended before it was ready."""


def twin_command_module() -> str:
    """The module of the ``twin`` console script (found through its entry point, so it follows moves)."""
    for ep in entry_points(group="console_scripts", name="twin"):
        return ep.module
    raise PlantProcessError("the `twin` console script is not installed (pip install -e .)")


class PlantProcess:
    """`twin plant` in a child process on loopback. The constructor does no I/O; ``start()`` (or
    ``with``) launches it and returns once it listens; ``stop()`` ends it (idempotent).

    speed: plant seconds per wall second (> 0; passed as --speed); seed: the plant's random seed;
    port: TCP port on 127.0.0.1 (0 = a free one; see ``port`` after start); extra_args: more
    `twin plant` options (e.g. ``("--config", "plant.toml")``).
    """

    def __init__(self, speed: float = 1.0, seed: int = 0, port: int = 0, *, extra_args: tuple[str, ...] = (),
                 start_timeout_s: float = 60.0, stop_timeout_s: float = 10.0) -> None:
        if isinstance(speed, bool) or not isinstance(speed, (int, float)) or not 0.0 < speed < float("inf"):
            raise ParameterError("speed", speed, "must be a finite number > 0")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ParameterError("seed", seed, "must be an int")
        if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 0xFFFF:
            raise ParameterError("port", port, "must be an int in 0..65535")
        self.speed, self.seed = float(speed), seed
        self.host, self.port = LOOPBACK, port
        self.extra_args = tuple(extra_args)
        self.start_timeout_s, self.stop_timeout_s = start_timeout_s, stop_timeout_s
        self.ready_line = ""
        self._proc: subprocess.Popen[str] | None = None
        self._lines: queue.Queue[str | None] = queue.Queue()
        self.stdout_tail: collections.deque[str] = collections.deque(maxlen=50)
        self.stderr_tail: collections.deque[str] = collections.deque(maxlen=50)
        self._readers: list[threading.Thread] = []

    @property
    def pid(self) -> int | None:
        """PID of the plant process (None before start)."""
        return self._proc.pid if self._proc is not None else None

    @property
    def returncode(self) -> int | None:
        """Exit status once the process has ended (None while it runs or before start)."""
        return self._proc.poll() if self._proc is not None else None

    def command(self) -> list[str]:
        """The command line that starts the plant."""
        return [sys.executable, "-m", twin_command_module(), "plant", "--host", self.host, "--port", str(self.port),
                "--speed", f"{self.speed:g}", "--seed", str(self.seed), "--stop-on-eof", *self.extra_args]

    def start(self) -> PlantProcess:
        """Launch the plant and wait for its readiness line; PlantProcessError (the process ended
        again) if it exits or stays silent for start_timeout_s."""
        if self._proc is not None:
            raise PlantProcessError("the plant process was already started")
        cmd = self.command()
        log.info("starting the plant: %s", " ".join(cmd))
        self._proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True, bufsize=1, start_new_session=True)
        # Both pipes are drained for the life of the process, so the plant never blocks on a full pipe.
        self._readers = [threading.Thread(target=self._drain, args=(self._proc.stdout, self.stdout_tail, True),
                                          name="plant-stdout", daemon=True),
                         threading.Thread(target=self._drain, args=(self._proc.stderr, self.stderr_tail, False),
                                          name="plant-stderr", daemon=True)]
        for t in self._readers:
            t.start()
        try:
            self._wait_ready(self._proc)
        except BaseException:
            self.stop()
            raise
        log.info("plant process %d listening on %s:%d", self._proc.pid, self.host, self.port)
        return self

    def _drain(self, stream: object, tail: collections.deque[str], forward: bool) -> None:
        for line in stream:  # type: ignore[attr-defined]
            line = line.rstrip("\n")
            tail.append(line)
            if forward:
                self._lines.put(line)
            else:
                log.debug("plant: %s", line)
        if forward:
            self._lines.put(None)

    def _wait_ready(self, proc: subprocess.Popen[str]) -> None:
        deadline = time.monotonic() + self.start_timeout_s
        while True:
            left = deadline - time.monotonic()
            if left <= 0.0:
                raise PlantProcessError(f"the plant printed no readiness line within {self.start_timeout_s:g} s")
            try:
                line = self._lines.get(timeout=left)
            except queue.Empty:
                continue
            if line is None:  # stdout closed: the plant ended
                status = proc.wait(self.stop_timeout_s)
                for t in self._readers:
                    t.join(self.stop_timeout_s)  # stderr fully read: its last lines say why
                err = "; ".join(list(self.stderr_tail)[-3:]) or "no message"
                raise PlantProcessError(f"the plant exited with status {status} before it was ready: {err}")
            m = READY_LINE.search(line)
            if m:
                self.ready_line = line
                self.port = int(m.group("port"))
                return

    def stop(self) -> int | None:
        """End the plant process (SIGINT, then SIGKILL after stop_timeout_s) and reap it; returns its exit
        status. Safe to call more than once, and when it has already ended."""
        proc = self._proc
        if proc is None:
            return None
        try:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGINT)  # Popen signals its own PID only
                try:
                    proc.wait(self.stop_timeout_s)
                except subprocess.TimeoutExpired:
                    log.warning("plant process %d did not stop on SIGINT: killing it", proc.pid)
        finally:
            # Also when interrupted while waiting: never leave the plant running.
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            if proc.stdin is not None:
                with contextlib.suppress(OSError):
                    proc.stdin.close()
        for t in self._readers:
            t.join(self.stop_timeout_s)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
        return proc.returncode

    def kill(self) -> int | None:
        """End the plant abruptly (SIGKILL: a crashed PLC, its connections cut without a goodbye) and
        reap it; returns its exit status."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.kill()
        return self.stop()

    def __enter__(self) -> PlantProcess:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
