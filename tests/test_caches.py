"""effconv's CPU caches (effconv/memory.py): packed weights are reused only
while the weight is the same, unchanged tensor; pooled output buffers are
reused without leaking values between calls."""
from __future__ import annotations

import gc

import pytest

import torch
import torch.nn.functional as F

import effconv
from effconv.ops._conv_family import FAMILIES
from helpers import assert_close


def conv(x, w):
    return effconv.functional.conv2d(x, w, None, 1, 1)


def test_packed_weight_follows_in_place_updates():
    x = torch.randn(1, 16, 7, 7)
    w = torch.randn(32, 16, 3, 3)
    conv(x, w)
    with torch.no_grad():
        w.mul_(-2.0)  # bumps the version counter
    assert_close(conv(x, w), F.conv2d(x.double(), w.double(), None, 1, 1), 144)
    p = torch.nn.Parameter(torch.randn(32, 16, 1, 1))
    opt = torch.optim.SGD([p], lr=1.0)
    for _ in range(3):
        with torch.no_grad():
            y = effconv.functional.conv2d(x, p)
        assert_close(y, F.conv2d(x.double(), p.detach().double()), 16)
        p.grad = torch.randn_like(p)
        opt.step()


def test_new_weight_at_a_freed_address_is_not_confused():
    x = torch.randn(1, 16, 7, 7)
    for i in range(6):
        w = torch.randn(32, 16, 3, 3)  # often reuses the previous weight's memory
        assert_close(conv(x, w), F.conv2d(x.double(), w.double(), None, 1, 1), 144, f"iteration {i}")
        del w
        gc.collect()


def test_channels_last_weights_are_packed_once_and_follow_updates():
    # convert(model).to(memory_format=torch.channels_last) leaves 3x3 weights
    # channels_last (not contiguous): they are cached like contiguous ones.
    from effconv import _ext

    x = torch.randn(1, 16, 7, 7).contiguous(memory_format=torch.channels_last)
    w = torch.randn(32, 16, 3, 3).contiguous(memory_format=torch.channels_last)
    _ext.C().clear_weight_cache_cpu()
    with torch.no_grad():
        assert_close(conv(x, w), F.conv2d(x.double(), w.double(), None, 1, 1), 144)
        assert _ext.C().clear_weight_cache_cpu() > 0
        conv(x, w)
        w.mul_(-2.0)
        assert_close(conv(x, w), F.conv2d(x.double(), w.double(), None, 1, 1), 144, "after an in-place update")
        w.data.add_(1.0)  # bypasses the version counter; the byte snapshot catches it
        assert_close(conv(x, w), F.conv2d(x.double(), w.double(), None, 1, 1), 144, "after a .data write")


def test_inference_mode_weights_and_empty_cache():
    x = torch.randn(1, 16, 7, 7)
    with torch.inference_mode():
        w = torch.randn(32, 16, 3, 3)
        assert_close(conv(x, w), F.conv2d(x.double(), w.double(), None, 1, 1), 144)
    w = torch.randn(32, 16, 3, 3)
    conv(x, w)
    assert effconv.empty_cache() > 0
    with torch.no_grad():
        conv(x, w)
        w.data.mul_(3.0)  # bypasses the version counter; the byte snapshot catches it
        assert_close(conv(x, w), F.conv2d(x.double(), w.double(), None, 1, 1), 144)


def test_pooled_outputs_are_fresh_each_call():
    x = torch.randn(4, 32, 64, 64).contiguous(memory_format=torch.channels_last)  # 2 MiB outputs and up
    w = torch.randn(64, 32, 1, 1)
    first = effconv.functional.conv2d(x, w)
    ref = F.conv2d(x.double(), w.double())
    assert_close(first, ref, 32)
    del first
    second = effconv.functional.conv2d(x * 2, w)  # may reuse the first output's buffer
    assert_close(second, ref * 2, 32)
    assert second.is_contiguous(memory_format=torch.channels_last)
    second.add_(1)  # an ordinary, writable tensor
    third = effconv.functional.conv2d(x.contiguous(), w)
    assert third.is_contiguous() and third.data_ptr() != second.data_ptr()


def test_inference_mode_hits_follow_the_version_counter():
    x = torch.randn(1, 16, 7, 7)
    w = torch.randn(32, 16, 3, 3)
    with torch.inference_mode():
        conv(x, w)
        w.add_(1.0)  # in-place update of a normal tensor bumps its version in inference mode too
        assert_close(conv(x, w), F.conv2d(x.double(), w.double(), None, 1, 1), 144)


def test_call_plans_keep_checks_and_routing_per_call(monkeypatch):
    """Ops reuse a call's checks, layout and backend for calls with the same
    metadata; anything else is checked and routed afresh, and explain() sees
    every choice."""
    fam = FAMILIES["conv2d"]
    ran = []
    for name in ("cpu", "torch"):
        run = fam.runners["forward"][name]
        monkeypatch.setitem(fam.runners["forward"], name, lambda *a, _n=name, _r=run: (ran.append(_n), _r(*a))[1])
    x = torch.randn(1, 8, 6, 5)  # a shape no other test uses: no plan exists yet
    w = torch.randn(4, 8, 3, 3)
    with torch.no_grad():
        ref = F.conv2d(x.double(), w.double(), None, 1, 1)
        for _ in range(2):
            assert_close(conv(x, w), ref, 72)
        with effconv.use_backend("torch"):
            assert_close(conv(x, w), ref, 72)
        assert_close(conv(x, w), ref, 72)
        assert ran == ["cpu", "cpu", "torch", "cpu"]
        with pytest.raises(RuntimeError, match="expected input"):
            conv(torch.randn(1, 7, 6, 5), w)
        y = conv(x.contiguous(memory_format=torch.channels_last), w)
        assert y.is_contiguous(memory_format=torch.channels_last)
        assert_close(y, ref, 72)
        assert [r["backend"] for r in effconv.explain(conv, x, w)] == ["cpu"]
