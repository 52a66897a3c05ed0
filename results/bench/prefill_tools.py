"""Helpers shared by the H200 prefill tuning scripts (sweep_prefill.py, segment_explore.py)."""

import re
import time
from pathlib import Path

import triton.testing

T0 = time.time()


def P(*a):
    """print with the seconds since the script started"""
    print(f"[{time.time() - T0:6.1f}s]", *a, flush=True)


def bench(fn, rep=30):
    """GPU milliseconds per call of fn (CUDA events, triton's do_bench)."""
    return triton.testing.do_bench(fn, warmup=5, rep=rep)


class Spy:
    """Wraps a JIT kernel to record the compiled kernel of the last launch (registers, spills)."""

    def __init__(self, kern):
        self.kern, self.last = kern, None

    def __getitem__(self, grid):
        def run(*a, **kw):
            self.last = self.kern[grid](*a, **kw)
            return self.last
        return run

    def info(self):
        k = self.last
        try:
            return f"regs={k.n_regs} spills={k.n_spills} smem={k.metadata.shared}"
        except Exception as e:  # noqa: BLE001
            return f"(no info: {type(e).__name__})"


def write_tuning(module, tuned: dict) -> str:
    """Rewrite the one `RLA_TUNING = {...}` line of `module` (rattn_eval.kernels.swa.parallel) with
    `tuned`; returns the new line."""
    path = Path(module.__file__)
    line = "RLA_TUNING = " + repr(tuned).replace("'", '"')
    src, n = re.subn(r"^RLA_TUNING = .*?(  # noqa: E501)?$", line.replace("\\", "\\\\") + "  # noqa: E501",
                     path.read_text(), count=1, flags=re.M)
    assert n == 1, f"no RLA_TUNING line in {path}"
    path.write_text(src)
    return line
