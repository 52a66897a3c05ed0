"""Compile, without a GPU, every Triton kernel that the prefill ops (forward and backward) and the decode steps
launch at one shape, for an sm_90 card (H100 / H200), with the GPU rows of the tuning tables; print one JSON line
per distinct kernel variant: its name, warps, stages, constexpr settings and the shared memory a block of it needs.

    TRITON_INTERPRET=0 python tests/kernels/sm90_compile.py --dtype bfloat16 --head-dim 128

With `--registers` each line also gives the registers and the stack bytes a thread of the variant takes
(`cuobjdump -res-usage` on its cubin): a kernel that needs more than 255 registers spills to the stack.

Nothing runs: each launch is compiled (Triton's own pipeline, down to the cubin with its bundled ptxas) and
skipped, so outputs are never computed; the host code between launches only needs their shapes. The host is
told it has a GPU of 132 SMs with TMA, as an H100 SXM; choices made from `tensor.is_cuda` (the decode step's
fast sin / cos) take their CPU side, which changes no tile. `test_sm90_resources.py` runs this in a subprocess,
because the test process runs Triton's interpreter, whose kernel objects cannot be compiled.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource, make_backend
from triton.runtime import jit as triton_jit

TARGET = GPUTarget("cuda", 90, 32)
SMS = 132


def register_use(cubin: bytes) -> dict:
    """Registers per thread and stack bytes per thread (spilled values live there) of a compiled kernel, from the
    `cuobjdump -res-usage` bundled with Triton's NVIDIA backend."""
    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        out = subprocess.run([tool, "-res-usage", f.name], capture_output=True, text=True, check=True).stdout
    found = re.search(r"REG:(\d+) STACK:(\d+)", out)
    if found is None:
        raise RuntimeError(f"no register line in cuobjdump's output: {out[-300:]}")
    return dict(registers=int(found.group(1)), stack=int(found.group(2)))


def compile_instead_of_launching(report, registers=False):
    """A stand-in for `JITFunction.run`: bind the arguments as a launch on TARGET would (the same signature,
    constexprs and divisibility specialization), compile each new variant and report it (with `registers`,
    also its register use); launch nothing."""
    backend = make_backend(TARGET)
    seen = set()

    def run(self, *args, grid, warmup, **kwargs):
        kwargs.setdefault("debug", False)
        kwargs["instrumentation_mode"] = ""
        binder = triton_jit.create_function_from_signature(self.signature, self.params, backend)
        bound_args, specialization, options = binder(*args, **kwargs)
        options, signature, constexprs, attrs = self._pack_args(backend, kwargs, bound_args, specialization, options)
        settings = {self.arg_names[path[0]]: value for path, value in constexprs.items()
                    if len(path) == 1 and isinstance(value, (bool, int, float, str))}
        key = (self.__name__, repr(signature), repr(sorted(settings.items())), repr(attrs), options.num_warps,
               options.num_stages)
        if key not in seen:
            seen.add(key)
            kernel = triton.compile(ASTSource(self, signature, constexprs, attrs), target=TARGET,
                                    options=options.__dict__)
            row = dict(kernel=self.__name__, num_warps=options.num_warps, num_stages=options.num_stages,
                       settings=settings, shared=kernel.metadata.shared)
            report(dict(row, **register_use(kernel.asm["cubin"])) if registers else row)
        return None

    return run


def pretend_gpu() -> None:
    """Host-side answers of an sm_90 card for CPU tensors: Triton may run, 132 SMs, TMA for 16-bit tensors."""
    import importlib

    import rattn_eval.kernels as kernels

    for name in ("swa.parallel", "swa.backward", "rla.chunk", "rla.segment", "rla.backward", "rattention.fused",
                 "rattention.autograd", "rattention.combine", "pointwise", "decode.fused_recurrent", "decode.kv_split"):
        importlib.import_module(f"rattn_eval.kernels.{name}")
    kernels.triton_available = lambda device: True
    for name, module in list(sys.modules.items()):
        if name.startswith("rattn_eval.kernels"):
            for attr, value in (("num_sms", lambda device: SMS), ("_num_sms", lambda device: SMS),
                                ("tma_ok", lambda *ts: all(t.dtype in (torch.float16, torch.bfloat16) for t in ts))):
                if hasattr(module, attr):
                    setattr(module, attr, value)


def launch_prefill_ops(dtype: torch.dtype, D: int) -> None:
    """SWA, RLA and RAttention forward (no grad) and forward + backward, T 256, H 4, Hkv 2, window 64, RoPE."""
    from rattn_eval.kernels import Rope, residual_linear_attention, rattention, swa_attention

    T, H, Hkv, window = 256, 4, 2, 64
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, T, h, D, generator=g).to(dtype).requires_grad_() for h in (H, Hkv, Hkv))
    rope = Rope(D).cos_sin(torch.arange(T))
    ops = (lambda: swa_attention(q, k, v, window=window, backend="triton"),
           lambda: residual_linear_attention(q, k, v, window=window, backend="triton"),
           lambda: rattention(q, k, v, window=window, rope=rope, backend="triton"))
    for op in ops:
        with torch.no_grad():
            op()
        op().float().sum().backward()


def launch_decode_steps(dtype: torch.dtype, D: int) -> None:
    """The local decode step (RAttention and plain SWA caches, window 512, batches 8 and 64) and `kv_decode`
    (batch 2, 4096 positions), H 16, Hkv 4."""
    from rattn_eval.kernels import Rope, empty_local_cache, kv_decode, local_decode_step

    H, Hkv = 16, 4
    for kind in ("rattn", "swa"):
        for B in (8, 64):
            cache = empty_local_cache(B, 512, Hkv, D, dtype=dtype, device="cpu", kind=kind)
            q, k, v = (torch.zeros(B, h, D, dtype=dtype) for h in (H, Hkv, Hkv))
            local_decode_step(q, k, v, cache, rope=Rope(D), backend="triton")
    kc = torch.zeros(2, 4096, Hkv, D, dtype=dtype)
    kv_decode(torch.zeros(2, H, D, dtype=dtype), kc, kc, torch.tensor([4095, 100]), backend="triton")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dtype", choices=["bfloat16", "float16", "float32"], required=True)
    ap.add_argument("--head-dim", type=int, required=True)
    ap.add_argument("--rla-bwd-row", default=None, help="give the RLA backward this RLA_BWD_TILES row (e.g. 16-bit) "
                    "instead of the one `backward_tiles` picks")
    ap.add_argument("--registers", action="store_true", help="also report registers and stack bytes per thread "
                    "(ptxas spills to the stack when a kernel needs more than 255 registers)")
    args = ap.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":
        raise SystemExit("run with TRITON_INTERPRET=0: the interpreter's kernels cannot be compiled")
    triton_jit.JITFunction.run = compile_instead_of_launching(lambda row: print(json.dumps(row), flush=True),
                                                                 registers=args.registers)
    pretend_gpu()
    if args.rla_bwd_row is not None:
        from rattn_eval.kernels.rla import backward

        row = dict(backward.RLA_BWD_TILES[args.rla_bwd_row])
        backward.backward_tiles = lambda dtype, D: dict(row)
    launch_prefill_ops(getattr(torch, args.dtype), args.head_dim)
    launch_decode_steps(getattr(torch, args.dtype), args.head_dim)
    return 0


if __name__ == "__main__":
    sys.exit(main())
