"""Triton kernels of effconv::max_pool2d (F.max_pool2d without indices).

  forward   each program owns BLOCK_P x BLOCK_Q output pixels of one image and
            BLOCK_C channels and takes the max over the window's taps (a NaN
            wins, padding never does)
  backward  a gather, deterministic and without atomics: each program owns
            a tile of *input* pixels; for every tap (i, j) it finds the one
            output whose window puts that tap on the pixel, checks against
            that window whether the forward's scan (first maximum, a NaN
            wins) ends on this pixel, and if so adds the output's gradient

Strides are arguments, so NCHW and channels_last tensors take the same
kernels (channels_last makes the channel axis the contiguous one).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from effconv.kernels import _config
from effconv.kernels.indexing import pixel_tile, tap_output


@triton.jit
def max_pool2d_fwd_kernel(
    x_ptr, y_ptr, H, W, C, P, Q,
    sxn, sxc, sxh, sxw, syn, syc, syp, syq,
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    R: tl.constexpr, S: tl.constexpr, ACC_DTYPE: tl.constexpr, IDX: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """Compares in ACC_DTYPE (exact: float16/bfloat16 widen losslessly)."""
    n = tl.program_id(0)
    p, q = pixel_tile(tl.program_id(1), Q, BLOCK_P, BLOCK_Q)
    offs_c = tl.program_id(2) * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_m = (p < P) & (q < Q)
    mask_c = offs_c < C
    x_n = x_ptr + n.to(IDX) * sxn
    x_c = offs_c.to(IDX) * sxc
    best = tl.full((BLOCK_P * BLOCK_Q, BLOCK_C), float("-inf"), ACC_DTYPE)
    for rs in range(R * S):
        r = rs // S
        s = rs - r * S
        ih = p * stride_h - pad_h + r * dil_h
        iw = q * stride_w - pad_w + s * dil_w
        valid = mask_m & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
        x_off = ih.to(IDX) * sxh + iw.to(IDX) * sxw
        v = tl.load(x_n + x_off[:, None] + x_c[None, :], mask=valid[:, None] & mask_c[None, :],
                    other=float("-inf")).to(ACC_DTYPE)
        best = tl.where((v > best) | (v != v), v, best)
    y_off = n.to(IDX) * syn + (p.to(IDX) * syp + q.to(IDX) * syq)[:, None] + (offs_c.to(IDX) * syc)[None, :]
    tl.store(y_ptr + y_off, best.to(y_ptr.dtype.element_ty), mask=mask_m[:, None] & mask_c[None, :])


@triton.jit
def max_pool2d_bwd_kernel(
    dy_ptr, x_ptr, dx_ptr, H, W, C, P, Q,
    sdn, sdc, sdp, sdq, sxn, sxc, sxh, sxw, szn, szc, szh, szw,
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    R: tl.constexpr, S: tl.constexpr, ACC_DTYPE: tl.constexpr, IDX: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """dx (strides sz*) gets every element written; dy, x read.

    Pixel value v0 is its window's argmax at tap t exactly when the forward's
    scan (first maximum, a NaN wins) would end there: v0 is NaN and no later
    tap is, or no tap is NaN, v0 beats every earlier tap and no later tap
    beats it. (An all -inf window credits its first valid tap, as PyTorch's
    saved index does.) One flag per element, no argmax to carry."""
    n = tl.program_id(0)
    h, w = pixel_tile(tl.program_id(1), W, BLOCK_P, BLOCK_Q)
    offs_c = tl.program_id(2) * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_m = (h < H) & (w < W)
    mask_c = offs_c < C
    mask_mc = mask_m[:, None] & mask_c[None, :]
    x_n = x_ptr + n.to(IDX) * sxn
    x_c = offs_c.to(IDX) * sxc
    v0 = tl.load(x_n + (h.to(IDX) * sxh + w.to(IDX) * sxw)[:, None] + x_c[None, :], mask=mask_mc,
                 other=0.0).to(ACC_DTYPE)
    nan0 = v0 != v0
    acc = tl.zeros((BLOCK_P * BLOCK_Q, BLOCK_C), dtype=ACC_DTYPE)
    for rs in range(R * S):
        r = rs // S
        s = rs - r * S
        p, q, hit = tap_output(h, w, r, s, P, Q, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w)
        hit = hit & mask_m
        mine = hit[:, None] & mask_c[None, :]
        for rs2 in tl.static_range(R * S):
            r2 = rs2 // S
            s2 = rs2 - r2 * S
            ih = p * stride_h - pad_h + r2 * dil_h
            iw = q * stride_w - pad_w + s2 * dil_w
            valid = (hit & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W))[:, None] & mask_c[None, :]
            x_off = ih.to(IDX) * sxh + iw.to(IDX) * sxw
            v = tl.load(x_n + x_off[:, None] + x_c[None, :], mask=valid, other=0.0).to(ACC_DTYPE)
            before = nan0 | (v0 > v)
            after = tl.where(nan0, v == v, v0 >= v)
            ok = tl.where(rs2 < rs, before, after)
            mine = mine & (~valid | (rs2 == rs) | ok)
        dy_off = n.to(IDX) * sdn + (p.to(IDX) * sdp + q.to(IDX) * sdq)[:, None] + (offs_c.to(IDX) * sdc)[None, :]
        acc += tl.load(dy_ptr + dy_off, mask=mine, other=0.0).to(ACC_DTYPE)
    z_off = n.to(IDX) * szn + (h.to(IDX) * szh + w.to(IDX) * szw)[:, None] + (offs_c.to(IDX) * szc)[None, :]
    tl.store(dx_ptr + z_off, acc.to(dx_ptr.dtype.element_ty), mask=mask_mc)


_fwd = _config.Launcher(max_pool2d_fwd_kernel, "max_pool2d", "max_pool2d_fwd_kernel", key=["C", "P", "Q"])
_bwd = _config.Launcher(max_pool2d_bwd_kernel, "max_pool2d", "max_pool2d_bwd_kernel", key=["C", "H", "W"])


def _tiles(rows, cols, meta):
    return triton.cdiv(rows, meta["BLOCK_P"]) * triton.cdiv(cols, meta["BLOCK_Q"])


def forward(input, kernel_size, stride, padding, dilation, out):
    N, C, H, W = input.shape
    P, Q = out.shape[2:]
    if out.numel() == 0:
        return out
    kernel, meta = _fwd("any")
    grid = lambda m: (N, _tiles(P, Q, m), triton.cdiv(C, m["BLOCK_C"]))  # noqa: E731
    kernel[grid](
        input, out, H, W, C, P, Q, *input.stride(), *out.stride(),
        stride[0], stride[1], padding[0], padding[1], dilation[0], dilation[1],
        R=kernel_size[0], S=kernel_size[1], ACC_DTYPE=_config.acc_dtype(input.dtype),
        IDX=_config.index_dtype(input, out), **meta,
    )
    return out


def backward(grad_output, input, kernel_size, stride, padding, dilation, grad_input):
    N, C, H, W = input.shape
    P, Q = grad_output.shape[2:]
    if grad_input.numel() == 0:
        return grad_input
    if grad_output.numel() == 0:
        return grad_input.zero_()
    kernel, meta = _bwd("any")
    grid = lambda m: (N, _tiles(H, W, m), triton.cdiv(C, m["BLOCK_C"]))  # noqa: E731
    kernel[grid](
        grad_output, input, grad_input, H, W, C, P, Q,
        *grad_output.stride(), *input.stride(), *grad_input.stride(),
        stride[0], stride[1], padding[0], padding[1], dilation[0], dilation[1],
        R=kernel_size[0], S=kernel_size[1], ACC_DTYPE=_config.acc_dtype(input.dtype),
        IDX=_config.index_dtype(grad_output, input, grad_input), **meta,
    )
    return grad_input
