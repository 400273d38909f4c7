"""Triton kernels of effconv::bn_act_backward: the backward of training-mode
BatchNorm (batch statistics) followed by an activation, in two passes:

  reduce   per channel, sum_g = sum g and sum_gx = sum g * xhat, where
           xhat = (z - mean) * invstd and g = dy * act'(xhat * gamma + beta);
           each program reduces a run of pixels for a block of channels into
           its own row of a [2, programs, C] workspace (deterministic, no atomics)
  apply    dz = k1 * g + k2 * xhat + k3 (coefficients from
           effconv/epilogue.h's bn_grad_coefficients, computed per channel)

Tensors are viewed as [N, C, HW] with strides (channels_last: C stride 1;
NCHW: HW stride 1), so neither layout is copied.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from effconv.kernels import _config
from effconv.ops._common import bn_grad_coefficients


@triton.jit
def activation_grad(u, ACT: tl.constexpr):
    """d act / d u at the pre-activation u (effconv/epilogue.h activation_backward)."""
    if ACT == 1:
        d = tl.where(u > 0, 1.0, 0.0)
    elif ACT == 2:
        d = tl.where((u > 0) & (u < 6), 1.0, 0.0)
    elif ACT == 3:
        s = 1.0 / (1.0 + tl.exp(-u))
        d = s * (1.0 + u * (1.0 - s))
    else:
        d = tl.full(u.shape, 1.0, u.dtype)
    return d.to(u.dtype)


@triton.jit
def _terms(dy_ptr, z_ptr, off, mask, mean, invstd, gamma, beta, ACT: tl.constexpr, ACC_DTYPE: tl.constexpr):
    z = tl.load(z_ptr + off, mask=mask, other=0.0).to(ACC_DTYPE)
    dy = tl.load(dy_ptr + off, mask=mask, other=0.0).to(ACC_DTYPE)
    xhat = (z - mean[None, :]) * invstd[None, :]
    g = dy * activation_grad(xhat * gamma[None, :] + beta[None, :], ACT)
    return tl.where(mask, g, 0.0), xhat


@triton.jit
def bn_act_reduce_kernel(
    dy_ptr, z_ptr, mean_ptr, invstd_ptr, gamma_ptr, beta_ptr, ws_ptr,
    M, C, HW, M_PER_PROG, sn, sc, shw,
    ACT: tl.constexpr, ACC_DTYPE: tl.constexpr, IDX: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """ws: [2, programs along M, C] in ACC_DTYPE."""
    pid = tl.program_id(0)
    offs_c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_c = offs_c < C
    mean = tl.load(mean_ptr + offs_c, mask=mask_c, other=0.0).to(ACC_DTYPE)
    invstd = tl.load(invstd_ptr + offs_c, mask=mask_c, other=0.0).to(ACC_DTYPE)
    gamma = tl.load(gamma_ptr + offs_c, mask=mask_c, other=0.0).to(ACC_DTYPE)
    beta = tl.load(beta_ptr + offs_c, mask=mask_c, other=0.0).to(ACC_DTYPE)
    sum_g = tl.zeros((BLOCK_C,), dtype=ACC_DTYPE)
    sum_gx = tl.zeros((BLOCK_C,), dtype=ACC_DTYPE)
    m_begin = pid * M_PER_PROG
    m_end = tl.minimum(M, m_begin + M_PER_PROG)
    for m0 in range(m_begin, m_end, BLOCK_M):
        offs_m = m0 + tl.arange(0, BLOCK_M)
        mask = (offs_m < m_end)[:, None] & mask_c[None, :]
        off = ((offs_m // HW).to(IDX) * sn + (offs_m % HW).to(IDX) * shw)[:, None] + (offs_c.to(IDX) * sc)[None, :]
        g, xhat = _terms(dy_ptr, z_ptr, off, mask, mean, invstd, gamma, beta, ACT, ACC_DTYPE)
        sum_g += tl.sum(g, axis=0)
        sum_gx += tl.sum(g * xhat, axis=0)
    row = pid.to(IDX) * C + offs_c
    tl.store(ws_ptr + row, sum_g, mask=mask_c)
    tl.store(ws_ptr + tl.num_programs(0).to(IDX) * C + row, sum_gx, mask=mask_c)


@triton.jit
def bn_act_apply_kernel(
    dy_ptr, z_ptr, dz_ptr, mean_ptr, invstd_ptr, gamma_ptr, beta_ptr, k_ptr,
    M, C, HW, sn, sc, shw,
    ACT: tl.constexpr, ACC_DTYPE: tl.constexpr, IDX: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """k: [3, C] coefficients k1, k2, k3 in ACC_DTYPE; dz has dy's and z's strides."""
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_c = offs_c < C
    mask = (offs_m < M)[:, None] & mask_c[None, :]
    mean = tl.load(mean_ptr + offs_c, mask=mask_c, other=0.0).to(ACC_DTYPE)
    invstd = tl.load(invstd_ptr + offs_c, mask=mask_c, other=0.0).to(ACC_DTYPE)
    gamma = tl.load(gamma_ptr + offs_c, mask=mask_c, other=0.0).to(ACC_DTYPE)
    beta = tl.load(beta_ptr + offs_c, mask=mask_c, other=0.0).to(ACC_DTYPE)
    k1 = tl.load(k_ptr + offs_c, mask=mask_c, other=0.0)
    k2 = tl.load(k_ptr + C + offs_c, mask=mask_c, other=0.0)
    k3 = tl.load(k_ptr + 2 * C + offs_c, mask=mask_c, other=0.0)
    off = ((offs_m // HW).to(IDX) * sn + (offs_m % HW).to(IDX) * shw)[:, None] + (offs_c.to(IDX) * sc)[None, :]
    g, xhat = _terms(dy_ptr, z_ptr, off, mask, mean, invstd, gamma, beta, ACT, ACC_DTYPE)
    dz = k1[None, :] * g + k2[None, :] * xhat + k3[None, :]
    tl.store(dz_ptr + off, dz.to(dz_ptr.dtype.element_ty), mask=mask)


_reduce = _config.Launcher(bn_act_reduce_kernel, "bn_act", "bn_act_reduce_kernel", ["M", "C", "HW", "M_PER_PROG"])
_apply = _config.Launcher(bn_act_apply_kernel, "bn_act", "bn_act_apply_kernel", ["M", "C", "HW"])


def _programs_along_m(M: int, device: torch.device) -> int:
    """Enough programs to fill the GPU twice over with the channel blocks."""
    if device.type != "cuda":
        return max(1, min(4, triton.cdiv(M, 1024)))
    return max(1, min(2 * torch.cuda.get_device_properties(device).multi_processor_count, triton.cdiv(M, 256)))


def bn_act_backward(grad_y, z, mean, invstd, gamma, beta, act: int, grad_z, grad_gamma, grad_beta):
    """z, grad_y, grad_z: [N, C, ...] in one layout; mean/invstd/gamma/beta: [C]."""
    N, C = z.shape[0], z.shape[1]
    M = z.numel() // max(C, 1)
    if z.numel() == 0:
        grad_gamma.zero_()
        grad_beta.zero_()
        return grad_z
    fmt = torch.channels_last if (z.dim() == 4 and grad_z.is_contiguous(memory_format=torch.channels_last)
                                  and not grad_z.is_contiguous()) else torch.contiguous_format
    zc = z.contiguous(memory_format=fmt)
    dy = grad_y.contiguous(memory_format=fmt)
    dz = grad_z if grad_z.is_contiguous(memory_format=fmt) else torch.empty_like(zc)
    HW = M // N
    sn, sc, shw = (HW * C, 1, C) if fmt == torch.channels_last else (C * HW, HW, 1)
    acc = torch.float64 if z.dtype == torch.float64 else torch.float32
    vec = lambda v, fill: (v if v is not None else torch.full((C,), fill, device=z.device)).to(acc).contiguous()  # noqa: E731
    mean_a, invstd_a, gamma_a, beta_a = vec(mean, 0.0), vec(invstd, 1.0), vec(gamma, 1.0), vec(beta, 0.0)
    idx = _config.index_dtype(zc, dy, dz)
    acc_tl = _config.acc_dtype(z.dtype)

    kernel, meta = _reduce("any")
    programs = _programs_along_m(M, z.device)
    m_per_prog = triton.cdiv(M, programs)
    ws = torch.empty((2, programs, C), dtype=acc, device=z.device)
    grid = lambda m: (programs, triton.cdiv(C, m["BLOCK_C"]))  # noqa: E731
    kernel[grid](dy, zc, mean_a, invstd_a, gamma_a, beta_a, ws, M, C, HW, m_per_prog, sn, sc, shw,
                 ACT=act, ACC_DTYPE=acc_tl, IDX=idx, **meta)
    sums = ws.sum(1, dtype=torch.float64)
    k = bn_grad_coefficients(gamma_a, invstd_a, sums[0], sums[1], M).to(acc).contiguous()

    kernel, meta = _apply("any")
    grid = lambda m: (triton.cdiv(M, m["BLOCK_M"]), triton.cdiv(C, m["BLOCK_C"]))  # noqa: E731
    kernel[grid](dy, zc, dz, mean_a, invstd_a, gamma_a, beta_a, k, M, C, HW, sn, sc, shw,
                 ACT=act, ACC_DTYPE=acc_tl, IDX=idx, **meta)
    if dz is not grad_z:
        grad_z.copy_(dz)
    grad_beta.copy_(sums[0])
    grad_gamma.copy_(sums[1])
    return grad_z
