"""The GPU rows of the tuning tables fit an sm_90 card (H100 / H200), checked on the CPU: every kernel variant the
prefill ops (forward and backward) and the decode steps launch at one shape per dtype and head dim, compiled for
sm_90 with those rows and launch settings (`sm90_compile.py`, in a subprocess), needs no more shared memory per
block than the card has. A row that asks for more fails at launch on the GPU (Triton's OutOfResources), whatever
the GPU tests cover: the tables are edited by hand, often for one dtype at a time."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import triton

# cudaDevAttrMaxSharedMemoryPerBlockOptin of the H100 and the H200: 227 KiB
SM90_SHARED_BYTES = 232448
SCRIPT = Path(__file__).with_name("sm90_compile.py")
# Kernels each (dtype, head dim) must compile, so that the check cannot pass on an empty or partial list.
EXPECTED = {"swa_fwd_kernel", "swa_bwd_dq_kernel", "swa_bwd_dkdv_kernel", "rla_segment_kernel", "rla_bwd_dq_kernel",
            "rla_bwd_dv_kernel", "rla_bwd_dk_kernel", "rla_bwd_state_kernel", "decode_step_kernel", "kv_decode_kernel"}


def _ptxas_available() -> bool:
    return (Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas").exists()


CASES = [("bfloat16", 128), ("bfloat16", 256), ("float16", 128), ("float16", 256),
         pytest.param("float32", 128, marks=pytest.mark.slow), pytest.param("float32", 256, marks=pytest.mark.slow)]


@pytest.mark.skipif(not _ptxas_available(), reason="needs the ptxas that Triton's Linux wheels bundle")
@pytest.mark.skipif(not triton.__version__.startswith("3.6."), reason="sm90_compile.py binds launches through "
                    "Triton 3.6's launcher internals (the version the dev install pins)")
@pytest.mark.parametrize("dtype,D", CASES)
def test_table_rows_fit_sm90_shared_memory(dtype, D):
    # the checkout under test first on the path, not only an installed copy of the package
    root = str(SCRIPT.parents[2])
    env = dict(os.environ, TRITON_INTERPRET="0", OPENBLAS_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))
    done = subprocess.run([sys.executable, str(SCRIPT), "--dtype", dtype, "--head-dim", str(D)], env=env,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    missing = EXPECTED - {r["kernel"] for r in rows}
    assert not missing, f"not compiled: {sorted(missing)}"
    # the host took the sm_90 paths: TMA tiles for 16-bit inputs at D <= 128, several RLA segments (carries)
    assert any(r["settings"].get("TMA") for r in rows) == (dtype != "float32" and D <= 128)
    assert any(r["settings"].get("HAS_CARRY") for r in rows if r["kernel"] == "rla_segment_kernel")
    over = [r for r in rows if r["shared"] > SM90_SHARED_BYTES]
    assert not over, "more shared memory than an sm_90 block has:\n" + "\n".join(json.dumps(r) for r in over)
