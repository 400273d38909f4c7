"""effconv.functional.conv2d_cat: parallel convs of one input concatenated
along channels. In CPU inference each conv writes its channel range of one
output (strided outputs in the CPU kernels, incl. the dense 1x1 path);
elsewhere it is the cat of the convs."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import effconv
from helpers import assert_close


def reference(x, weights, biases, paddings, activation):
    outs = [F.conv2d(x.double(), w.double(), b.double() if b is not None else None, 1, p)
            for w, b, p in zip(weights, biases, paddings)]
    y = torch.cat(outs, 1)
    return torch.relu(y) if activation == "relu" else y


def fire(gen, dtype=torch.float32, squeeze=6, e1=16, e3=24):
    w = [torch.randn(e1, squeeze, 1, 1, generator=gen, dtype=dtype),
         torch.randn(e3, squeeze, 3, 3, generator=gen, dtype=dtype)]
    b = [torch.randn(e1, generator=gen, dtype=dtype), torch.randn(e3, generator=gen, dtype=dtype)]
    return w, b, [0, 1]


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("activation", [None, "relu"])
def test_inference_matches_cat(layout, dtype, activation, gen):
    x = torch.randn(2, 6, 9, 11, generator=gen, dtype=dtype)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    w, b, p = fire(gen, dtype)
    with torch.inference_mode():
        y = effconv.functional.conv2d_cat(x, w, b, 1, p, activation=activation)
    assert y.shape == (2, 40, 9, 11)
    assert y.is_contiguous(memory_format=torch.channels_last) == (layout == "channels_last")
    assert_close(y, reference(x, w, b, p, activation), 6 * 9)


def test_low_precision_and_no_bias(gen):
    x = torch.randn(1, 6, 7, 7, generator=gen).contiguous(memory_format=torch.channels_last)
    w, _, p = fire(gen)
    with torch.no_grad():
        y = effconv.functional.conv2d_cat(x.half(), [t.half() for t in w], None, 1, p)
    ref = reference(x.half(), [t.half() for t in w], [None, None], p, None)
    torch.testing.assert_close(y.double(), ref, rtol=2e-3, atol=2e-2)


def test_autograd_is_the_cat_of_convs(gen):
    x = torch.randn(2, 6, 8, 8, generator=gen, dtype=torch.float64, requires_grad=True)
    w, b, p = fire(gen, torch.float64)
    for t in (*w, *b):
        t.requires_grad_(True)
    y = effconv.functional.conv2d_cat(x, w, b, 1, p, activation="relu")
    dy = torch.randn(y.shape, generator=gen, dtype=torch.float64)
    got = torch.autograd.grad(y, (x, *w, *b), dy)
    want = torch.autograd.grad(reference(x, w, b, p, "relu"), (x, *w, *b), dy)
    for g, r in zip(got, want):
        assert_close(g, r, 2 * 8 * 8)


def test_errors(gen):
    x = torch.randn(1, 6, 8, 8, generator=gen)
    w, b, _ = fire(gen)
    with pytest.raises(ValueError, match="as many biases and paddings as weights"):
        effconv.functional.conv2d_cat(x, w, b[:1], 1, [0, 1])
    with torch.no_grad(), pytest.raises(RuntimeError, match="same output size"):
        effconv.functional.conv2d_cat(x, w, b, 1, [0, 0])  # 8x8 and 6x6
    with torch.no_grad(), pytest.raises(RuntimeError, match="channels"):
        effconv.functional.conv2d_cat(torch.randn(1, 5, 8, 8), w, b, 1, [0, 1])


def test_fire_explains_both_convs():
    import effconv.models as em

    fire_module = em.squeezenet1_1().features[3]
    x = torch.randn(1, 64, 13, 13).contiguous(memory_format=torch.channels_last)
    rows = effconv.explain(fire_module, x)
    assert [r["op"] for r in rows] == ["conv2d"] * 3
    assert {r["backend"] for r in rows} == {"cpu"}

