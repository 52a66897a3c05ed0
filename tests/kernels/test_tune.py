"""`rattn-eval bench tune`: each setting of a grid is what the kernel launches with while it is timed, the
tables come back unchanged, and a setting that fails is reported, not fatal. Under the interpreter the
kernels run (so the sweeps' inputs are valid) while a recording timer stands in for the GPU clock."""

import pytest
import torch

from rattn_eval.bench import tune
from rattn_eval.errors import ConfigError
from rattn_eval.kernels.decode import fused_recurrent as fr
from rattn_eval.kernels.decode import kv_split


def test_local_decode_sweep_swaps_in_each_setting_and_restores_the_table():
    launch, budget = fr.GPU_LAUNCH, fr._TILE_BUDGET
    seen = []

    def timer(fn):
        seen.append((dict(fr.GPU_LAUNCH), fr._TILE_BUDGET["gpu"]))
        fn()
        return 1.0

    grid = dict(programs_per_sm=(1, 8), num_warps=(2,), tile_budget=(4096, 16384))
    rows = tune.sweep_local_decode(2, 4, 2, 16, 8, dtype=torch.float32, device="cpu", timer=timer, grid=grid)
    assert [r["setting"] for r in rows] == tune.settings(grid)
    assert seen == [({"programs_per_sm": s["programs_per_sm"], "num_warps": s["num_warps"]}, s["tile_budget"])
                    for s in tune.settings(grid)]
    assert fr.GPU_LAUNCH is launch and fr._TILE_BUDGET is budget
    assert all(r["ms"] == 1.0 and r["nbytes"] > 0 for r in rows)


def test_kv_decode_sweep_swaps_in_each_setting_and_restores_the_table():
    launch = kv_split.GPU_LAUNCH
    seen = []

    def timer(fn):
        seen.append(dict(kv_split.GPU_LAUNCH))
        fn()
        return 2.0

    grid = dict(programs_per_sm=(1,), num_warps=(4, 8), num_stages=(3,), block_s=(32, 128))
    rows = tune.sweep_kv_decode(1, 100, 4, 2, 16, dtype=torch.float32, device="cpu", timer=timer, grid=grid)
    assert len(rows) == 4 and kv_split.GPU_LAUNCH is launch
    for s, got in zip(tune.settings(grid), seen):
        assert got["block_s"] == s["block_s"] and got["num_warps"] == s["num_warps"]
        assert got["block_s_256"] == launch["block_s_256"]  # the other head-dim row is left as it is
    assert rows[0]["nbytes"] == 2 * 100 * 2 * 16 * 4


def test_rla_backward_sweep_skips_value_slices_wider_than_the_head_and_reports_failures():
    grid = dict(BC=(16, 24), BV=(16, 64), num_warps=(4,), scan_warps=(4,))
    def timer(fn):
        fn()  # BC = 24 is no power of two: the backward refuses it
        return 3.0

    rows = tune.sweep_rla_backward(40, 2, 1, 16, 7, dtype=torch.float32, device="cpu", timer=timer, grid=grid)
    assert [r["setting"]["BV"] for r in rows] == [16, 16]  # BV = 64 > D = 16 is skipped
    assert rows[0]["ms"] == 3.0
    assert isinstance(rows[1]["ms"], str) and rows[1]["ms"].startswith("ValueError")
    lines = tune.format_rows("rla-backward", {}, rows, 3.5, None, top=4)
    assert lines[0].endswith("3.5000 ms") and "failed: " in lines[-1] and len(lines) == 3
    empty = tune.format_rows("rla-backward", {}, [], 3.5, None, top=4)
    assert empty[-1].endswith("no setting of the grid fits this shape")


def test_unknown_sweep_bad_shapes_and_no_gpu_are_one_clear_error():
    with pytest.raises(ConfigError, match="unknown sweep 'decode'"):
        tune.main(["--what", "decode"])
    with pytest.raises(ConfigError, match="multiple of --kv-heads"):
        tune.main(["--heads", "6", "--kv-heads", "4"])
    with pytest.raises(ConfigError, match="--head-dim 96"):
        tune.main(["--head-dim", "96"])
    with pytest.raises(ConfigError, match="must be >= 1"):
        tune.main(["--kv", "0x4096"])
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="needs a CUDA GPU"):
            tune.main(["--what", "kv-decode"])


@pytest.mark.parametrize("args", [["--kv", "1x"], ["--batches", "8,a"], ["--lengths", "4k"]])
def test_malformed_shapes_stop_at_the_argument(args, capsys):
    with pytest.raises(SystemExit) as e:
        tune.main(args)
    assert e.value.code == 2 and args[0] in capsys.readouterr().err


@pytest.mark.parametrize("kind,shape", [
    ("local-decode", dict(batch=2, H=4, Hkv=2, D=16, window=8)),
    ("kv-decode", dict(batch=1, context=50, H=4, Hkv=2, D=16)),
    ("rla-backward", dict(T=40, H=2, Hkv=1, D=16, window=7)),
], ids=["local", "kv", "rla"])
def test_the_tables_own_setting_is_timed(kind, shape):
    ran = []
    ms = tune.table_ms(kind, shape, dtype=torch.float32, device="cpu", timer=lambda fn: (fn(), ran.append(1), 4.0)[2])
    assert ms == 4.0 and ran == [1]
