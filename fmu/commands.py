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
    if args.native:
        from fmu.native_build import DEFAULT_NATIVE_OUT, NATIVE_MODEL_NAME, build_native_fmu

        mi = args.model_identifier or NATIVE_MODEL_NAME
        opts = BuildOptions(out=Path(args.out) if args.out else DEFAULT_NATIVE_OUT, correction=correction,
                            model_identifier=mi, start=dict(args.start or []), tag=args.tag)
        out = build_native_fmu(opts)
        print(f"wrote {out} (native, no Python at run time; correction: {correction or 'none, physics only'})")
        return 0
    opts = BuildOptions(out=Path(args.out) if args.out else DEFAULT_OUT, correction=correction,
                        model_identifier=args.model_identifier or "BatchReactorTwin", start=dict(args.start or []),
                        tag=args.tag)
    out = build_fmu(opts)
    print(f"wrote {out} (correction: {correction or 'none, physics only'})")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("build-fmu", help="build the FMI 2.0 co-simulation FMU (dist/BatchReactorTwin.fmu)")
    p.add_argument("--out", help="FMU file to write (default dist/BatchReactorTwin.fmu, with --native "
                                 "dist/BatchReactorTwinNative.fmu)")
    p.add_argument("--native", action="store_true",
                   help="build the native FMU: C physics and the ONNX correction compiled to C, no Python at run "
                        "time; binaries/linux64, binaries/win64 and sources/")
    p.add_argument("--correction", help="ONNX correction to bundle (default dist/correction.onnx if present)")
    p.add_argument("--no-correction", action="store_true", help="build the physics-only FMU")
    p.add_argument("--model-identifier", default=None,
                   help="FMI model identifier (name of the binary); default BatchReactorTwin (BatchReactorTwinNative "
                        "with --native)")
    p.add_argument("--start", type=_start, action="append", metavar="NAME=VALUE",
                   help="bake a start value into the FMU (parameter or input name from `twin signals`); repeatable")
    p.add_argument("--tag", default="", help="extra text in the build id (makes an otherwise identical build distinct)")
    p.set_defaults(func=cmd_build_fmu)
