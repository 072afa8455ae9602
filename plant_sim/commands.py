"""plant_sim's sub-command of ``twin``: run the simulated PLC, or generate the batch data set.

    twin plant [--port 5020|0] [--host 127.0.0.1] [--speed N|inf] [--config plant.toml] [--seed S]
               [--recipe R.toml [--sample-interval S]] [--stop-on-eof]
               [--max-connections 16] [--idle-timeout 120]
    twin plant --print-map
    twin plant generate [--batches 200] [--seed 0] [--out data/simulated_batch_data.csv]
                        [--config plant.toml] [--scan 5]
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import socket
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from plant_sim.config import PlantConfig

log = logging.getLogger(__name__)

DEFAULT_DATA = Path("data/simulated_batch_data.csv")


def _config(args: argparse.Namespace) -> PlantConfig:
    # Imports inside the commands keep `twin --help` fast.
    from plant_sim.config import load_plant_config

    return load_plant_config(args.config) if args.config else load_plant_config()


def cmd_plant(args: argparse.Namespace) -> int:
    """``twin plant``: serve the PLC (or print its map); ``twin plant generate``: the data set."""
    if getattr(args, "plant_action", None) == "generate":
        return cmd_generate(args)
    from plant_sim import modbus_server

    if args.print_map:
        print(modbus_server.format_register_map())
        return 0
    from plant_sim.plc import Plc
    from twin_core.errors import ParameterError

    cfg = _config(args)
    plc = Plc(cfg, seed=args.seed)
    if args.recipe:
        from twin_core.recipe import load_recipe

        try:
            recipe = load_recipe(args.recipe)
        except OSError as exc:
            raise ParameterError("--recipe", args.recipe, f"cannot read it: {exc.strerror or exc}") from None
        plc.load_recipe(recipe, sample_interval_s=args.sample_interval)

    def ready(server: modbus_server.PlcModbusServer) -> None:
        # The readiness line: a parent process (gateways' demo) waits for it and reads the bound port.
        idle = f"{server.idle_timeout_s:g} s" if server.idle_timeout_s else "none"
        print(f"PLC Modbus TCP server listening on {server.host}:{server.port}, scan {cfg.plc.scan_s:g} s, "
              f"speed x{args.speed:g}, seed {args.seed}, at most {server.max_connections} connections, "
              f"idle timeout {idle} (Ctrl-C stops)", flush=True)

    try:
        modbus_server.run(plc, host=args.host, port=args.port, speed=args.speed, on_ready=ready,
                          stop_on_stdin_eof=args.stop_on_eof, max_connections=args.max_connections,
                          idle_timeout_s=args.idle_timeout)
    except socket.gaierror as exc:
        raise ParameterError("--host", args.host, f"cannot resolve it: {exc.strerror or exc}") from None
    except OSError as exc:
        # In use or privileged: the port's fault; not an address of this machine: the host's.
        opt, val = ("--port", args.port) if exc.errno in (errno.EADDRINUSE, errno.EACCES) else ("--host", args.host)
        # asyncio's message repeats the address; the system's reason for the errno says it plainly
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        raise ParameterError(opt, val, f"cannot listen on {args.host}:{args.port}: {reason}") from None
    print("PLC stopped", flush=True)
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    """``twin plant generate``: write the batch data set (and its recipe and batch tables)."""
    from plant_sim import dataset

    cfg = _config(args)
    out = Path(args.out)
    s = dataset.generate(out, batches=args.batches, seed=args.seed, config=cfg, scan_s=args.scan,
                         progress=not args.no_progress)
    print(f"wrote {s.batches} batches ({s.rows} rows, {out.stat().st_size / 1e6:.2f} MB) to {out} "
          f"in {s.wall_s:.1f} s; held out: {len(s.holdout_batches)} batches; cleaning before batches "
          f"{list(s.cleaning_before)}")
    print(f"also wrote {dataset.recipes_path(out)} and {dataset.batches_path(out)}")
    print(f"sha256 {s.sha256}")
    if args.sha256_file:
        Path(args.sha256_file).write_text(f"{s.sha256}  {out.name}\n", encoding="utf-8")
        print(f"wrote {args.sha256_file}")
    return 0


def _positive_int(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"{n} must be >= 1")
    return n


def _timeout_s(text: str) -> float:
    try:
        s = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not s >= 0.0:
        raise argparse.ArgumentTypeError(f"{text} must be >= 0 s (0 = no timeout)")
    return s


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``twin plant`` (and ``twin plant generate``) to the ``twin`` parser."""
    p = sub.add_parser("plant", help="run the simulated PLC (Modbus TCP server), or generate the batch data set",
                       description="Run the simulated plant's PLC behind its Modbus TCP server until Ctrl-C, "
                                   "print its register map, or (`twin plant generate`) write the batch data set.")
    from gateways.modbus_tcp import DEFAULT_IDLE_TIMEOUT_S, DEFAULT_MAX_CONNECTIONS
    from twin_core.offline.cli import speed_factor, tcp_port

    p.add_argument("--port", type=tcp_port, default=5020,
                   help="TCP port (default 5020; 0 = a free one, printed in the readiness line)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1, loopback only)")
    p.add_argument("--speed", type=speed_factor, default=1.0,
                   help="plant seconds per wall second, > 0 (default 1; 100 = a 6 h batch in 3.6 min; inf = as "
                        "fast as possible)")
    p.add_argument("--max-connections", type=_positive_int, default=DEFAULT_MAX_CONNECTIONS, metavar="N",
                   help=f"Modbus clients served at once; one more is accepted and closed (default "
                        f"{DEFAULT_MAX_CONNECTIONS})")
    p.add_argument("--idle-timeout", type=_timeout_s, default=DEFAULT_IDLE_TIMEOUT_S, metavar="S",
                   help=f"close a connection that sends no request for S seconds of wall time, so idle clients "
                        f"cannot lock the others out (default {DEFAULT_IDLE_TIMEOUT_S:g}; 0 = never)")
    p.add_argument("--config", help="plant configuration TOML (default: plant_sim/plant.toml)")
    p.add_argument("--seed", type=int, default=0, help="random seed of the plant (default 0)")
    p.add_argument("--recipe", help="recipe TOML loaded into the PLC's settings before serving (default: the "
                                    "built-in one; a client may download another)")
    p.add_argument("--sample-interval", type=float, default=1800.0,
                   help="lab sample interval of --recipe [s] (default 1800; 0 = no samples)")
    p.add_argument("--stop-on-eof", action="store_true",
                   help="also stop when standard input reaches end of file (for a parent process)")
    p.add_argument("--print-map", action="store_true", help="print the Modbus register map and exit")
    p.set_defaults(func=cmd_plant, plant_action=None)
    actions = p.add_subparsers(dest="plant_action", metavar="ACTION")
    g = actions.add_parser("generate", help="generate the batch data set (fast path, no sockets)")
    g.add_argument("--batches", type=int, default=200, help="number of batches (default 200)")
    g.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    g.add_argument("--out", default=str(DEFAULT_DATA), help=f"output CSV (default {DEFAULT_DATA})")
    g.add_argument("--config", help="plant configuration TOML (default: plant_sim/plant.toml)")
    g.add_argument("--scan", type=float, default=5.0, help="PLC scan of the fast path [s] (default 5; must divide 60)")
    g.add_argument("--sha256-file", help="also write the file's sha256 (sha256sum format) here")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    g.set_defaults(func=cmd_plant)
