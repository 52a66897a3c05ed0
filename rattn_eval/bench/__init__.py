"""Benchmarks (`rattn-eval bench ...`): kernels, task generation, whole models, training steps, launch sweeps."""

from __future__ import annotations

import argparse
import sys


def _count(text: str) -> int:
    """One value >= 1 written as `rattn-eval run --len` takes it: 4096, 4k = 4096, 1m = 1048576."""
    from ..errors import ConfigError
    from ..tasks import parse_length

    try:
        return parse_length(text)
    except ConfigError:
        raise ValueError(text) from None


def comma_list(item, what: str):
    """argparse type: comma-separated values, each read by `item` (which raises ValueError or
    ArgumentTypeError for a bad one), at least one; `what` names them in the error."""

    def parse(text: str) -> list:
        try:
            values = [item(x) for x in text.split(",") if x.strip()]
        except (ValueError, argparse.ArgumentTypeError):
            values = None
        if not values:
            raise argparse.ArgumentTypeError(f"expected comma-separated {what}, got {text!r}")
        return values

    return parse


def single_length(text: str) -> int:
    """argparse type: one length >= 1, e.g. 4096, 32k or 1m."""
    try:
        return _count(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a length >= 1 like 4096, 32k or 1m, got {text!r}") from None


def int_at_least(low: int):
    """argparse type: an integer >= `low`."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < low:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {text!r}")
        return value

    return parse


def run_script(main, prog: str) -> int:
    """`main()` for `python -m rattn_eval.bench.NAME`: a RattnError becomes one line on stderr and exit 2,
    as under `rattn-eval bench NAME`."""
    from ..errors import RattnError

    try:
        return main() or 0
    except RattnError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2


# argparse type: comma-separated integers >= 1, each with an optional k / m suffix (4k = 4096, 1m = 1048576)
int_list = comma_list(_count, "integers >= 1 (4k = 4096)")
