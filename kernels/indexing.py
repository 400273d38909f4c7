"""Index math shared by the Triton conv and pooling kernels."""
from __future__ import annotations

import triton
import triton.language as tl  # noqa: F401  (the interpreter needs it visible to jit functions)


@triton.jit
def output_pixel(offs_m, P, Q):
    """Flat output-pixel indices (n * P + p) * Q + q -> (n, p, q)."""
    return offs_m // (P * Q), (offs_m % (P * Q)) // Q, offs_m % Q


@triton.jit
def pixel_tile(tile, cols, BLOCK_P: tl.constexpr, BLOCK_Q: tl.constexpr):
    """(rows, columns) of the BLOCK_P x BLOCK_Q pixels of tile number `tile`
    (tiles numbered row-major over a map `cols` pixels wide)."""
    tiles = tl.cdiv(cols, BLOCK_Q)
    offs = tl.arange(0, BLOCK_P * BLOCK_Q)
    return (tile // tiles) * BLOCK_P + offs // BLOCK_Q, (tile % tiles) * BLOCK_Q + offs % BLOCK_Q


@triton.jit
def tap_output(h, w, r, s, P, Q, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w):
    """The output pixel (p, q) whose window puts tap (r, s) on input pixel
    (h, w), and whether there is one. (Triton's integer // truncates; the
    negative offsets it would get wrong are excluded by the same test.)"""
    th = h + pad_h - r * dil_h
    tw = w + pad_w - s * dil_w
    p = th // stride_h
    q = tw // stride_w
    return p, q, (th >= 0) & (tw >= 0) & (p * stride_h == th) & (q * stride_w == tw) & (p < P) & (q < Q)
