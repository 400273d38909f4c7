"""Triton kernels of effconv::depthwise_conv2d: direct (not tl.dot: padding
channels to 16 for the tensor cores would waste ~16x the work).

Each program owns a tile of BLOCK_P x BLOCK_Q output pixels of one image and
BLOCK_C channels, channels_last-ordered (channels are the contiguous,
vectorised axis). The tap loop walks the tile's input halo: neighbouring
outputs and neighbouring taps read overlapping input, so each input element
comes from DRAM once and from L1 for the other taps that use it (Triton has
no register shifts to reuse it without the cache).

  forward      y[n, k, p, q] = sum_{r,s} x[n, k / m, p*sh - ph + r*dh, q*sw - pw + s*dw] * w[k, r, s]
  grad_input   the same with the transposed pixel map (divisibility by the stride
               checked per tap) and a sum over the m output channels of a group
  grad_weight  per (tap, channel block) a reduction over pixels, split across
               programs into an fp32 workspace summed afterwards (deterministic)
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from effconv.kernels import _config
from effconv.kernels.epilogue import apply_epilogue
from effconv.kernels.indexing import output_pixel, pixel_tile, tap_output


@triton.jit
def depthwise_fwd_kernel(
    x_ptr, w_ptr, y_ptr, bias_ptr, scale_ptr, shift_ptr, stats_ptr,
    H, W, K, P, Q, MULT, stats_rows,
    sxn, sxc, sxh, sxw, syn, syk, syp, syq,
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    R: tl.constexpr, S: tl.constexpr,
    HAS_BIAS: tl.constexpr, HAS_SCALE: tl.constexpr, HAS_SHIFT: tl.constexpr, ACT: tl.constexpr,
    STATS: tl.constexpr, ACC_DTYPE: tl.constexpr, IDX: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """STATS: per-channel sum and sum of squares of this tile's outputs go to
    row n * tiles + tile of the zeroed workspace stats_ptr [2, stats_rows, K]."""
    n = tl.program_id(0)
    p, q = pixel_tile(tl.program_id(1), Q, BLOCK_P, BLOCK_Q)
    offs_k = tl.program_id(2) * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_m = (p < P) & (q < Q)
    mask_k = offs_k < K
    x_c = (offs_k // MULT).to(IDX) * sxc
    x_n = x_ptr + n.to(IDX) * sxn
    acc = tl.zeros((BLOCK_P * BLOCK_Q, BLOCK_C), dtype=ACC_DTYPE)
    for rs in range(R * S):
        r = rs // S
        s = rs - r * S
        ih = p * stride_h - pad_h + r * dil_h
        iw = q * stride_w - pad_w + s * dil_w
        valid = mask_m & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
        x_off = ih.to(IDX) * sxh + iw.to(IDX) * sxw
        xv = tl.load(x_n + x_off[:, None] + x_c[None, :], mask=valid[:, None] & mask_k[None, :], other=0.0)
        wv = tl.load(w_ptr + offs_k * (R * S) + rs, mask=mask_k, other=0.0)
        acc += xv.to(ACC_DTYPE) * wv.to(ACC_DTYPE)[None, :]
    acc = apply_epilogue(acc, offs_k, mask_k, bias_ptr, scale_ptr, shift_ptr, HAS_BIAS, HAS_SCALE, HAS_SHIFT, ACT)
    y_off = n.to(IDX) * syn + (p.to(IDX) * syp + q.to(IDX) * syq)[:, None] + (offs_k.to(IDX) * syk)[None, :]
    tl.store(y_ptr + y_off, acc.to(y_ptr.dtype.element_ty), mask=mask_m[:, None] & mask_k[None, :])
    if STATS:
        z = tl.where(mask_m[:, None] & mask_k[None, :], acc, 0.0)
        row = (n.to(IDX) * tl.num_programs(1) + tl.program_id(1)) * K + offs_k
        tl.store(stats_ptr + row, tl.sum(z, axis=0), mask=mask_k)
        tl.store(stats_ptr + stats_rows * K + row, tl.sum(z * z, axis=0), mask=mask_k)


@triton.jit
def depthwise_grad_input_kernel(
    dy_ptr, w_ptr, dx_ptr,
    H, W, C, P, Q, MULT,
    sdn, sdk, sdp, sdq, sxn, sxc, sxh, sxw,
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    R: tl.constexpr, S: tl.constexpr, ACC_DTYPE: tl.constexpr, IDX: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_C: tl.constexpr,
):
    n = tl.program_id(0)
    h, w = pixel_tile(tl.program_id(1), W, BLOCK_P, BLOCK_Q)
    offs_c = tl.program_id(2) * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_m = (h < H) & (w < W)
    mask_c = offs_c < C
    dy_n = dy_ptr + n.to(IDX) * sdn
    acc = tl.zeros((BLOCK_P * BLOCK_Q, BLOCK_C), dtype=ACC_DTYPE)
    for rs in range(R * S):
        r = rs // S
        s = rs - r * S
        # The output pixel whose tap (r, s) read this input pixel, if any.
        pp, qq, valid = tap_output(h, w, r, s, P, Q, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w)
        valid = valid & mask_m
        dy_off = pp.to(IDX) * sdp + qq.to(IDX) * sdq
        for j in range(MULT):
            k = offs_c * MULT + j
            dv = tl.load(dy_n + dy_off[:, None] + (k.to(IDX) * sdk)[None, :], mask=valid[:, None] & mask_c[None, :],
                         other=0.0)
            wv = tl.load(w_ptr + k * (R * S) + rs, mask=mask_c, other=0.0)
            acc += dv.to(ACC_DTYPE) * wv.to(ACC_DTYPE)[None, :]
    x_off = n.to(IDX) * sxn + (h.to(IDX) * sxh + w.to(IDX) * sxw)[:, None] + (offs_c.to(IDX) * sxc)[None, :]
    tl.store(dx_ptr + x_off, acc.to(dx_ptr.dtype.element_ty), mask=mask_m[:, None] & mask_c[None, :])


@triton.jit
def depthwise_grad_weight_kernel(
    dy_ptr, x_ptr, dw_ptr, db_ptr,
    N, H, W, K, P, Q, MULT, M_PER_SPLIT,
    sdn, sdk, sdp, sdq, sxn, sxc, sxh, sxw,
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    R: tl.constexpr, S: tl.constexpr, ACC_DTYPE: tl.constexpr, IDX: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """Workspaces dw [SPLIT, R*S, K] and db [SPLIT, K] in ACC_DTYPE, contiguous."""
    offs_k = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    rs = tl.program_id(1)
    sp = tl.program_id(2)
    r = rs // S
    s = rs - r * S
    mask_k = offs_k < K
    x_c = (offs_k // MULT).to(IDX) * sxc
    dy_k = offs_k.to(IDX) * sdk
    m_begin = sp * M_PER_SPLIT
    m_end = tl.minimum(N * P * Q, m_begin + M_PER_SPLIT)
    acc = tl.zeros((BLOCK_C,), dtype=ACC_DTYPE)
    bias_acc = tl.zeros((BLOCK_C,), dtype=ACC_DTYPE)
    for m0 in range(m_begin, m_end, BLOCK_M):
        offs_m = m0 + tl.arange(0, BLOCK_M)
        mask_m = offs_m < m_end
        n, p, q = output_pixel(offs_m, P, Q)
        ih = p * stride_h - pad_h + r * dil_h
        iw = q * stride_w - pad_w + s * dil_w
        valid = mask_m & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
        dy_m = n.to(IDX) * sdn + p.to(IDX) * sdp + q.to(IDX) * sdq
        dv = tl.load(dy_ptr + dy_m[:, None] + dy_k[None, :], mask=mask_m[:, None] & mask_k[None, :],
                     other=0.0).to(ACC_DTYPE)
        x_m = n.to(IDX) * sxn + ih.to(IDX) * sxh + iw.to(IDX) * sxw
        xv = tl.load(x_ptr + x_m[:, None] + x_c[None, :], mask=valid[:, None] & mask_k[None, :],
                     other=0.0).to(ACC_DTYPE)
        acc += tl.sum(dv * xv, axis=0)
        bias_acc += tl.sum(dv, axis=0)
    tl.store(dw_ptr + (sp * (R * S) + rs) * K + offs_k, acc, mask=mask_k)
    tl.store(db_ptr + sp * K + offs_k, bias_acc, mask=mask_k & (rs == 0))


_fwd = _config.Launcher(depthwise_fwd_kernel, "depthwise", "depthwise_fwd_kernel", ["H", "W", "K", "P", "Q"])
_fwd_stats = _config.Launcher(depthwise_fwd_kernel, "depthwise", "depthwise_fwd_kernel_stats",
                              ["H", "W", "K", "P", "Q"], reset_to_zero=("stats_ptr",))
_dgrad = _config.Launcher(depthwise_grad_input_kernel, "depthwise", "depthwise_grad_input_kernel",
                          ["H", "W", "C", "P", "Q"])
_wgrad = _config.Launcher(depthwise_grad_weight_kernel, "depthwise", "depthwise_grad_weight_kernel",
                          ["N", "H", "W", "K", "P", "Q", "M_PER_SPLIT"])


def _tiles(rows, cols, meta):
    return triton.cdiv(rows, meta["BLOCK_P"]) * triton.cdiv(cols, meta["BLOCK_Q"])


def forward(input, weight, bias, scale, shift, stride, padding, dilation, groups, act: int, out, stats=None):
    """stats: optional float64 [2, K] receiving per-channel sum and sum of squares of out."""
    N, C, H, W = input.shape
    K, _, R, S = weight.shape
    P, Q = out.shape[2], out.shape[3]
    if out.numel() == 0:
        if stats is not None:
            stats.zero_()
        return out
    x = input.contiguous(memory_format=torch.channels_last)
    w = weight.contiguous()
    kernel, meta = (_fwd if stats is None else _fwd_stats)("any")
    dummy = out
    ws = None
    if stats is not None:
        ws = _config.stats_workspace(kernel, meta, lambda m: N * _tiles(P, Q, m), K, out)
    grid = lambda m: (N, _tiles(P, Q, m), triton.cdiv(K, m["BLOCK_C"]))  # noqa: E731
    kernel[grid](
        x, w, out, bias if bias is not None else dummy, scale if scale is not None else dummy,
        shift if shift is not None else dummy, ws if ws is not None else dummy,
        H, W, K, P, Q, K // C, ws.shape[1] if ws is not None else 0,
        *x.stride(), *out.stride(),
        stride[0], stride[1], padding[0], padding[1], dilation[0], dilation[1],
        R=R, S=S, HAS_BIAS=bias is not None, HAS_SCALE=scale is not None, HAS_SHIFT=shift is not None, ACT=act,
        STATS=stats is not None, ACC_DTYPE=_config.acc_dtype(x.dtype), IDX=_config.index_dtype(x, out), **meta,
    )
    if stats is not None:
        _config.finish_stats(ws, stats)
    return out


def grad_input(grad_output, weight, stride, padding, dilation, groups, out):
    N, C, H, W = out.shape
    K, _, R, S = weight.shape
    P, Q = grad_output.shape[2], grad_output.shape[3]
    if out.numel() == 0:
        return out
    dy = grad_output.contiguous(memory_format=torch.channels_last)
    w = weight.contiguous()
    kernel, meta = _dgrad("any")
    grid = lambda m: (N, _tiles(H, W, m), triton.cdiv(C, m["BLOCK_C"]))  # noqa: E731
    kernel[grid](
        dy, w, out, H, W, C, P, Q, K // C,
        *dy.stride(), *out.stride(),
        stride[0], stride[1], padding[0], padding[1], dilation[0], dilation[1],
        R=R, S=S, ACC_DTYPE=_config.acc_dtype(out.dtype), IDX=_config.index_dtype(dy, out), **meta,
    )
    return out


def grad_weight(grad_output, input, stride, padding, dilation, groups, grad_w, grad_b):
    N, C, H, W = input.shape
    K, _, R, S = grad_w.shape
    P, Q = grad_output.shape[2], grad_output.shape[3]
    M = N * P * Q
    if M == 0:
        grad_w.zero_()
        grad_b.zero_()
        return grad_w, grad_b
    dy = grad_output.contiguous(memory_format=torch.channels_last)
    x = input.contiguous(memory_format=torch.channels_last)
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    kernel, meta = _wgrad("any")
    # Split the pixel reduction so the grid fills the GPU (2 waves).
    programs = triton.cdiv(K, 64) * R * S
    split = 1
    if x.device.type == "cuda":
        target = 2 * torch.cuda.get_device_properties(x.device).multi_processor_count
        split = max(1, min(triton.cdiv(target, programs), triton.cdiv(M, 1024)))
    m_per_split = triton.cdiv(M, split)
    dw = torch.empty((split, R * S, K), dtype=acc, device=x.device)
    db = torch.empty((split, K), dtype=acc, device=x.device)
    grid = lambda m: (triton.cdiv(K, m["BLOCK_C"]), R * S, split)  # noqa: E731
    kernel[grid](
        dy, x, dw, db, N, H, W, K, P, Q, K // C, m_per_split,
        *dy.stride(), *x.stride(),
        stride[0], stride[1], padding[0], padding[1], dilation[0], dilation[1],
        R=R, S=S, ACC_DTYPE=_config.acc_dtype(x.dtype), IDX=_config.index_dtype(dy, x), **meta,
    )
    grad_w.copy_(dw.sum(0).t().reshape(K, 1, R, S))
    grad_b.copy_(db.sum(0))
    return grad_w, grad_b
