"""Recipe optimisation (offline; scipy allowed) and the temperature-profile study. To be completed."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    """Register ``twin optimize`` and ``twin study``."""
