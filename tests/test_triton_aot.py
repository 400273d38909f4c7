"""Every shipped Triton kernel and config compiles for sm_80 and sm_90 with
no register spills (no GPU needed). Runs effconv.kernels.aot in a subprocess
without TRITON_INTERPRET, which this test process sets."""
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow


def test_triton_kernels_compile_for_sm80_sm90_without_spills():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    res = subprocess.run([sys.executable, "-m", "effconv.kernels.aot", "--arch", "80", "90"],
                         env=env, capture_output=True, text=True, timeout=1200)
    print(res.stdout[-20000:])
    assert res.returncode == 0, res.stdout[-5000:] + res.stderr[-5000:]
    assert "0 failures" in res.stdout
