"""Triton kernels of the implicit-GEMM convolution family (effconv::conv2d).

All three are tiled GEMMs on ``tl.dot`` over NHWC-ordered index math; every
tensor is addressed through its strides, so NCHW, channels_last and
non-contiguous operands work without copies.

  forward      [pixels x Cout/g] = im2col(x)[pixels x taps*Cin/g] @ W^T, fused epilogue
  grad_input   [pixels x Cin/g]  = gathered grad_out[pixels x taps*Cout/g] @ W
  grad_weight  [Cout/g x Cin/g] per tap = grad_out^T @ im2col(x), the pixel
               reduction split across programs into an fp32 workspace that is
               summed afterwards (deterministic: no atomics)

Register economy (checked by effconv.kernels.aot on sm_80/sm_90): per-row
offsets are computed once per tile and each tap only adds a scalar; offsets
are int32 unless a tensor reaches 2^31 elements (IDX = tl.int64).

``IS_1X1`` (1x1 kernel, stride 1, no padding) turns the tap loop and the
bounds checks off: the forward is then a plain GEMM. Configs:
configs/conv2d.json; conv configs stay at num_warps <= 4 (Inductor's Triton
conv template produced wrong results at 8 warps for non-1x1 kernels).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from effconv.kernels import _config
from effconv.kernels.epilogue import apply_epilogue
from effconv.kernels.indexing import output_pixel


@triton.jit
def conv2d_fwd_kernel(
    x_ptr, w_ptr, y_ptr, bias_ptr, scale_ptr, shift_ptr, stats_ptr,
    N, H, W, P, Q, CG, KG, stats_rows,
    sxn, sxc, sxh, sxw, swk, swc, swr, sws, syn, syk, syp, syq,
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    R: tl.constexpr, S: tl.constexpr, IS_1X1: tl.constexpr,
    HAS_BIAS: tl.constexpr, HAS_SCALE: tl.constexpr, HAS_SHIFT: tl.constexpr, ACT: tl.constexpr,
    STATS: tl.constexpr, PRECISION: tl.constexpr, ACC_DTYPE: tl.constexpr, IDX: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """STATS: per-channel sum and sum of squares of this tile's outputs go to
    row pid_m of the zeroed workspace stats_ptr [2, stats_rows, K]
    (training-mode BatchNorm; _config.stats_workspace)."""
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    g = tl.program_id(2)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    mask_m = offs_m < N * P * Q
    mask_n = offs_n < KG
    n, p, q = output_pixel(offs_m, P, Q)
    ih0 = p * stride_h - pad_h
    iw0 = q * stride_w - pad_w
    x_base = n.to(IDX) * sxn + ih0.to(IDX) * sxh + iw0.to(IDX) * sxw + (g * CG).to(IDX) * sxc
    w_base = (g * KG + offs_n).to(IDX) * swk
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC_DTYPE)
    # One flat loop over (tap, channel block): Triton pipelines only the
    # innermost loop, and a tap loop around it multiplied live registers
    # into spills on sm_80/sm_90 (see effconv.kernels.aot).
    ncb = tl.cdiv(CG, BLOCK_K)
    for step in range(R * S * ncb):
        rs = step // ncb
        c0 = (step - rs * ncb) * BLOCK_K
        r = rs // S
        s = rs - r * S
        if IS_1X1:
            valid = mask_m
            x_off = x_base
        else:
            ih = ih0 + r * dil_h
            iw = iw0 + s * dil_w
            valid = mask_m & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
            x_off = x_base + (r * dil_h * sxh + s * dil_w * sxw)
        cc = c0 + offs_k
        mask_c = cc < CG
        a = tl.load(x_ptr + x_off[:, None] + (cc * sxc)[None, :], mask=valid[:, None] & mask_c[None, :], other=0.0)
        b = tl.load(w_ptr + (w_base + (r * swr + s * sws))[None, :] + (cc * swc)[:, None],
                    mask=mask_c[:, None] & mask_n[None, :], other=0.0)
        acc = tl.dot(a, b, acc, input_precision=PRECISION, out_dtype=ACC_DTYPE)
    k_out = g * KG + offs_n
    acc = apply_epilogue(acc, k_out, mask_n, bias_ptr, scale_ptr, shift_ptr, HAS_BIAS, HAS_SCALE, HAS_SHIFT, ACT)
    # Output coordinates are re-derived here rather than kept live through the loop.
    n, p, q = output_pixel(offs_m, P, Q)
    y_off = (n.to(IDX) * syn + p.to(IDX) * syp + q.to(IDX) * syq)[:, None] + (k_out.to(IDX) * syk)[None, :]
    tl.store(y_ptr + y_off, acc.to(y_ptr.dtype.element_ty), mask=mask_m[:, None] & mask_n[None, :])
    if STATS:
        z = tl.where(mask_m[:, None] & mask_n[None, :], acc, 0.0)
        K = KG * tl.num_programs(2)
        row = pid_m.to(IDX) * K + k_out
        tl.store(stats_ptr + row, tl.sum(z, axis=0), mask=mask_n)
        tl.store(stats_ptr + stats_rows * K + row, tl.sum(z * z, axis=0), mask=mask_n)


@triton.jit
def conv2d_grad_input_kernel(
    dy_ptr, w_ptr, dx_ptr,
    N, H, W, P, Q, CG, KG,
    sdn, sdk, sdp, sdq, swk, swc, swr, sws, sxn, sxc, sxh, sxw,
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    R: tl.constexpr, S: tl.constexpr,
    PRECISION: tl.constexpr, ACC_DTYPE: tl.constexpr, IDX: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    g = tl.program_id(2)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # input pixels
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)  # input channels of group g
    offs_k = tl.arange(0, BLOCK_K)                     # output channels of group g
    mask_m = offs_m < N * H * W
    mask_n = offs_n < CG
    n = offs_m // (H * W)
    h = (offs_m % (H * W)) // W
    w = offs_m % W
    ph0 = h + pad_h
    pw0 = w + pad_w
    dy_n = n.to(IDX) * sdn + (g * KG).to(IDX) * sdk
    w_base = (g * KG).to(IDX) * swk + offs_n.to(IDX) * swc
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC_DTYPE)
    nkb = tl.cdiv(KG, BLOCK_K)
    for step in range(R * S * nkb):
        rs = step // nkb
        k0 = (step - rs * nkb) * BLOCK_K
        r = rs // S
        s = rs - r * S
        ph = ph0 - r * dil_h
        pw = pw0 - s * dil_w
        p = ph // stride_h
        q = pw // stride_w
        # The output pixel whose tap (r, s) read this input pixel, if any.
        valid = mask_m & (ph >= 0) & (pw >= 0) & (p * stride_h == ph) & (q * stride_w == pw) & (p < P) & (q < Q)
        kk = k0 + offs_k
        mask_k = kk < KG
        dy_off = dy_n + p.to(IDX) * sdp + q.to(IDX) * sdq
        a = tl.load(dy_ptr + dy_off[:, None] + (kk * sdk)[None, :], mask=valid[:, None] & mask_k[None, :], other=0.0)
        b = tl.load(w_ptr + (w_base + (r * swr + s * sws))[None, :] + (kk * swk)[:, None],
                    mask=mask_k[:, None] & mask_n[None, :], other=0.0)
        acc = tl.dot(a, b, acc, input_precision=PRECISION, out_dtype=ACC_DTYPE)
    n = offs_m // (H * W)
    h = (offs_m % (H * W)) // W
    w = offs_m % W
    x_off = (n.to(IDX) * sxn + h.to(IDX) * sxh + w.to(IDX) * sxw)[:, None] + ((g * CG + offs_n).to(IDX) * sxc)[None, :]
    tl.store(dx_ptr + x_off, acc.to(dx_ptr.dtype.element_ty), mask=mask_m[:, None] & mask_n[None, :])


@triton.jit
def conv2d_grad_weight_kernel(
    dy_ptr, x_ptr, dw_ptr, db_ptr,
    N, H, W, P, Q, CG, KG, K, M_PER_SPLIT, SPLIT,
    sdn, sdk, sdp, sdq, sxn, sxc, sxh, sxw,
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    R: tl.constexpr, S: tl.constexpr,
    PRECISION: tl.constexpr, ACC_DTYPE: tl.constexpr, IDX: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """Workspaces: dw [SPLIT, R, S, K, CG] and db [SPLIT, K], fp32 (fp64), contiguous."""
    pid_mn = tl.program_id(0)
    rs = tl.program_id(1)
    pid_gs = tl.program_id(2)
    n_blocks_c = tl.cdiv(CG, BLOCK_N)
    pid_k = pid_mn // n_blocks_c
    pid_c = pid_mn % n_blocks_c
    g = pid_gs // SPLIT
    sp = pid_gs % SPLIT
    r = rs // S
    s = rs % S
    offs_k = pid_k * BLOCK_M + tl.arange(0, BLOCK_M)  # output channels of group g
    offs_c = pid_c * BLOCK_N + tl.arange(0, BLOCK_N)  # input channels of group g
    mask_k = offs_k < KG
    mask_c = offs_c < CG
    dy_k = (g * KG + offs_k).to(IDX) * sdk
    x_c = (g * CG + offs_c).to(IDX) * sxc
    m_begin = sp * M_PER_SPLIT
    m_end = tl.minimum(N * P * Q, m_begin + M_PER_SPLIT)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC_DTYPE)
    bias_acc = tl.zeros((BLOCK_M,), dtype=ACC_DTYPE)
    for m0 in range(m_begin, m_end, BLOCK_K):
        offs_m = m0 + tl.arange(0, BLOCK_K)
        mask_m = offs_m < m_end
        n, p, q = output_pixel(offs_m, P, Q)
        ih = p * stride_h - pad_h + r * dil_h
        iw = q * stride_w - pad_w + s * dil_w
        valid = mask_m & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
        dy_m = n.to(IDX) * sdn + p.to(IDX) * sdp + q.to(IDX) * sdq
        a = tl.load(dy_ptr + dy_k[:, None] + dy_m[None, :], mask=mask_k[:, None] & mask_m[None, :], other=0.0)
        x_m = n.to(IDX) * sxn + ih.to(IDX) * sxh + iw.to(IDX) * sxw
        b = tl.load(x_ptr + x_m[:, None] + x_c[None, :], mask=valid[:, None] & mask_c[None, :], other=0.0)
        acc = tl.dot(a, b, acc, input_precision=PRECISION, out_dtype=ACC_DTYPE)
        bias_acc += tl.sum(a.to(ACC_DTYPE), axis=1)
    kglob = g * KG + offs_k
    dw_off = ((sp * (R * S) + rs) * K + kglob).to(IDX)[:, None] * CG + offs_c[None, :]
    tl.store(dw_ptr + dw_off, acc, mask=mask_k[:, None] & mask_c[None, :])
    # One program per (group, split, output-channel block) owns the bias sum.
    tl.store(db_ptr + sp * K + kglob, bias_acc, mask=mask_k & (pid_c == 0) & (rs == 0))


_KEY = ["N", "H", "W", "P", "Q", "CG", "KG"]
_fwd = _config.Launcher(conv2d_fwd_kernel, "conv2d", "conv2d_fwd_kernel", _KEY)
_fwd_1x1 = _config.Launcher(conv2d_fwd_kernel, "conv2d", "conv2d_fwd_kernel_1x1", _KEY)
# STATS=True forwards have their own (spill-free) config sets.
_fwd_stats = _config.Launcher(conv2d_fwd_kernel, "conv2d", "conv2d_fwd_kernel_stats", _KEY,
                              reset_to_zero=("stats_ptr",))
_fwd_1x1_stats = _config.Launcher(conv2d_fwd_kernel, "conv2d", "conv2d_fwd_kernel_1x1_stats", _KEY,
                                  reset_to_zero=("stats_ptr",))
_dgrad = _config.Launcher(conv2d_grad_input_kernel, "conv2d", "conv2d_grad_input_kernel", _KEY)
_wgrad = _config.Launcher(conv2d_grad_weight_kernel, "conv2d", "conv2d_grad_weight_kernel", _KEY + ["M_PER_SPLIT"])


def _is_1x1(weight, stride, padding, dilation) -> bool:
    return weight.shape[2] == 1 and weight.shape[3] == 1 and list(stride) == [1, 1] and list(padding) == [0, 0]


def forward(input, weight, bias, scale, shift, stride, padding, dilation, groups, act: int, out, stats=None):
    """stats: optional float64 [2, K] receiving per-channel sum and sum of squares of out."""
    N, C, H, W = input.shape
    K, CG, R, S = weight.shape
    P, Q = out.shape[2], out.shape[3]
    if out.numel() == 0:
        if stats is not None:
            stats.zero_()
        return out
    KG = K // groups
    one = _is_1x1(weight, stride, padding, dilation)
    launcher = {(False, False): _fwd, (True, False): _fwd_1x1, (False, True): _fwd_stats,
                (True, True): _fwd_1x1_stats}[(one, stats is not None)]
    kernel, meta = launcher(_config.dot_class(input.dtype))
    x = input.contiguous(memory_format=torch.channels_last)
    w = weight.permute(2, 3, 1, 0).contiguous()  # [R, S, Cin/g, Cout]: B tiles contiguous along Cout
    dummy = out
    ws = None
    if stats is not None:
        ws = _config.stats_workspace(kernel, meta, lambda m: triton.cdiv(N * P * Q, m["BLOCK_M"]), K, out)
    grid = lambda m: (triton.cdiv(N * P * Q, m["BLOCK_M"]), triton.cdiv(KG, m["BLOCK_N"]), groups)  # noqa: E731
    kernel[grid](
        x, w, out,
        bias if bias is not None else dummy, scale if scale is not None else dummy,
        shift if shift is not None else dummy, ws if ws is not None else dummy,
        N, H, W, P, Q, CG, KG, ws.shape[1] if ws is not None else 0,
        *x.stride(), w.stride(3), w.stride(2), w.stride(0), w.stride(1), *out.stride(),
        stride[0], stride[1], padding[0], padding[1], dilation[0], dilation[1],
        R=R, S=S, IS_1X1=one,
        HAS_BIAS=bias is not None, HAS_SCALE=scale is not None, HAS_SHIFT=shift is not None, ACT=act,
        STATS=stats is not None, PRECISION=_config.dot_precision(input.dtype), ACC_DTYPE=_config.acc_dtype(input.dtype),
        IDX=_config.index_dtype(x, w, out), **meta,
    )
    if stats is not None:
        _config.finish_stats(ws, stats)
    return out


def grad_input(grad_output, weight, stride, padding, dilation, groups, out):
    N, C, H, W = out.shape
    K, CG, R, S = weight.shape
    P, Q = grad_output.shape[2], grad_output.shape[3]
    if out.numel() == 0:
        return out
    KG = K // groups
    dy = grad_output.contiguous(memory_format=torch.channels_last)
    w = weight.permute(2, 3, 0, 1).contiguous()  # [R, S, Cout, Cin/g]: B tiles contiguous along Cin/g
    grid = lambda m: (triton.cdiv(N * H * W, m["BLOCK_M"]), triton.cdiv(CG, m["BLOCK_N"]), groups)  # noqa: E731
    kernel, meta = _dgrad(_config.dot_class(out.dtype))
    kernel[grid](
        dy, w, out,
        N, H, W, P, Q, CG, KG,
        *dy.stride(), w.stride(2), w.stride(3), w.stride(0), w.stride(1), *out.stride(),
        stride[0], stride[1], padding[0], padding[1], dilation[0], dilation[1],
        R=R, S=S, PRECISION=_config.dot_precision(out.dtype), ACC_DTYPE=_config.acc_dtype(out.dtype),
        IDX=_config.index_dtype(dy, w, out), **meta,
    )
    return out


def _splits(M: int, programs: int, device: torch.device) -> int:
    """Split the pixel reduction until the grid fills the GPU (2 waves)."""
    if device.type != "cuda":
        return 1
    target = 2 * torch.cuda.get_device_properties(device).multi_processor_count
    return max(1, min(triton.cdiv(target, max(programs, 1)), triton.cdiv(M, 512)))


def grad_weight(grad_output, input, stride, padding, dilation, groups, grad_w, grad_b):
    N, C, H, W = input.shape
    K, CG, R, S = grad_w.shape
    P, Q = grad_output.shape[2], grad_output.shape[3]
    KG = K // groups
    M = N * P * Q
    acc = torch.float64 if input.dtype == torch.float64 else torch.float32
    if M == 0:
        grad_w.zero_()
        grad_b.zero_()
        return grad_w, grad_b
    programs = triton.cdiv(KG, 64) * triton.cdiv(CG, 64) * R * S * groups
    split = _splits(M, programs, input.device)
    m_per_split = triton.cdiv(M, split)
    dy = grad_output.contiguous(memory_format=torch.channels_last)
    x = input.contiguous(memory_format=torch.channels_last)
    dw = torch.empty((split, R, S, K, CG), dtype=acc, device=input.device)
    db = torch.empty((split, K), dtype=acc, device=input.device)
    grid = lambda m: (triton.cdiv(KG, m["BLOCK_M"]) * triton.cdiv(CG, m["BLOCK_N"]), R * S, groups * split)  # noqa: E731
    kernel, meta = _wgrad(_config.dot_class(input.dtype))
    kernel[grid](
        dy, x, dw, db,
        N, H, W, P, Q, CG, KG, K, m_per_split, split,
        *dy.stride(), *x.stride(),
        stride[0], stride[1], padding[0], padding[1], dilation[0], dilation[1],
        R=R, S=S, PRECISION=_config.dot_precision(input.dtype), ACC_DTYPE=_config.acc_dtype(input.dtype),
        IDX=_config.index_dtype(dy, x, dw), **meta,
    )
    grad_w.copy_(dw.sum(0).permute(2, 3, 0, 1))
    grad_b.copy_(db.sum(0))
    return grad_w, grad_b
