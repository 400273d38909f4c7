"""effconv.convert() on torchvision models: outputs and gradients equal the
original's in train and eval mode; the report names what changed and why
the rest did not."""
from __future__ import annotations

import copy

import pytest
import torch
import torchvision
from torch import nn

import effconv
from helpers import assert_close


def randomized(model: nn.Module) -> nn.Module:
    """Non-trivial BatchNorm state (fresh models have mean 0 / var 1)."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return model


def run(model, x, g, seed=7):
    torch.manual_seed(seed)  # same dropout masks
    y = model(x)
    (y * g).sum().backward()
    return y, {n: p.grad for n, p in model.named_parameters()}


@pytest.mark.parametrize("name", ["mobilenet_v2", "squeezenet1_1", "resnet18", "mobilenet_v3_small"])
def test_convert_torchvision_model(name):
    torch.manual_seed(0)
    tv = randomized(getattr(torchvision.models, name)(num_classes=10)).double()
    ours = effconv.convert(tv)
    report = effconv.conversion_report(ours)
    assert report.converted
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    g = torch.randn(2, 10, dtype=torch.float64)
    for mode in ("train", "eval"):
        tv.train(mode == "train")
        ours.train(mode == "train")
        y_ref, grads_ref = run(tv, x, g)
        y, grads = run(ours, x, g)
        assert_close(y, y_ref, 1000, f"{mode} logits")
        # Parameter names may nest one level deeper where a run inside a longer
        # Sequential was fused; the parameter order is unchanged.
        scale = max(v.abs().max().item() for v in grads_ref.values())
        for (n_ref, a), (n, b) in zip(grads_ref.items(), grads.items()):
            torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-9 * scale, msg=f"{mode} grad {n_ref} / {n}")
        for (n_ref, a), (n, b) in zip(tv.named_buffers(), ours.named_buffers()):
            torch.testing.assert_close(b, a, rtol=1e-9, atol=1e-12, msg=f"{mode} buffer {n_ref}")
        tv.zero_grad()
        ours.zero_grad()


def test_report_and_keys():
    tv = torchvision.models.resnet18()
    ours = effconv.convert(tv)
    report = effconv.conversion_report(ours)
    kept = dict(report.kept)
    assert "bn1" in kept and "forward decides" in kept["bn1"]
    converted = dict(report.converted)
    assert converted["conv1"] == "nn.Conv2d -> effconv.Conv2d"
    assert converted["maxpool"] == "nn.MaxPool2d -> effconv.MaxPool2d"
    assert isinstance(ours.maxpool, effconv.MaxPool2d)
    assert "ConvBNAct2d" in converted["layer2.0.downsample"]
    assert isinstance(ours.layer2[0].downsample, effconv.ConvBNAct2d)
    # Whole-Sequential replacements keep the state_dict keys.
    assert list(ours.state_dict()) == list(tv.state_dict())
    mb = effconv.convert(torchvision.models.mobilenet_v2())
    assert isinstance(mb.features[0], effconv.ConvBNAct2d) and mb.features[0].activation == "relu6"
    assert str(report).startswith("converted")


def test_inplace_and_no_fuse():
    tv = torchvision.models.squeezenet1_1()
    copy_ = effconv.convert(tv)
    assert type(tv.features[0]) is nn.Conv2d and type(copy_.features[0]) is effconv.Conv2d
    same = effconv.convert(tv, inplace=True)
    assert same is tv and type(tv.features[0]) is effconv.Conv2d
    mb = effconv.convert(torchvision.models.mobilenet_v2(), fuse=False)
    assert not any(isinstance(m, effconv.ConvBNAct2d) for m in mb.modules())
    assert all(type(m) is not nn.Conv2d for m in mb.modules())
    with pytest.raises(ValueError, match="did not come from effconv.convert"):
        effconv.conversion_report(torchvision.models.mobilenet_v2())


def test_sequence_runs_fuse_in_place():
    seq = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.SiLU(), nn.Conv2d(8, 8, 1),
                        nn.BatchNorm2d(8), nn.Hardswish(), nn.BatchNorm2d(8))
    randomized(seq)
    ours = effconv.convert(seq)
    assert isinstance(ours[0], effconv.ConvBNAct2d) and ours[0].activation == "silu"
    assert isinstance(ours[1], nn.Identity) and isinstance(ours[2], nn.Identity)
    assert isinstance(ours[3], effconv.ConvBNAct2d) and ours[3].activation == "none"
    assert isinstance(ours[5], nn.Hardswish) and type(ours[6]) is nn.BatchNorm2d
    assert "not preceded by a Conv2d" in dict(effconv.conversion_report(ours).kept)["6"]
    x = torch.randn(2, 3, 8, 8)
    for mode in (True, False):
        seq.train(mode)
        ours.train(mode)
        assert_close(ours(x), seq(x), 72)


def test_conv_activation_pool_runs_fuse_in_place():
    """Conv -> act (-> MaxPool) without BatchNorm: one effconv.Conv2d at the
    conv's index (keys unchanged), the pool as its max_pool; a run with
    nothing to fuse, a BatchNorm run and a pool with indices are left to
    the other rules."""
    seq = nn.Sequential(nn.Conv2d(3, 8, 3, 2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, ceil_mode=True),
                        nn.Conv2d(8, 8, 1), nn.SiLU(), nn.Conv2d(8, 8, 3, padding=1), nn.MaxPool2d(2),
                        nn.Conv2d(8, 8, 1), nn.Hardswish(), nn.Conv2d(8, 8, 1), nn.BatchNorm2d(8),
                        nn.MaxPool2d(2, return_indices=False), nn.Conv2d(8, 4, 1))
    randomized(seq)
    ours = effconv.convert(seq)
    converted = dict(effconv.conversion_report(ours).converted)
    assert converted["0..2"] == ("Conv2d + relu + MaxPool2d -> effconv.Conv2d(activation='relu', max_pool=...) "
                                 "(keys unchanged; one kernel in CPU inference)")
    assert converted["3..4"] == "Conv2d + silu -> effconv.Conv2d(activation='silu') (keys unchanged)"
    assert converted["5..6"].startswith("Conv2d + MaxPool2d -> effconv.Conv2d(activation='none', max_pool=...)")
    assert converted["7"] == "nn.Conv2d -> effconv.Conv2d" and type(ours[8]) is nn.Hardswish
    assert isinstance(ours[9], effconv.ConvBNAct2d) and isinstance(ours[11], effconv.MaxPool2d)
    assert ours[0].activation == "relu" and isinstance(ours[0].max_pool, effconv.MaxPool2d)
    assert [type(ours[i]) for i in (1, 2, 4, 6)] == [nn.Identity] * 4
    assert [k for k in ours.state_dict() if not k.startswith("9.")] == [
        k for k in seq.state_dict() if not k.startswith(("9.", "10."))]
    x = torch.randn(2, 3, 33, 31)
    for layout in (torch.contiguous_format, torch.channels_last):
        for mode in (True, False):
            seq.train(mode)
            ours.train(mode)
            with torch.no_grad():
                assert_close(ours(x.contiguous(memory_format=layout)), seq(x), 72)


def test_squeezenet_stem_fused_in_inference():
    tv = torchvision.models.squeezenet1_1(num_classes=10).eval()
    ours = effconv.convert(tv)
    stem = ours.features[0]
    assert type(stem) is effconv.Conv2d and stem.activation == "relu" and stem.max_pool.ceil_mode
    assert ours.classifier[1].activation == "relu"
    assert list(ours.state_dict()) == list(tv.state_dict())
    x = torch.randn(2, 3, 64, 64).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        y = ours(x)
        ref = copy.deepcopy(tv).double()(x.double())
    assert_close(y, ref, 1000)


def test_squeezenet_fire_swapped():
    tv = torchvision.models.squeezenet1_1()
    ours = effconv.convert(tv)
    fires = [m for m in ours.modules() if type(m).__name__ == "Fire"]
    assert fires and all(type(m) is effconv.models.squeezenet.Fire for m in fires)
    assert all(f.squeeze.activation == "relu" for f in fires)
    assert "torchvision Fire -> effconv Fire" in dict(effconv.conversion_report(ours).converted)["features.3"]
    assert list(ours.state_dict()) == list(tv.state_dict())
    # A Fire whose activation was changed is not the stock block: only its convs are swapped.
    tv.features[3].squeeze_activation = nn.SiLU()
    odd = effconv.convert(tv)
    assert type(odd.features[3]).__module__ == "torchvision.models.squeezenet"
    assert type(odd.features[3].squeeze) is effconv.Conv2d
