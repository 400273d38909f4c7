"""Triton kernels of deformable convolution (effconv::deform_conv2d).

Sampling follows csrc/include/effconv/deform.h (torchvision's rules): tap
(i, j) of output pixel (p, q) reads the input at y = p * stride - pad +
i * dil + offset_y (likewise x) by bilinear interpolation over four corners,
corners outside the image reading zero.

  forward      [pixels x Cout/g] = sampled columns [pixels x taps*Cin/g] @ W:
               each program samples a [BLOCK_M x BLOCK_K] column tile in
               registers and feeds it straight to tl.dot -- the columns never
               exist in global memory.
  grad_cols    the columns' gradient tile dY @ W^T (tl.dot, registers only),
               scattered to grad_input through its bilinear weights
               (float32 atomics) and reduced over each offset group's
               channels into grad_offset / grad_mask (float32 atomics).
               Not deterministic: the op raises PyTorch's error for it
               under torch.use_deterministic_algorithms(True).
  grad_weight  per tap, sampled columns^T @ dY over a split of the pixels
               into a float32 workspace summed afterwards (deterministic),
               and grad_bias alongside.

Operands are prepared by the host code below: x channels_last, offsets and
mask per pixel ([N, P, Q, channels]), weight [taps, Cin/g, Cout]. Sampling
math runs in float32 (float64 for float64 data); tl.dot takes the input
dtype with float32 accumulation. Configs: configs/deform.json.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from effconv.kernels import _config
from effconv.kernels.indexing import output_pixel


@triton.jit
def _corners(off_ptr, orow, ocol, mask2, by, bx, H, W, ACC_DTYPE: tl.constexpr):
    """Sample coordinates of a [BLOCK_M x BLOCK_K] tile: the top-left corner
    (y0, x0), fractional parts (ly, lx). Points more than a pixel outside the
    image (and NaN) are clamped where every corner is invalid."""
    oy = tl.load(off_ptr + orow[:, None] + ocol[None, :], mask=mask2, other=0.0).to(ACC_DTYPE)
    ox = tl.load(off_ptr + orow[:, None] + ocol[None, :] + 1, mask=mask2, other=0.0).to(ACC_DTYPE)
    y = by[:, None].to(ACC_DTYPE) + oy
    x = bx[:, None].to(ACC_DTYPE) + ox
    y = tl.where(y == y, y, -3.0)
    x = tl.where(x == x, x, -3.0)
    y = tl.minimum(tl.maximum(y, -3.0), H + 2.0)
    x = tl.minimum(tl.maximum(x, -3.0), W + 2.0)
    y0f = tl.floor(y)
    x0f = tl.floor(x)
    return y0f.to(tl.int32), x0f.to(tl.int32), y - y0f, x - x0f


@triton.jit
def _corner_ptr(x_ptr, n_off, yy, xx, ch_off, sxh, sxw, IDX: tl.constexpr):
    return x_ptr + n_off[:, None] + (yy.to(IDX) * sxh + xx.to(IDX) * sxw) + ch_off[None, :]


@triton.jit
def _columns(x_ptr, off_ptr, mask_ptr, offs_m, n_off, ch, og, t, mask2, by, bx, H, W, C, COG, TAPS, sxh, sxw,
             HAS_MASK: tl.constexpr, ACC_DTYPE: tl.constexpr, IDX: tl.constexpr):
    """The sampled columns of a [BLOCK_M pixels x BLOCK_K channels] tile at
    tap t: the bilinear sample (times the mask), in ACC_DTYPE."""
    y0, x0, ly, lx = _corners(off_ptr, offs_m.to(IDX) * (2 * C // COG * TAPS), 2 * (og * TAPS + t), mask2, by, bx,
                              H, W, ACC_DTYPE)
    val = tl.zeros(mask2.shape, dtype=ACC_DTYPE)
    for corner in tl.static_range(4):
        yy = y0 + corner // 2
        xx = x0 + corner % 2
        wy = ly if corner // 2 == 1 else 1.0 - ly
        wx = lx if corner % 2 == 1 else 1.0 - lx
        valid = mask2 & (yy >= 0) & (yy < H) & (xx >= 0) & (xx < W)
        v = tl.load(_corner_ptr(x_ptr, n_off, yy, xx, ch.to(IDX), sxh, sxw, IDX), mask=valid, other=0.0)
        val += (wy * wx) * v.to(ACC_DTYPE)
    if HAS_MASK:
        mrow = offs_m.to(IDX) * (C // COG * TAPS)
        mk = tl.load(mask_ptr + mrow[:, None] + (og * TAPS + t)[None, :], mask=mask2, other=0.0)
        val = val * mk.to(ACC_DTYPE)
    return val


@triton.jit
def deform_fwd_kernel(
    x_ptr, off_ptr, mask_ptr, w_ptr, bias_ptr, y_ptr,
    N, H, W, P, Q, C, CG, KG, COG, TAPS,
    sxn, sxh, sxw, syn, syk, syp, syq,
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    KW: tl.constexpr, HAS_MASK: tl.constexpr, HAS_BIAS: tl.constexpr,
    PRECISION: tl.constexpr, ACC_DTYPE: tl.constexpr, IDX: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    g = tl.program_id(2)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_m = offs_m < N * P * Q
    mask_n = offs_n < KG
    n, p, q = output_pixel(offs_m, P, Q)
    n_off = n.to(IDX) * sxn
    K = KG * tl.num_programs(2)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC_DTYPE)
    for t in range(0, TAPS):
        by = p * stride_h - pad_h + (t // KW) * dil_h
        bx = q * stride_w - pad_w + (t % KW) * dil_w
        for c0 in range(0, CG, BLOCK_K):
            offs_k = c0 + tl.arange(0, BLOCK_K)
            mask_k = offs_k < CG
            mask2 = mask_m[:, None] & mask_k[None, :]
            ch = g * CG + offs_k
            og = ch // COG
            val = _columns(x_ptr, off_ptr, mask_ptr, offs_m, n_off, ch, og, t, mask2, by, bx, H, W, C, COG, TAPS,
                           sxh, sxw, HAS_MASK, ACC_DTYPE, IDX)
            b = tl.load(w_ptr + (t * CG + offs_k).to(IDX)[:, None] * K + (g * KG + offs_n)[None, :],
                        mask=mask_k[:, None] & mask_n[None, :], other=0.0)
            acc = tl.dot(val.to(b.dtype), b, acc, input_precision=PRECISION, out_dtype=ACC_DTYPE)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + g * KG + offs_n, mask=mask_n, other=0.0).to(ACC_DTYPE)[None, :]
    y_off = (n.to(IDX) * syn + p.to(IDX) * syp + q.to(IDX) * syq)[:, None] + ((g * KG + offs_n).to(IDX) * syk)[None, :]
    tl.store(y_ptr + y_off, acc.to(y_ptr.dtype.element_ty), mask=mask_m[:, None] & mask_n[None, :])


@triton.jit
def deform_grad_cols_kernel(
    dy_ptr, x_ptr, off_ptr, mask_ptr, w_ptr, gx_ptr, goff_ptr, gmask_ptr,
    N, H, W, P, Q, C, CG, KG, COG, TAPS,
    sdn, sdk, sdp, sdq, sxn, sxh, sxw,
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    KW: tl.constexpr, HAS_MASK: tl.constexpr, WANT_GX: tl.constexpr, WANT_COORD: tl.constexpr,
    PRECISION: tl.constexpr, ACC_DTYPE: tl.constexpr, IDX: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """gx: float32 (float64) [N, H, W, C]; goff [N*P*Q, 2*OG*TAPS], gmask
    [N*P*Q, OG*TAPS] in the same dtype, all zeroed and accumulated into."""
    pid_m = tl.program_id(0)
    pid_k = tl.program_id(1)
    g = tl.program_id(2)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_k = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    mask_m = offs_m < N * P * Q
    mask_k = offs_k < CG
    mask2 = mask_m[:, None] & mask_k[None, :]
    n, p, q = output_pixel(offs_m, P, Q)
    K = KG * tl.num_programs(2)
    ch = g * CG + offs_k
    og = ch // COG
    og_first = (g * CG + pid_k * BLOCK_K) // COG
    og_last = (g * CG + tl.minimum(pid_k * BLOCK_K + BLOCK_K, CG) - 1) // COG
    n_off = n.to(IDX) * sxn
    gx_n = n.to(IDX) * H * W * C
    orow = offs_m.to(IDX) * (2 * C // COG * TAPS)
    mrow = offs_m.to(IDX) * (C // COG * TAPS)
    dy_row = n.to(IDX) * sdn + p.to(IDX) * sdp + q.to(IDX) * sdq
    for t in range(0, TAPS):
        gcol = tl.zeros((BLOCK_M, BLOCK_K), dtype=ACC_DTYPE)
        for k0 in range(0, KG, BLOCK_N):
            offs_n = k0 + tl.arange(0, BLOCK_N)
            mask_n = offs_n < KG
            d = tl.load(dy_ptr + dy_row[:, None] + ((g * KG + offs_n).to(IDX) * sdk)[None, :],
                        mask=mask_m[:, None] & mask_n[None, :], other=0.0)
            wt = tl.load(w_ptr + (t * CG + offs_k).to(IDX)[None, :] * K + (g * KG + offs_n)[:, None],
                         mask=mask_n[:, None] & mask_k[None, :], other=0.0)
            gcol = tl.dot(d.to(wt.dtype), wt, gcol, input_precision=PRECISION, out_dtype=ACC_DTYPE)
        by = p * stride_h - pad_h + (t // KW) * dil_h
        bx = q * stride_w - pad_w + (t % KW) * dil_w
        y0, x0, ly, lx = _corners(off_ptr, orow, 2 * (og * TAPS + t), mask2, by, bx, H, W, ACC_DTYPE)
        if HAS_MASK:
            mk = tl.load(mask_ptr + mrow[:, None] + (og * TAPS + t)[None, :], mask=mask2, other=0.0).to(ACC_DTYPE)
        else:
            mk = tl.full((BLOCK_M, BLOCK_K), 1.0, ACC_DTYPE)
        gy = tl.zeros((BLOCK_M, BLOCK_K), dtype=ACC_DTYPE)
        gxo = tl.zeros((BLOCK_M, BLOCK_K), dtype=ACC_DTYPE)
        gm = tl.zeros((BLOCK_M, BLOCK_K), dtype=ACC_DTYPE)
        for corner in tl.static_range(4):
            cy = corner // 2
            cx = corner % 2
            yy = y0 + cy
            xx = x0 + cx
            wy = ly if cy == 1 else 1.0 - ly
            wx = lx if cx == 1 else 1.0 - lx
            valid = mask2 & (yy >= 0) & (yy < H) & (xx >= 0) & (xx < W)
            if WANT_GX:
                gx_off = gx_n[:, None] + ((yy.to(IDX) * W + xx.to(IDX)) * C) + ch.to(IDX)[None, :]
                tl.atomic_add(gx_ptr + gx_off, mk * wy * wx * gcol, mask=valid)
            if WANT_COORD:
                v = tl.load(_corner_ptr(x_ptr, n_off, yy, xx, ch.to(IDX), sxh, sxw, IDX), mask=valid,
                            other=0.0).to(ACC_DTYPE)
                gv = gcol * v
                # d/dy of the corner weight: +-wx; d/dx: +-wy (torchvision's coordinate weight)
                gy += (wx if cy == 1 else -wx) * gv
                gxo += (wy if cx == 1 else -wy) * gv
                gm += (wy * wx) * gv
        if WANT_COORD:
            gy = gy * mk
            gxo = gxo * mk
            o_col = 2 * (og * TAPS + t)
            if og_first == og_last:  # the whole block in one offset group: reduce before the atomics
                o1 = 2 * (og_first * TAPS + t)
                tl.atomic_add(goff_ptr + orow + o1, tl.sum(gy, axis=1), mask=mask_m)
                tl.atomic_add(goff_ptr + orow + o1 + 1, tl.sum(gxo, axis=1), mask=mask_m)
                if HAS_MASK:
                    tl.atomic_add(gmask_ptr + mrow + og_first * TAPS + t, tl.sum(gm, axis=1), mask=mask_m)
            else:
                tl.atomic_add(goff_ptr + orow[:, None] + o_col[None, :], gy, mask=mask2)
                tl.atomic_add(goff_ptr + orow[:, None] + o_col[None, :] + 1, gxo, mask=mask2)
                if HAS_MASK:
                    tl.atomic_add(gmask_ptr + mrow[:, None] + (og * TAPS + t)[None, :], gm, mask=mask2)


@triton.jit
def deform_grad_weight_kernel(
    dy_ptr, x_ptr, off_ptr, mask_ptr, ws_ptr, wsb_ptr,
    N, H, W, P, Q, C, CG, KG, COG, TAPS, M_PER_SPLIT,
    sdn, sdk, sdp, sdq, sxn, sxh, sxw,
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    KW: tl.constexpr, HAS_MASK: tl.constexpr, WANT_BIAS: tl.constexpr,
    PRECISION: tl.constexpr, ACC_DTYPE: tl.constexpr, IDX: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """ws: [splits, TAPS, CG, K] (ACC_DTYPE), wsb: [splits, K]; program
    (tap x channel block, Cout block, group x split) writes its own slice."""
    pid0 = tl.program_id(0)
    pid_n = tl.program_id(1)
    pid2 = tl.program_id(2)
    n_cblk = tl.cdiv(CG, BLOCK_K)
    t = pid0 // n_cblk
    G = C // CG
    g = pid2 % G
    split = pid2 // G
    K = KG * G
    offs_k = (pid0 % n_cblk) * BLOCK_K + tl.arange(0, BLOCK_K)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_k = offs_k < CG
    mask_n = offs_n < KG
    ch = g * CG + offs_k
    og = ch // COG
    acc = tl.zeros((BLOCK_K, BLOCK_N), dtype=ACC_DTYPE)
    bacc = tl.zeros((BLOCK_N,), dtype=ACC_DTYPE)
    m_begin = split * M_PER_SPLIT
    m_end = tl.minimum(N * P * Q, m_begin + M_PER_SPLIT)
    for m0 in range(m_begin, m_end, BLOCK_M):
        offs_m = m0 + tl.arange(0, BLOCK_M)
        mask_m = offs_m < m_end
        mask2 = mask_m[:, None] & mask_k[None, :]
        n, p, q = output_pixel(offs_m, P, Q)
        by = p * stride_h - pad_h + (t // KW) * dil_h
        bx = q * stride_w - pad_w + (t % KW) * dil_w
        val = _columns(x_ptr, off_ptr, mask_ptr, offs_m, n.to(IDX) * sxn, ch, og, t, mask2, by, bx, H, W, C, COG,
                       TAPS, sxh, sxw, HAS_MASK, ACC_DTYPE, IDX)
        d = tl.load(dy_ptr + (n.to(IDX) * sdn + p.to(IDX) * sdp + q.to(IDX) * sdq)[:, None]
                    + ((g * KG + offs_n).to(IDX) * sdk)[None, :], mask=mask_m[:, None] & mask_n[None, :], other=0.0)
        acc = tl.dot(tl.trans(val.to(d.dtype)), d, acc, input_precision=PRECISION, out_dtype=ACC_DTYPE)
        if WANT_BIAS:
            bacc += tl.sum(d.to(ACC_DTYPE), axis=0)
    ws_off = ((split * TAPS + t) * CG + offs_k).to(IDX)[:, None] * K + (g * KG + offs_n)[None, :]
    tl.store(ws_ptr + ws_off, acc, mask=mask_k[:, None] & mask_n[None, :])
    if WANT_BIAS:
        if pid0 == 0:
            tl.store(wsb_ptr + split * K + g * KG + offs_n, bacc, mask=mask_n)


_KEY = ["C", "CG", "KG", "TAPS"]
_fwd = _config.Launcher(deform_fwd_kernel, "deform", "deform_fwd_kernel", _KEY)
_cols = _config.Launcher(deform_grad_cols_kernel, "deform", "deform_grad_cols_kernel", _KEY,
                         reset_to_zero=("gx_ptr", "goff_ptr", "gmask_ptr"))
_wgrad = _config.Launcher(deform_grad_weight_kernel, "deform", "deform_grad_weight_kernel", _KEY + ["M_PER_SPLIT"])


def _prepare(input, offset, weight, mask):
    x = input.contiguous(memory_format=torch.channels_last)
    off = offset.permute(0, 2, 3, 1).contiguous()
    msk = mask.permute(0, 2, 3, 1).contiguous() if mask is not None else off
    w = weight.permute(2, 3, 1, 0).contiguous()  # [kh, kw, Cin/g, Cout] = [taps, Cin/g, Cout]
    return x, off, msk, w


def _geometry(input, offset, weight):
    N, C, H, W = input.shape
    K, CG, kh, kw = weight.shape
    taps = kh * kw
    og = offset.shape[1] // (2 * taps)
    return N, C, H, W, K, CG, kh, kw, taps, C // og, C // CG


def forward(input, offset, weight, mask, bias, stride, padding, dilation, out):
    if out.numel() == 0:
        return out
    N, C, H, W, K, CG, kh, kw, taps, COG, G = _geometry(input, offset, weight)
    P, Q = out.shape[2:]
    x, off, msk, w = _prepare(input, offset, weight, mask)
    kernel, meta = _fwd(_config.dot_class(input.dtype))
    grid = lambda m: (triton.cdiv(N * P * Q, m["BLOCK_M"]), triton.cdiv(K // G, m["BLOCK_N"]), G)  # noqa: E731
    kernel[grid](
        x, off, msk, w, bias if bias is not None else w, out,
        N, H, W, P, Q, C, CG, K // G, COG, taps,
        x.stride(0), x.stride(2), x.stride(3), *out.stride(),
        stride[0], stride[1], padding[0], padding[1], dilation[0], dilation[1],
        KW=kw, HAS_MASK=mask is not None, HAS_BIAS=bias is not None,
        PRECISION=_config.dot_precision(input.dtype), ACC_DTYPE=_config.acc_dtype(input.dtype),
        IDX=_config.index_dtype(x, off, out), **meta,
    )
    return out


def backward(grad_output, input, offset, weight, mask, stride, padding, dilation, grad_input, grad_offset,
             grad_weight, grad_mask, grad_bias):
    """Writes the gradients that are not None."""
    N, C, H, W, K, CG, kh, kw, taps, COG, G = _geometry(input, offset, weight)
    P, Q = grad_output.shape[2:]
    M = N * P * Q
    if M == 0:
        for t in (grad_input, grad_offset, grad_weight, grad_mask, grad_bias):
            if t is not None:
                t.zero_()
        return
    x, off, msk, w = _prepare(input, offset, weight, mask)
    dy = grad_output
    acc_t = torch.float64 if input.dtype == torch.float64 else torch.float32
    cls = _config.dot_class(input.dtype)
    prec, acc = _config.dot_precision(input.dtype), _config.acc_dtype(input.dtype)
    idx = _config.index_dtype(x, off, dy)
    geo = (N, H, W, P, Q, C, CG, K // G, COG, taps)
    conv = (stride[0], stride[1], padding[0], padding[1], dilation[0], dilation[1])
    dstr = (dy.stride(0), dy.stride(1), dy.stride(2), dy.stride(3), x.stride(0), x.stride(2), x.stride(3))
    want_coord = grad_offset is not None or grad_mask is not None
    if grad_input is not None or want_coord:
        # Unused outputs get their own dummies: the autotuner zeroes these buffers.
        zeros = lambda shape: torch.zeros(shape, dtype=acc_t, device=input.device)  # noqa: E731
        gx = zeros((N, H, W, C)) if grad_input is not None else zeros((1,))
        goff = zeros(off.shape) if want_coord else zeros((1,))
        gmask = zeros(msk.shape) if want_coord and mask is not None else zeros((1,))
        kernel, meta = _cols(cls)
        grid = lambda m: (triton.cdiv(M, m["BLOCK_M"]), triton.cdiv(CG, m["BLOCK_K"]), G)  # noqa: E731
        kernel[grid](dy, x, off, msk, w, gx, goff, gmask, *geo, *dstr, *conv,
                     KW=kw, HAS_MASK=mask is not None, WANT_GX=grad_input is not None, WANT_COORD=want_coord,
                     PRECISION=prec, ACC_DTYPE=acc, IDX=idx, **meta)
        if grad_input is not None:
            grad_input.copy_(gx.permute(0, 3, 1, 2))
        if grad_offset is not None:
            grad_offset.copy_(goff.permute(0, 3, 1, 2))
        if grad_mask is not None:
            grad_mask.copy_(gmask.permute(0, 3, 1, 2)) if mask is not None else grad_mask.zero_()
    if grad_weight is not None or grad_bias is not None:
        kernel, meta = _wgrad(cls)
        # Split the pixel reduction so the grid fills a GPU; fixed by the
        # problem size, so the sum order (and result) is reproducible.
        splits = max(1, min(64, M // 4096))
        m_per = triton.cdiv(triton.cdiv(M, splits), 128) * 128
        splits = triton.cdiv(M, m_per)
        ws = torch.zeros((splits, taps, CG, K), dtype=acc_t, device=input.device)
        wsb = torch.zeros((splits, K), dtype=acc_t, device=input.device)
        grid = lambda m: (taps * triton.cdiv(CG, m["BLOCK_K"]), triton.cdiv(K // G, m["BLOCK_N"]), G * splits)  # noqa: E731
        kernel[grid](dy, x, off, msk, ws, wsb, N, H, W, P, Q, C, CG, K // G, COG, taps, m_per, *dstr, *conv,
                     KW=kw, HAS_MASK=mask is not None, WANT_BIAS=grad_bias is not None,
                     PRECISION=prec, ACC_DTYPE=acc, IDX=idx, **meta)
        if grad_weight is not None:
            grad_weight.copy_(ws.sum(0).view(kh, kw, CG, K).permute(3, 2, 0, 1))
        if grad_bias is not None:
            grad_bias.copy_(wsb.sum(0))
