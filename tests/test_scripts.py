"""The user-run scripts under scripts/ that are not covered elsewhere."""

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _load(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_profile_prefill_sorts_kernels_into_categories():
    prof = _load("profile_prefill")
    # names as an H100 profile prints them: attention is matched before gemm (both carry "sm90")
    assert prof.category("cudnn_generated_fort_native_sdpa_sm90_flash_fprop_wgmma_f16_knob_7") == "attention"
    assert prof.category("nvjet_sm90_tst_256x160_64x4_2x1_v_bz_coopA_TNT") == "gemm"
    assert prof.category("void cutlass::Kernel2<cutlass_80_tensorop_bf16_s16816gemm>") == "gemm"
    assert prof.category("swa_fwd_kernel") == "attention"  # this project's Triton kernels
    assert prof.category("kv_decode_kernel") == "attention"
    assert prof.category("rms_norm_kernel") == "other"
    assert prof.category("void at::native::vectorized_elementwise_kernel<8, at::native::CUDAFunctor_add>") == "other"


def test_profile_prefill_runs_on_the_cpu(tmp_path):
    prof = _load("profile_prefill")
    out = tmp_path / "prof.json"
    assert prof.main(["--model", "smollm2-135m", "--context", "24", "--backends", "torch,hf", "--device", "cpu",
                      "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert sorted(result) == ["hf", "torch"]
    for row in result.values():
        assert row["prefill_wall_ms"] > 0 and row["top"]
        assert max(row["kernel_ms"], key=row["kernel_ms"].get) == "gemm"  # the projections' aten::mm
    assert result["hf"]["kernel_ms"]["attention"] > 0  # transformers' SDPA
