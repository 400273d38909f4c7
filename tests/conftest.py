"""Test session set-up.

Without a GPU, TRITON_INTERPRET=1 is set before anything imports triton, so
the Triton kernels run on CPU tensors in this process (tests marked
`triton`). With a GPU, Triton compiles for it and the `cuda` tests exercise
the kernels there, without autotuning unless EFFCONV_TRITON_AUTOTUNE=1. The
AOT compile test runs its compiler in a subprocess without the interpreter
either way.
"""
import atexit
import os
import shutil
import tempfile

# torch.compile caches compiled graphs, with the backward it traced through
# effconv's autograd formulas, on disk under a key that does not cover those
# formulas: a cache warmed by an older checkout replays that checkout's
# backward ops. The tests compile from scratch, in a directory of their own.
if "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
    _cache = tempfile.mkdtemp(prefix="effconv-tests-inductor-")
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = _cache
    atexit.register(shutil.rmtree, _cache, True)

import torch  # noqa: E402  (importing torch does not import triton)

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
else:
    # Autotuning compiles every config of every specialisation: on an H100
    # the CUDA tests (12 workers) were 62% done after 5.5 minutes with it.
    # Each class's default config runs here; test_triton_configs.py runs
    # the others.
    os.environ.setdefault("EFFCONV_TRITON_AUTOTUNE", "0")

import pytest  # noqa: E402

import effconv  # noqa: E402

INTERPRETING = os.environ.get("TRITON_INTERPRET") == "1"


@pytest.fixture(autouse=True)
def _seed_and_poison():
    """Deterministic fresh inputs per test; NaN-poisoned kernel outputs, so a
    kernel that leaves an element unwritten fails."""
    torch.manual_seed(0)
    with effconv.poison_outputs(True):
        yield


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(1234)


@pytest.fixture(params=["avx2", "baseline"])
def other_isa(request):
    """Runs the test on another ISA build of the CPU microkernels, then restores the selected one."""
    from effconv import _ext

    C = _ext.C()
    before = C.cpu_isa()
    if not C.set_cpu_isa(request.param):
        pytest.skip(f"this CPU cannot run the {request.param} build")
    yield request.param
    C.set_cpu_isa(before)


def pytest_report_header(config):
    from effconv import _ext

    isa = _ext.C().cpu_isa() if _ext.available() else "extension not built"
    return [f"effconv: CPU ISA {isa}, CUDA C++ kernels built: {_ext.with_cuda()}, "
            f"torch {torch.__version__}, CUDA device: {torch.cuda.is_available()}"]


def pytest_collection_modifyitems(config, items):
    if INTERPRETING:
        return
    skip = pytest.mark.skip(reason="Triton runs on CPU tensors only under TRITON_INTERPRET=1; "
                                   "this session compiles Triton for the GPU (the cuda tests cover it)")
    for item in items:
        if "triton" in item.keywords:
            item.add_marker(skip)
