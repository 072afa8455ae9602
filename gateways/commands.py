"""gateways' sub-commands of ``twin``: run (the runtime beside the PLC) and demo."""

from __future__ import annotations

import argparse


def cmd_demo(args: argparse.Namespace) -> int:
    import logging
    import signal

    from gateways.demo import run_demo
    from twin_core.recipe import DEFAULT_RECIPE, load_recipe

    recipe = load_recipe(args.recipe) if args.recipe else DEFAULT_RECIPE
    # The demo shows what SCADA sees (the runtime's events arrive over OPC UA); its logs: errors only.
    logging.getLogger().setLevel(logging.ERROR)
    # Ctrl-C (SIGINT) ends the demo and its plant even when started from a shell that made background
    # jobs ignore it (Python then keeps SIGINT ignored); `twin run` handles SIGINT/SIGTERM itself too.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    run_demo(speed=args.speed, seed=args.seed, fmu_path=args.fmu, recipe=recipe, port=args.port,
             cut_at_s=None if args.no_cut else args.cut_at * 3600.0)
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    import asyncio
    import logging
    import signal
    import sys

    from gateways.config import load_runtime_config
    from gateways.runtime import serve

    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = load_runtime_config(args.config)

    def ready(rt, servers) -> None:  # noqa: ANN001
        for srv in servers:
            where = getattr(srv, "endpoint_url", None) or f"modbus://{srv.host}:{srv.port}"  # type: ignore[attr-defined]
            print(f"serving {type(srv).__name__}: {where}", flush=True)
        for r in rt.reactors.values():
            print(f"reactor {r.name}: PLC {r.cfg.plc_host}:{r.cfg.plc_port} unit {r.cfg.plc_unit_id}, "
                  f"FMU {r.cfg.fmu} ({r.fmu.guid})", flush=True)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await serve(cfg, stop, status_stream=None if args.quiet else sys.stderr, on_ready=ready)

    asyncio.run(main())
    print("twin run: stopped", flush=True)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    from gateways.fmu_runner import DEFAULT_FMU
    from twin_core.offline.cli import speed_factor, tcp_port

    r = sub.add_parser("run", help="the twin beside the PLC: scan it over Modbus, serve OPC UA and a Modbus mirror")
    r.add_argument("--config", help="runtime TOML (default: one reactor against `twin plant` on loopback; "
                                    "see deployment/runtime.example.toml)")
    r.add_argument("--quiet", action="store_true", help="no live status line, warnings only")
    r.set_defaults(func=cmd_run)

    p = sub.add_parser("demo", help="demo batch: simulated PLC, twin run (OPC UA + Modbus mirror) and a SCADA-like "
                       "OPC UA client")
    p.add_argument("--speed", type=speed_factor, default=720.0,
                   help="plant time speed-up, a finite number > 0 (default 720: 6 h in 30 s; 0 is refused, as by "
                        "twin plant)")
    p.add_argument("--seed", type=int, default=7, help="plant random seed (charge, sensors, lab)")
    p.add_argument("--recipe", help="recipe TOML (jacket programme); default: ramp to 70 degC, 6 h")
    p.add_argument("--fmu", default=str(DEFAULT_FMU), help="the FMU to run (default dist/BatchReactorTwin.fmu)")
    p.add_argument("--port", type=tcp_port, default=0,
                   help="PLC Modbus port on 127.0.0.1 (default 0: a free one; the port bound is printed)")
    p.add_argument("--cut-at", type=float, default=2.0, help="batch time [h] at which the PLC link is cut once "
                   "for 15 min of plant time (default 2)")
    p.add_argument("--no-cut", action="store_true", help="do not cut the PLC link")
    p.set_defaults(func=cmd_demo)
