"""The fmu package's sub-command of ``twin``: build-fmu."""

from __future__ import annotations

import argparse
from pathlib import Path

from twin_core.errors import ParameterError


def _start(text: str) -> tuple[str, float]:
    name, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    try:
        return name.strip(), float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{name}: {value!r} is not a number") from None


def cmd_build_fmu(args: argparse.Namespace) -> int:
    from fmu.build import DEFAULT_OUT, BuildOptions, build_fmu, default_correction

    if args.no_correction and args.correction:
        raise ParameterError("--correction", args.correction, "cannot be combined with --no-correction")
    correction = None if args.no_correction else (Path(args.correction) if args.correction else default_correction())
    opts = BuildOptions(out=Path(args.out) if args.out else DEFAULT_OUT, correction=correction,
                        model_identifier=args.model_identifier, start=dict(args.start or []), tag=args.tag)
    out = build_fmu(opts)
    print(f"wrote {out} (correction: {correction or 'none, physics only'})")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("build-fmu", help="build the FMI 2.0 co-simulation FMU (dist/BatchReactorTwin.fmu)")
    p.add_argument("--out", help="FMU file to write (default dist/BatchReactorTwin.fmu)")
    p.add_argument("--correction", help="ONNX correction to bundle (default dist/correction.onnx if present)")
    p.add_argument("--no-correction", action="store_true", help="build the physics-only FMU")
    p.add_argument("--model-identifier", default="BatchReactorTwin",
                   help="FMI model identifier (name of the binary); default BatchReactorTwin")
    p.add_argument("--start", type=_start, action="append", metavar="NAME=VALUE",
                   help="bake a start value into the FMU (parameter or input name from `twin signals`); repeatable")
    p.add_argument("--tag", default="", help="extra text in the build id (makes an otherwise identical build distinct)")
    p.set_defaults(func=cmd_build_fmu)
