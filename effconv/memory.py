"""effconv's cache of large CPU output buffers (csrc/cpu/output_pool.cpp).

Large activations allocated fresh are page-faulted in on every call (glibc
returns them to the OS when freed); effconv's kernels reuse cached buffers
instead. ``EFFCONV_CPU_CACHE_MB`` (default 2048) bounds the idle cache.
"""
from __future__ import annotations

from effconv import _ext


def empty_cache() -> int:
    """Release effconv's idle cached CPU buffers; returns the bytes released."""
    if not _ext.available():
        return 0
    return int(_ext.C().empty_pool_cpu())
