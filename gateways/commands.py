"""gateways' sub-commands of ``twin``: demo."""

from __future__ import annotations

import argparse


def cmd_demo(args: argparse.Namespace) -> int:
    from gateways.demo import run_demo
    from twin_core.recipe import DEFAULT_RECIPE, load_recipe

    recipe = load_recipe(args.recipe) if args.recipe else DEFAULT_RECIPE
    run_demo(speed=args.speed, seed=args.seed, fmu_path=args.fmu, recipe=recipe, port=args.port)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    from gateways.fmu_runner import DEFAULT_FMU

    p = sub.add_parser("demo", help="demo batch: simulated PLC over Modbus + the FMU as a live soft sensor")
    p.add_argument("--speed", type=float, default=720.0, help="plant time speed-up (default 720: 6 h in 30 s)")
    p.add_argument("--seed", type=int, default=7, help="plant random seed (charge, sensors, lab)")
    p.add_argument("--recipe", help="recipe TOML (jacket programme); default: ramp to 70 degC, 6 h")
    p.add_argument("--fmu", default=str(DEFAULT_FMU), help="the FMU to run (default dist/BatchReactorTwin.fmu)")
    p.add_argument("--port", type=int, default=0, help="PLC Modbus port on 127.0.0.1 (default: a free one)")
    p.set_defaults(func=cmd_demo)
