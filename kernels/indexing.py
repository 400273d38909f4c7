"""Index math shared by the Triton conv kernels."""
from __future__ import annotations

import triton
import triton.language as tl  # noqa: F401  (the interpreter needs it visible to jit functions)


@triton.jit
def output_pixel(offs_m, P, Q):
    """Flat output-pixel indices (n * P + p) * Q + q -> (n, p, q)."""
    return offs_m // (P * Q), (offs_m % (P * Q)) // Q, offs_m % Q
