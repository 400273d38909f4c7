"""Every shipped Triton config, not only each class's default: the per-op
parity checks again with `forced_config(i)` launching config i of every
kernel (a class with fewer configs runs its last). Under TRITON_INTERPRET=1
on CPU tensors; on a GPU, on CUDA tensors (TF32 off)."""
from __future__ import annotations

import os

import pytest
import torch

import effconv
from conv2d_cases import BY_NAME
from depthwise_cases import DW_BY_NAME
from effconv.kernels import _config
from test_conv2d import run_case

INTERPRETING = os.environ.get("TRITON_INTERPRET") == "1"
DEVICE = "cpu" if INTERPRETING else "cuda"
pytestmark = ([pytest.mark.triton] if INTERPRETING else
              [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")])

# Index 0 (each class's default) is what every other Triton test runs.
INDICES = range(1, max(len(configs) for op in ("conv2d", "depthwise", "deform", "bn_act", "epilogue", "max_pool2d")
                       for classes in _config.load(op).values() for configs in classes.values()))
# fp64 launches the 'fma' configs; fp16 the 'mma' ones (tensor cores on a GPU).
DTYPES = [torch.float64, torch.float16] if INTERPRETING else [torch.float32, torch.float16]


@pytest.fixture(autouse=True)
def _no_tf32():
    old = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32 = old


@pytest.mark.parametrize("index", INDICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_conv2d_configs(index, dtype, gen):
    with _config.forced_config(index):
        for name in ("3x3_s2", "pw1x1"):  # the general kernels and the 1x1 GEMM
            run_case(BY_NAME[name], dtype, "channels_last", backend="triton", gen=gen, device=DEVICE,
                     epilogue=True, activation="silu")


@pytest.mark.parametrize("index", INDICES)
def test_depthwise_configs(index, gen):
    with _config.forced_config(index):
        for name in ("dw3x3_s2", "dw5x5_wide"):
            run_case(DW_BY_NAME[name], DTYPES[0], "channels_last", backend="triton", gen=gen, device=DEVICE,
                     epilogue=True, activation="relu6")


@pytest.mark.parametrize("index", INDICES)
def test_conv_bn_act_configs(index):
    """The conv kernels' batch-statistics variants and the bn_act kernels."""
    from test_conv_bn_act import randomize_bn, train_and_compare, unfused_copy

    for cin, cout, k, s, g in [(4, 8, 3, 1, 1), (8, 8, 3, 2, 8), (6, 4, 1, 1, 1)]:
        m = effconv.ConvBNAct2d(cin, cout, k, s, groups=g, activation="relu6").to(DTYPES[0])
        randomize_bn(m[1])
        ref = unfused_copy(m, torch.float64)
        with _config.forced_config(index), effconv.use_backend("triton"):
            train_and_compare(m.to(DEVICE), ref, DTYPES[0], (2, cin, 6, 7), steps=1, layouts=("channels_last",),
                              device=DEVICE)


@pytest.mark.parametrize("index", INDICES)
def test_max_pool2d_and_epilogue_configs(index, gen):
    from test_epilogue import run as run_epilogue
    from test_max_pool2d import CASES, _run

    with _config.forced_config(index):
        _run(CASES[0], torch.float32, "channels_last", "triton", gen, device=DEVICE)
        run_epilogue("triton", (2, 19, 5, 7), "channels_last", "silu", torch.float32, device=DEVICE)


@pytest.mark.parametrize("index", INDICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_deform_conv2d_configs(index, dtype):
    from test_deform_conv2d import BY_NAME as DEFORM_CASES
    from test_deform_conv2d import check_against, make_args, run

    case = DEFORM_CASES["3x3_pad1"]
    args = [t.to(DEVICE) if t is not None else None for t in make_args(case, dtype, "channels_last")]
    with _config.forced_config(index):
        y, gy, grads = run(case, args, backend="triton")
    cpu = lambda t: t.cpu() if t is not None else None  # noqa: E731
    check_against(case, [cpu(t) for t in args], cpu(y), cpu(gy), [cpu(g) for g in grads])


def test_forced_config_selects_the_config():
    from effconv.kernels import conv2d as k

    configs = _config.load("conv2d")["conv2d_fwd_kernel"]["fma"]
    for index in (0, 1, len(configs) - 1, len(configs) + 5):
        with _config.forced_config(index):
            _, meta = k._fwd("fma")
        expected = configs[min(index, len(configs) - 1)]
        assert meta == (_config.meta_of(expected) if INTERPRETING else expected)
    _, meta = k._fwd("fma")
    assert meta in ({}, _config.meta_of(configs[0]), configs[0])  # autotuned, interpreted or default
