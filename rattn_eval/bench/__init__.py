"""Benchmarks (`rattn-eval bench ...`): kernels, task generation, whole models, training steps, launch sweeps."""

from __future__ import annotations

import argparse


def int_list(text: str) -> list[int]:
    """argparse type: comma-separated integers."""
    try:
        return [int(x) for x in text.split(",") if x]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
