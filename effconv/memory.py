"""effconv's CPU caches.

- Large output buffers (csrc/cpu/output_pool.cpp): activations allocated
  fresh are page-faulted in on every call (glibc returns them to the OS when
  freed); effconv's kernels reuse cached buffers instead.
  ``EFFCONV_CPU_CACHE_MB`` (default 2048) bounds the idle buffers.
- Packed weights (csrc/cpu/weight_cache.h): the forward kernels (and the
  Winograd grad_input) keep each weight's microkernel panels (contiguous or
  channels_last weights) while the weight is unchanged (same tensor, same
  version counter). ``EFFCONV_WEIGHT_CACHE_MB`` (default 512) bounds them;
  0 disables the cache.
"""
from __future__ import annotations

from effconv import _ext


def empty_cache() -> int:
    """Release effconv's idle CPU output buffers and packed weights; returns
    the bytes released. Call it after writing weights through ``.data``
    (which bypasses the version counter the weight cache checks)."""
    if not _ext.available():
        return 0
    return int(_ext.C().empty_pool_cpu()) + int(_ext.C().clear_weight_cache_cpu())
