"""The last step of RAttention with its gradient in Triton: out = rms(o_swa) * g_swa + rms(o_rla) * g_rla.

rms(x) = x / sqrt(mean(x^2) + eps) over each (token, head) row of D values, fp32 math (as `naive.combine`),
the output in the requested dtype. Forward: one pass that also keeps each row's 1 / rms (fp32). Backward:
one pass over the rows of each head, for each branch with x_hat = x / rms and g = dy * gain,
dx = (g - x_hat * mean(g * x_hat)) / rms, and each program's partial sum of dy * x_hat for the gain's
gradient (summed over programs in PyTorch). The PyTorch composition under autograd makes about a dozen
passes over fp32 copies of the two (B, T, H, D) tensors.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..triton_common import INTERPRET, cdiv

# rows per program: (forward, backward); the backward's rows are tokens of one head
ROWS = (64, 64) if INTERPRET else (16, 32)


@triton.jit
def combine_fwd_kernel(a_ptr, b_ptr, wa_ptr, wb_ptr, out_ptr, ra_ptr, rb_ptr, bsum_ptr, NROWS, H, eps, b_part,
                       D: tl.constexpr, BR: tl.constexpr, HAS_WA: tl.constexpr, HAS_WB: tl.constexpr,
                       NB: tl.constexpr, STORE_B: tl.constexpr):
    """Grid (NROWS / BR,) over the rows of a, b (NROWS = B * T * H, D) contiguous: out (same shape) and
    ra, rb (NROWS,) fp32, each row's 1 / rms. b is the sum of NB (1 or 2) partials, b_part elements
    apart; STORE_B: that sum also goes to bsum (a's shape, in bsum's dtype). Gains (H, D) of any float dtype,
    row r has head r % H."""
    r = tl.program_id(0).to(tl.int64) * BR + tl.arange(0, BR)
    ok = r < NROWS
    offs_d = tl.arange(0, D)
    off = r[:, None] * D + offs_d[None, :]
    w_off = (r % H)[:, None] * D + offs_d[None, :]
    a = tl.load(a_ptr + off, mask=ok[:, None], other=0.0).to(tl.float32)
    b = tl.load(b_ptr + off, mask=ok[:, None], other=0.0).to(tl.float32)
    if NB == 2:
        b += tl.load(b_ptr + b_part + off, mask=ok[:, None], other=0.0).to(tl.float32)
    if STORE_B:
        tl.store(bsum_ptr + off, b.to(bsum_ptr.dtype.element_ty), mask=ok[:, None])
    ra = tl.rsqrt(tl.sum(a * a, axis=1) / D + eps)
    rb = tl.rsqrt(tl.sum(b * b, axis=1) / D + eps)
    ya = a * ra[:, None]
    yb = b * rb[:, None]
    if HAS_WA:
        ya = ya * tl.load(wa_ptr + w_off, mask=ok[:, None], other=0.0).to(tl.float32)
    if HAS_WB:
        yb = yb * tl.load(wb_ptr + w_off, mask=ok[:, None], other=0.0).to(tl.float32)
    tl.store(out_ptr + off, (ya + yb).to(out_ptr.dtype.element_ty), mask=ok[:, None])
    tl.store(ra_ptr + r, ra, mask=ok)
    tl.store(rb_ptr + r, rb, mask=ok)


@triton.jit
def norm_grad(dy, x, rinv, w_ptr, h, dw_ptr, HAS_W: tl.constexpr, NEED_DW: tl.constexpr, D: tl.constexpr):
    """dx (R, D) of y = x * rinv * w from dy, all fp32 (rows outside the input hold x = dy = 0); with
    NEED_DW, store the rows' sum of dy * x_hat, the partial gradient of w[h], at dw_ptr (D fp32)."""
    offs_d = tl.arange(0, D)
    xh = x * rinv[:, None]
    g = dy
    if HAS_W:
        g = dy * tl.load(w_ptr + h * D + offs_d).to(tl.float32)[None, :]
    if NEED_DW:
        tl.store(dw_ptr + offs_d, tl.sum(dy * xh, axis=0))
    return (g - xh * (tl.sum(g * xh, axis=1) / D)[:, None]) * rinv[:, None]


@triton.jit
def combine_bwd_kernel(dy_ptr, a_ptr, b_ptr, wa_ptr, wb_ptr, ra_ptr, rb_ptr, da_ptr, db_ptr, dwa_ptr, dwb_ptr,
                       NTOK, H, b_part, D: tl.constexpr, BT: tl.constexpr, HAS_WA: tl.constexpr,
                       HAS_WB: tl.constexpr, NEED_DWA: tl.constexpr, NEED_DWB: tl.constexpr, NB: tl.constexpr):
    """Grid (NTOK / BT, H): BT tokens of head h. da, db (NTOK * H, D) in their dtype from dy, b the sum of
    NB partials as in the forward; with NEED_DW*, the program's partial gain gradient at dw*[program 0
    index, h] ((NTOK / BT, H, D) fp32)."""
    pt = tl.program_id(0)
    h = tl.program_id(1)
    tok = pt.to(tl.int64) * BT + tl.arange(0, BT)
    ok = tok < NTOK
    r = tok * H + h
    offs_d = tl.arange(0, D)
    off = r[:, None] * D + offs_d[None, :]
    dy = tl.load(dy_ptr + off, mask=ok[:, None], other=0.0).to(tl.float32)
    part = (pt.to(tl.int64) * H + h) * D
    a = tl.load(a_ptr + off, mask=ok[:, None], other=0.0).to(tl.float32)
    ra = tl.load(ra_ptr + r, mask=ok, other=0.0)
    da = norm_grad(dy, a, ra, wa_ptr, h, dwa_ptr + part, HAS_WA, NEED_DWA, D)
    tl.store(da_ptr + off, da.to(da_ptr.dtype.element_ty), mask=ok[:, None])
    b = tl.load(b_ptr + off, mask=ok[:, None], other=0.0).to(tl.float32)
    if NB == 2:
        b += tl.load(b_ptr + b_part + off, mask=ok[:, None], other=0.0).to(tl.float32)
    rb = tl.load(rb_ptr + r, mask=ok, other=0.0)
    db = norm_grad(dy, b, rb, wb_ptr, h, dwb_ptr + part, HAS_WB, NEED_DWB, D)
    tl.store(db_ptr + off, db.to(db_ptr.dtype.element_ty), mask=ok[:, None])


def combine_forward(a, parts, g_swa, g_rla, eps, dtype, keep_sum=False):
    """(out, ra, rb, b): out = rms(a) * g_swa + rms(b) * g_rla in `dtype` with b the sum of parts (fp32),
    each row's 1 / rms of a and of b (fp32), and with keep_sum b itself in the parts' dtype (else None).
    a (B, T, H, D) and parts (NB, B, T, H, D), NB 1 or 2, contiguous; gains (H, D) contiguous or None
    (ones)."""
    H, D = a.shape[2:]
    out = torch.empty(a.shape, dtype=dtype, device=a.device)
    bsum = torch.empty(a.shape, dtype=parts.dtype, device=a.device) if keep_sum else None
    rows = a.numel() // D
    ra = torch.empty(rows, dtype=torch.float32, device=a.device)
    rb = torch.empty_like(ra)
    if rows:
        br = ROWS[0]
        combine_fwd_kernel[(cdiv(rows, br),)](a, parts, a if g_swa is None else g_swa, a if g_rla is None else g_rla,
                                              out, ra, rb, out if bsum is None else bsum, rows, H, float(eps),
                                              a.numel(), D=D, BR=br, HAS_WA=g_swa is not None,
                                              HAS_WB=g_rla is not None, NB=parts.shape[0], STORE_B=keep_sum,
                                              num_warps=4)
    return out, ra, rb, bsum


def combine_backward(dy, a, parts, g_swa, g_rla, ra, rb, need_wa, need_wb, db_dtype=None):
    """(da, db, dg_swa, dg_rla) of `combine_forward` for the output gradient dy: da, db like a, da in its dtype and
    db in db_dtype (default: a's), the gain gradients (None unless need_* and the gain is given) in the gains'
    dtypes."""
    B, T, H, D = a.shape
    dy = dy.contiguous()
    da, db = torch.empty_like(a), torch.empty_like(a, dtype=db_dtype or a.dtype)
    ntok = B * T
    bt = ROWS[1]
    nblk = cdiv(ntok, bt)
    need_wa, need_wb = need_wa and g_swa is not None, need_wb and g_rla is not None
    dwa = torch.empty(nblk, H, D, dtype=torch.float32, device=a.device) if need_wa else ra
    dwb = torch.empty(nblk, H, D, dtype=torch.float32, device=a.device) if need_wb else ra
    if ntok:
        combine_bwd_kernel[(nblk, H)](dy, a, parts, a if g_swa is None else g_swa, a if g_rla is None else g_rla, ra,
                                      rb, da, db, dwa, dwb, ntok, H, a.numel(), D=D, BT=bt, HAS_WA=g_swa is not None,
                                      HAS_WB=g_rla is not None, NEED_DWA=need_wa, NEED_DWB=need_wb, NB=parts.shape[0],
                                      num_warps=4)
    gwa = dwa.sum(0).to(g_swa.dtype) if need_wa else None
    gwb = dwb.sum(0).to(g_rla.dtype) if need_wb else None
    return da, db, gwa, gwb


class Combine(torch.autograd.Function):
    """rms(o_swa) * g_swa + rms(o_rla) * g_rla in `dtype`, with gradients for both branches and both gains."""

    @staticmethod
    def forward(ctx, o_swa, o_rla, g_swa, g_rla, eps, dtype):
        a, b = o_swa.contiguous(), o_rla.contiguous()[None]
        # the kernels index the gains as rows of D: contiguous copies, also for the backward
        g_swa, g_rla = (None if g is None else g.contiguous() for g in (g_swa, g_rla))
        out, ra, rb, _ = combine_forward(a, b, g_swa, g_rla, eps, dtype)
        ctx.save_for_backward(a, b, g_swa, g_rla, ra, rb)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy):
        a, b, g_swa, g_rla, ra, rb = ctx.saved_tensors
        need_a, need_b, need_wa, need_wb = ctx.needs_input_grad[:4]
        da, db, gwa, gwb = combine_backward(dy, a, b, g_swa, g_rla, ra, rb, need_wa, need_wb, b.dtype)
        return da if need_a else None, db if need_b else None, gwa, gwb, None, None


def combine_triton(o_swa, o_rla, g_swa, g_rla, eps, dtype):
    """`naive.combine(...).to(dtype)` in one Triton pass each way. o_swa, o_rla (B, T, H, D) float tensors of
    one shape (each gets its gradient in its own dtype), D a power of two; gains (H, D) or None (ones)."""
    if o_swa.dim() != 4 or o_rla.shape != o_swa.shape or not (o_swa.is_floating_point() and o_rla.is_floating_point()):
        raise ValueError(f"o_swa and o_rla must be float (B, T, H, D) tensors of one shape, got {tuple(o_swa.shape)} "
                         f"{o_swa.dtype} and {tuple(o_rla.shape)} {o_rla.dtype}")
    H, D = o_swa.shape[2:]
    if D < 1 or D & (D - 1):
        raise ValueError(f"the Triton norm-combine needs a power-of-two head dim, got {D}")
    for name, g in (("swa", g_swa), ("rla", g_rla)):
        if g is not None and tuple(g.shape) != (H, D):
            raise ValueError(f"the {name} norm weight must be (H, D) = ({H}, {D}), got {tuple(g.shape)}")
    return Combine.apply(o_swa, o_rla, g_swa, g_rla, eps, dtype)
