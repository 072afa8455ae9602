"""The ``twin`` console entry point.

Sub-commands are registered by each package through the ``twin.commands`` entry-point group
(pyproject.toml), so twin_core does not import the packages built on top of it.

This is the one place where errors are translated at the command line's boundary: every subcommand
ends a refused input (a :class:`~twin_core.errors.TwinError`) or an operating-system error (a missing
or unwritable file, a port in use, a host that does not resolve: :class:`OSError`) as
``twin <cmd>: error: ...`` on stderr with exit status 2, never a traceback (``-vv`` logs it).
Arguments that are ports or speed-ups use the shared types :func:`tcp_port` and :func:`speed_factor`,
so every subcommand refuses them the same way (argparse's ``twin <cmd>: error: argument ...``, exit 2).
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
from importlib.metadata import entry_points

from twin_core.errors import TwinError

log = logging.getLogger(__name__)


def tcp_port(text: str) -> int:
    """argparse type of a TCP port: an integer 0..65535 (0 = a free one, printed once bound)."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number (an integer 0..65535)") from None
    if not 0 <= port <= 0xFFFF:
        raise argparse.ArgumentTypeError(f"{port} is outside 0..65535 (0 = a free port)")
    return port


def speed_factor(text: str) -> float:
    """argparse type of a plant-time speed-up: plant seconds per wall second, a number > 0; ``inf`` =
    as fast as possible where the command allows it. 0 is refused: a factor of 0 would stand the plant
    still (what the API's speed 0 does), which no command-line job wants."""
    try:
        speed = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if math.isnan(speed) or speed <= 0.0:
        raise argparse.ArgumentTypeError(f"{text} must be > 0 (plant seconds per wall second; 0 would stop "
                                         "plant time)")
    return speed


def os_error_message(exc: OSError) -> str:
    """An OSError in the user's terms: the file or address it concerns, and the system's reason."""
    reason = exc.strerror or str(exc) or type(exc).__name__
    if exc.filename is not None:
        where = f"{exc.filename}" + (f" -> {exc.filename2}" if exc.filename2 is not None else "")
        return f"{where}: {reason}"
    return reason


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="twin", description="Hybrid digital twin of a jacketed batch reactor.")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for ep in sorted(entry_points(group="twin.commands"), key=lambda e: e.name):
        ep.load()(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=(logging.WARNING, logging.INFO, logging.DEBUG)[min(args.verbose, 2)],
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except TwinError as exc:
        log.debug("twin %s failed", args.command, exc_info=True)
        print(f"twin {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # Output piped into a reader that stopped early (`twin signals | head`): not an error.
        sys.stderr.close()
        return 0
    except OSError as exc:
        # A missing or unwritable file, a port in use, a host that does not resolve: the user's
        # environment, not a bug, so a message rather than a traceback (-vv logs the traceback).
        log.debug("twin %s failed", args.command, exc_info=True)
        print(f"twin {args.command}: error: {os_error_message(exc)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
