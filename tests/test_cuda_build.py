"""The CUDA C++ kernels are compiled for every arch the build was asked for
(default sm_80 and sm_90; CI builds them without a GPU) and none of them
spills registers: read with the triton wheel's cuobjdump from the built
extension."""
from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
import triton

from effconv import _ext

pytestmark = pytest.mark.skipif(
    not _ext.with_cuda(), reason="effconv._C was built without CUDA kernels (CPU-only torch or EFFCONV_SKIP_CUDA=1)"
)

CUOBJDUMP = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"


def resource_usage():
    so = _ext.C().__file__
    out = subprocess.run([str(CUOBJDUMP), "--dump-resource-usage", so], capture_output=True, text=True, check=True)
    arch, rows = None, []
    for line in out.stdout.splitlines():
        m = re.search(r"arch = (sm_\d+)", line)
        if m:
            arch = m.group(1)
        m = re.search(r"Function (\S+):", line)
        if m:
            rows.append({"arch": arch, "function": m.group(1)})
        m = re.search(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)", line)
        if m and rows:
            rows[-1].update(reg=int(m.group(1)), stack=int(m.group(2)), local=int(m.group(4)))
    return [r for r in rows if "effconv" in r["function"]]


def requested_archs() -> set[str]:
    """setup.py's EFFCONV_CUDA_ARCHS (same default and separators), as cuobjdump names them."""
    spec = os.environ.get("EFFCONV_CUDA_ARCHS", "8.0;9.0").replace(",", ";")
    return {"sm_" + a.strip().removesuffix("+PTX").replace(".", "") for a in spec.split(";") if a.strip()}


def test_cuda_kernels_built_for_requested_archs_without_spills():
    rows = resource_usage()
    archs = {r["arch"] for r in rows}
    assert requested_archs() <= archs, archs
    for kernel in ("epilogue_kernel", "depthwise_nhwc_kernel", "depthwise_grad_weight_kernel"):
        assert any(kernel in r["function"] for r in rows), kernel
    spilled = [r for r in rows if r["stack"] or r["local"]]
    assert not spilled, spilled
