"""`rattn-eval bench tune`: each setting of a grid is what the kernel launches with while it is timed, the
tables come back unchanged, and a setting that fails is reported, not fatal. Under the interpreter the
kernels run (so the sweeps' inputs are valid) while a recording timer stands in for the GPU clock."""

import json

import pytest
import torch

from rattn_eval.bench import tune
from rattn_eval.errors import ConfigError
from rattn_eval.kernels.decode import fused_recurrent as fr
from rattn_eval.kernels.decode import kv_split


def test_local_decode_sweep_swaps_in_each_setting_and_restores_the_table():
    launch, blocks = fr.GPU_LAUNCH, fr._BLOCKS
    seen = []

    def timer(fn):
        seen.append((dict(fr.GPU_LAUNCH), dict(fr._BLOCKS["gpu"])))
        fn()
        return 1.0

    grid = dict(programs_per_sm=(1, 8), num_warps=(2,), block_s=(16, 64), block_f=(32,))
    rows = tune.sweep_local_decode(2, 4, 2, 16, 8, dtype=torch.float32, device="cpu", timer=timer, grid=grid)
    assert [r["setting"] for r in rows] == tune.settings(grid)
    assert seen == [({"programs_per_sm": s["programs_per_sm"], "num_warps": s["num_warps"]},
                     {"block_s": s["block_s"], "block_f": s["block_f"]}) for s in tune.settings(grid)]
    assert fr.GPU_LAUNCH is launch and fr._BLOCKS is blocks
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
    assert empty[-1].endswith("no setting of the grid is left (none fits this shape, or --skip left out the rest)")


@pytest.mark.parametrize("part", ["dkdv", "dq"])
def test_swa_backward_sweep_launches_each_setting_for_its_kernel_alone(part, monkeypatch):
    from rattn_eval.kernels.swa import backward as swa_bwd

    launched = []
    real = swa_bwd.launch_swa_bwd

    def launch(*args, cfg, need_dq, need_dkdv, **kwargs):
        launched.append((cfg, need_dq, need_dkdv))
        return real(*args, cfg=cfg, need_dq=need_dq, need_dkdv=need_dkdv, **kwargs)

    monkeypatch.setattr(swa_bwd, "launch_swa_bwd", launch)
    table = swa_bwd.bwd_config(16, torch.float32)
    grid = dict(BM=(16, 24), BN=(32,), num_warps=(4,), num_stages=(1,))
    rows = tune.sweep_swa_backward(part, 40, 2, 1, 16, 7, dtype=torch.float32, device="cpu",
                                   timer=lambda fn: (fn(), 5.0)[1], grid=grid)
    assert [r["setting"] for r in rows] == tune.settings(grid) and rows[0]["kind"] == f"swa-backward-{part}"
    other = "dq" if part == "dkdv" else "dkdv"
    for (cfg, need_dq, need_dkdv), s in zip(launched, tune.settings(grid)):
        assert cfg[part] == s and cfg[other] == table[other]  # the other kernel's entry is the table's
        assert (need_dq, need_dkdv) == (part == "dq", part == "dkdv")
    assert rows[0]["ms"] == 5.0
    assert isinstance(rows[1]["ms"], str)  # BM = 24 is no power of two: reported, not fatal
    assert swa_bwd.bwd_config(16, torch.float32) == table


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


@pytest.mark.parametrize("args", [["--kv", "1x"], ["--batches", "8,a"], ["--lengths", "4kk"]])
def test_malformed_shapes_stop_at_the_argument(args, capsys):
    with pytest.raises(SystemExit) as e:
        tune.main(args)
    assert e.value.code == 2 and args[0] in capsys.readouterr().err


@pytest.mark.parametrize("kind,shape", [
    ("local-decode", dict(batch=2, H=4, Hkv=2, D=16, window=8)),
    ("kv-decode", dict(batch=1, context=50, H=4, Hkv=2, D=16)),
    ("rla-backward", dict(T=40, H=2, Hkv=1, D=16, window=7)),
    ("swa-backward-dkdv", dict(T=40, H=2, Hkv=1, D=16, window=7)),
    ("swa-backward-dq", dict(T=40, H=2, Hkv=1, D=16, window=7)),
], ids=["local", "kv", "rla", "swa-dkdv", "swa-dq"])
def test_the_tables_own_setting_is_timed(kind, shape):
    ran = []
    ms = tune.table_ms(kind, shape, dtype=torch.float32, device="cpu", timer=lambda fn: (fn(), ran.append(1), 4.0)[2])
    assert ms == 4.0 and ran == [1]


def test_kv_contexts_read_like_run_len():
    assert tune._kv_shapes("1x32k,8x32768") == [(1, 32768), (8, 32768)]


def test_skip_leaves_out_the_settings_with_all_the_given_values():
    grid = dict(BC=(32, 64), BV=(32, 64), num_warps=(4, 8))
    kept = tune.settings(grid, [tune.parse_skip("BC=64,BV=32,num_warps=8"), tune.parse_skip("BC=32")])
    assert len(kept) == 3 and all(s["BC"] == 64 for s in kept)
    assert dict(BC=64, BV=32, num_warps=8) not in kept and dict(BC=64, BV=32, num_warps=4) in kept
    assert tune.setting_text(dict(BC=64, BV=32)) == "BC=64,BV=32"
    assert tune.parse_skip(tune.setting_text(dict(BC=64, BV=32))) == dict(BC=64, BV=32)


@pytest.mark.parametrize("text", ["BC=x", "BC64", "colour=3", ""])
def test_a_malformed_skip_stops_at_the_argument(text, capsys):
    with pytest.raises(SystemExit) as e:
        tune.main(["--skip", text])
    assert e.value.code == 2 and "--skip" in capsys.readouterr().err


def test_a_setting_that_breaks_the_cuda_context_stops_the_sweep_and_names_itself():
    """After an illegal memory access nothing more runs on the GPU in the process: the sweep must not go on
    reporting every later setting as failed, and the table must come back."""
    launch = kv_split.GPU_LAUNCH
    timed = []

    def timer(fn):
        timed.append(dict(kv_split.GPU_LAUNCH))
        if kv_split.GPU_LAUNCH["num_warps"] == 8:
            raise RuntimeError("CUDA error: an illegal memory access was encountered\nmore text")
        if kv_split.GPU_LAUNCH["block_s"] == 32:
            raise RuntimeError("out of resource: shared memory")  # an ordinary failure: listed, the sweep goes on
        return 1.0

    grid = dict(programs_per_sm=(1,), num_warps=(4, 8), num_stages=(3,), block_s=(32, 64))
    with pytest.raises(ConfigError, match=r"num_warps=8,num_stages=3,block_s=32 broke the CUDA context .*"
                                          r"illegal memory access.*--skip programs_per_sm=1,num_warps=8"):
        tune.sweep_kv_decode(1, 50, 4, 2, 16, dtype=torch.float32, device="cpu", timer=timer, grid=grid)
    assert len(timed) == 3 and kv_split.GPU_LAUNCH is launch
    skip = [tune.parse_skip("num_warps=8")]
    rows = tune.sweep_kv_decode(1, 50, 4, 2, 16, dtype=torch.float32, device="cpu", timer=timer, grid=grid, skip=skip)
    assert [r["ms"] for r in rows] == ["RuntimeError: out of resource: shared memory", 1.0]


def test_the_tables_own_setting_breaking_the_context_says_to_change_the_table():
    def timer(fn):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    with pytest.raises(ConfigError, match=r"kv-decode table's own setting broke the CUDA context .*illegal memory "
                                          r"access.*GPU_LAUNCH in rattn_eval/kernels/decode/kv_split.py"):
        tune.table_ms("kv-decode", dict(batch=1, context=50, H=4, Hkv=2, D=16), dtype=torch.float32, device="cpu",
                      timer=timer)


def test_a_stopped_run_keeps_the_finished_sweeps_and_says_where_it_stopped(tmp_path, monkeypatch):
    """The second kv shape loses the CUDA context: the first shape's rows and the reason are written."""
    calls = []

    def sweep(batch, context, H, Hkv, D, *, dtype, device, skip):
        calls.append(context)
        if len(calls) == 2:
            raise ConfigError("the kv-decode setting num_warps=8 broke the CUDA context (...): rerun with --skip ...")
        return [dict(kind="kv-decode", shape=dict(batch=batch, context=context), setting=dict(num_warps=4), ms=1.5,
                     nbytes=3000)]

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "a test GPU")
    monkeypatch.setattr(tune, "copy_bandwidth", lambda: 1000.0)
    monkeypatch.setattr(tune, "table_ms", lambda *a, **k: 2.0)
    monkeypatch.setattr(tune, "sweep_kv_decode", sweep)
    with pytest.raises(ConfigError, match="broke the CUDA context"):
        tune.main(["--what", "kv-decode", "--kv", "1x64,1x128", "--out", str(tmp_path)])
    assert calls == [64, 128]
    saved = json.loads((tmp_path / "tune.json").read_text())
    assert [r["shape"]["context"] for r in saved["rows"]] == [64] and saved["rows"][0]["table_ms"] == 2.0
    assert "num_warps=8 broke the CUDA context" in saved["stopped"]
    text = (tmp_path / "tune.txt").read_text()
    assert "1.5000 ms" in text and text.rstrip().splitlines()[-1].startswith("# stopped: the kv-decode setting")
