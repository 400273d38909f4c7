"""Captured inference programs (effconv/program.py): an effconv model's
eval-mode forward replayed as a flat list of kernel calls. A replay must
compute exactly what the modules compute, and any change to the model, the
call or the environment must send the call back to the modules."""
import copy
import pickle

import pytest
import torch
from torch import nn

import effconv
import effconv.models
from effconv import program

MODELS = {
    "mobilenet_v2": lambda: effconv.models.mobilenet_v2(num_classes=10),
    "mobilenet_v1": lambda: effconv.models.mobilenet_v1(width_mult=0.25, num_classes=10),
    "squeezenet1_0": lambda: effconv.models.squeezenet1_0(num_classes=10),
    "squeezenet1_1": lambda: effconv.models.squeezenet1_1(num_classes=10),
}


@pytest.fixture
def runs(monkeypatch):
    """Counts the calls that took the modules' path (not a replay)."""
    calls = []
    real = program._run_stages

    def spy(model, x):
        calls.append(model)
        return real(model, x)

    monkeypatch.setattr(program, "_run_stages", spy)
    return calls


def _randomize_bn(model):
    gen = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            with torch.no_grad():
                m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=gen) * 0.1)


def _model(name):
    torch.manual_seed(0)
    m = MODELS[name]().eval()
    _randomize_bn(m)
    return m


def _reference(model, x):
    """The modules' own path, layer by layer."""
    with torch.inference_mode():
        return program._run_stages(model, x)


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("mode", ["inference_mode", "no_grad"])
def test_replay_equals_modules(name, mode, runs):
    model = _model(name)
    x = torch.randn(1, 3, 64, 64)
    ctx = torch.inference_mode if mode == "inference_mode" else torch.no_grad
    with ctx():
        first = model(x)
        assert len(runs) == 1 and model._program.program.steps  # captured
        second, third = model(x), model(x)
    assert len(runs) == 1  # replayed twice
    ref = _reference(model, x)
    torch.testing.assert_close(first, ref, rtol=0, atol=0)
    torch.testing.assert_close(second, ref, rtol=0, atol=0)
    torch.testing.assert_close(third, ref, rtol=0, atol=0)
    # The replay runs effconv's kernels: one step per layer, not the modules.
    assert not any(getattr(s, "__self__", None) is model.features for s in model._program.program.steps)


def _set_bn_var(model):
    bn = next(m for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    with torch.no_grad():
        bn.running_var.mul_(3.0)


def _scale_conv_weight(model):
    conv = [m for m in model.modules() if isinstance(m, nn.Conv2d)][5]
    with torch.no_grad():
        conv.weight.mul_(-1.5)


def _replace_weight(model):
    conv = [m for m in model.modules() if isinstance(m, nn.Conv2d)][3]
    conv.weight = nn.Parameter(conv.weight.detach() * 0.5)


def _swap_activation(model):
    block = model.features[2].conv[0]  # ConvBNAct2d with ReLU6
    block[2] = nn.SiLU()


def _replace_block(model):
    model.features[3] = copy.deepcopy(model.features[3])
    with torch.no_grad():
        next(model.features[3].parameters()).mul_(2)


def _change_eps(model):
    bn = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)][4]
    bn.eps = 0.5


def _load_state_dict(model):
    sd = {k: v * 1.01 if v.is_floating_point() else v for k, v in model.state_dict().items()}
    model.load_state_dict(sd)


def _train_step(model):
    model.train()
    model(torch.randn(2, 3, 64, 64)).sum().backward()
    with torch.no_grad():
        for p in model.parameters():
            p.sub_(0.1 * p.grad)
    model.eval()


def _classifier_bias(model):
    with torch.no_grad():
        model.classifier[1].bias.add_(1.0)


CHANGES = {f.__name__.lstrip("_"): f for f in (_set_bn_var, _scale_conv_weight, _replace_weight, _swap_activation,
                                               _replace_block, _change_eps, _load_state_dict, _train_step,
                                               _classifier_bias)}


@pytest.mark.parametrize("change", sorted(CHANGES))
def test_replay_follows_model_changes(change, runs):
    model = _model("mobilenet_v2")
    x = torch.randn(1, 3, 64, 64)
    with torch.inference_mode():
        model(x)
        model(x)
    assert len(runs) == 1
    before = _reference(model, x)
    CHANGES[change](model)
    ref = _reference(model, x)
    assert not torch.equal(ref, before)
    runs.clear()
    with torch.inference_mode():
        out = model(x)
        again = model(x)
    assert len(runs) == 1  # recaptured, then replayed
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    torch.testing.assert_close(again, ref, rtol=0, atol=0)


def test_replay_follows_the_call(runs):
    model = _model("squeezenet1_1")
    x = torch.randn(1, 3, 64, 64)
    with torch.inference_mode():
        model(x)
    # Another size, layout, dtype: each recaptures and matches the modules.
    for y in (torch.randn(2, 3, 48, 64), x.to(memory_format=torch.channels_last), x.double()):
        if y.dtype == torch.float64:
            model.double()  # (under inference_mode the parameters would be inference tensors)
        ref = _reference(model, y)
        runs.clear()
        with torch.inference_mode():
            torch.testing.assert_close(model(y), ref, rtol=0, atol=0)
            torch.testing.assert_close(model(y), ref, rtol=0, atol=0)
        assert len(runs) == 1
    # Another backend request, explain() recording, autograd: the modules' path, every call.
    runs.clear()
    with effconv.use_backend("torch"):
        with torch.inference_mode():
            out = model(x.double())
        assert len(effconv.explain(model, x.double())) >= 26  # every conv reported
    torch.testing.assert_close(out, _reference(model, x.double()))
    model(x.double()).sum().backward()
    assert len(runs) >= 3


def test_hooks_and_training_take_the_modules(runs):
    model = _model("mobilenet_v2")
    x = torch.randn(1, 3, 64, 64)
    seen = []
    with torch.inference_mode():
        model(x)
        handle = model.features[4].register_forward_hook(lambda m, i, o: seen.append(o.shape))
        model(x)
        model(x)
        assert len(seen) == 2
        handle.remove()
        glob = nn.modules.module.register_module_forward_hook(lambda m, i, o: seen.append(type(m)))
        try:
            model(x)
        finally:
            glob.remove()
        assert len(seen) > 3
        seen.clear()
        model(x)
        model(x)
        assert not seen
        model.features[1].train()  # a BatchNorm in training mode updates its running stats
        var = model.features[1].conv[0][1].running_var.clone()
        model(x)
        assert not torch.equal(var, model.features[1].conv[0][1].running_var)


def test_uncapturable_models_run_their_modules(runs):
    # A module reached twice: its memo describes only its last use.
    model = _model("mobilenet_v1")
    model.features[8] = model.features[7]
    x = torch.randn(1, 3, 64, 64)
    with torch.inference_mode():
        out = model(x)
        assert model._program.program.steps is None
        torch.testing.assert_close(model(x), out, rtol=0, atol=0)
    torch.testing.assert_close(out, _reference(model, x), rtol=0, atol=0)
    # Parameters made under inference_mode have no version counter to watch.
    with torch.inference_mode():
        model = _model("squeezenet1_1")
        out, again = model(x), model(x)
        assert model._program.program.steps is None
    torch.testing.assert_close(again, out, rtol=0, atol=0)


def test_subclass_with_its_own_forward(runs):
    class Doubled(effconv.ConvBNAct2d):
        def forward(self, x):
            return super().forward(x) * 2

    model = _model("mobilenet_v2")
    old = model.features[0]
    new = Doubled(3, 32, 3, 2, activation="relu6")
    new.load_state_dict(old.state_dict())
    model.features[0] = new.eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.inference_mode():
        model(x)
        out = model(x)
    assert len(runs) == 1
    torch.testing.assert_close(out, _reference(model, x), rtol=0, atol=0)


def test_memo_pickles_empty():
    model = _model("squeezenet1_1")
    with torch.inference_mode():
        model(torch.randn(1, 3, 64, 64))
    assert model._program.program is not None
    for clone in (pickle.loads(pickle.dumps(model)), copy.deepcopy(model)):
        assert clone._program.program is None
        x = torch.randn(1, 3, 64, 64)
        with torch.inference_mode():
            torch.testing.assert_close(clone(x), model(x), rtol=0, atol=0)


def test_snapshot_check():
    C = effconv._ext.C()
    d, t = {"a": 1, "b": "x"}, torch.zeros(3)
    dicts, tensors = [d], [t]
    tags, stamps = C.dict_tags(dicts), C.tensor_stamps(tensors)
    assert C.snapshot_holds(dicts, tags, tensors, stamps)
    t.add_(1)
    assert not C.snapshot_holds(dicts, tags, tensors, stamps)
    stamps = C.tensor_stamps(tensors)
    assert C.snapshot_holds(dicts, tags, tensors, stamps)
    d["b"] = "y"
    assert not C.snapshot_holds(dicts, tags, tensors, stamps)
    tags = C.dict_tags(dicts)
    d["c"] = 2
    del d["c"]  # back to the same contents, but changed: a new tag
    assert not C.snapshot_holds(dicts, tags, tensors, stamps)
    tags = C.dict_tags(dicts)
    t.data = torch.ones(3)  # new storage, same version
    assert not C.snapshot_holds(dicts, tags, tensors, stamps)
    assert not C.snapshot_holds(dicts, tags[:0], tensors, stamps)
    with torch.inference_mode():
        inf = torch.zeros(2)
    with pytest.raises(RuntimeError, match="inference tensors"):
        C.tensor_stamps([inf])
    assert not C.snapshot_holds(dicts, tags, [inf], stamps[:1])
    with pytest.raises(RuntimeError, match="expected dicts"):
        C.dict_tags([d, [1]])


def test_switch_and_explain(runs):
    model = _model("mobilenet_v2")
    x = torch.randn(1, 3, 64, 64)
    assert "none captured yet" in program.describe(model)
    with torch.inference_mode():
        model(x)
    assert program.describe(model).startswith("52 recorded kernel calls and 1 module forwards")
    row = [r for r in effconv.explain(model) if r["op"] == "program"]
    assert len(row) == 1 and row[0]["kernel"] == program.describe(model)
    old = program.set_enabled(False)
    try:
        assert "off" in program.describe(model)
        runs.clear()
        with torch.inference_mode():
            out = model(x)
            model(x)
        assert len(runs) == 2  # every call ran the modules
    finally:
        program.set_enabled(old)
    torch.testing.assert_close(out, _reference(model, x), rtol=0, atol=0)
    assert program.describe(nn.Sequential()) is None


def test_threads_share_a_model():
    # Captures record on their own thread; a replay checks its input first.
    import threading

    model = _model("squeezenet1_1")
    inputs = [torch.randn(1, 3, 64, 64), torch.randn(2, 3, 48, 48)]
    refs = [_reference(model, x) for x in inputs]
    errors = []

    def work(i):
        try:
            with torch.inference_mode():
                for _ in range(15):
                    torch.testing.assert_close(model(inputs[i]), refs[i], rtol=0, atol=0)
        except Exception as e:  # noqa: BLE001  (reported below)
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in (0, 1, 0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]


def test_capture_backs_off_when_never_replayed(monkeypatch):
    # A model changed before every call would pay a capture per call; after
    # two unreplayed captures the calls between tries double.
    captures = []
    real = program._capture

    def spy(*args):
        captures.append(1)
        return real(*args)

    monkeypatch.setattr(program, "_capture", spy)
    model = _model("mobilenet_v1")
    bn = model.features[0][1]
    x = torch.randn(1, 3, 32, 32)
    with torch.inference_mode():
        for _ in range(20):
            with torch.no_grad():
                bn.running_var.add_(0.01)
            torch.testing.assert_close(model(x), _reference(model, x), rtol=0, atol=0)
        assert len(captures) == 4  # calls 1, 2, 8 and 18
        assert program.describe(model).startswith("backed off: 4 captures")
        # Once the model stops changing, a capture is replayed and the back-off ends.
        for _ in range(40):
            out = model(x)
        n, replays = len(captures), model._program.replays
        model(x)
        assert len(captures) == n and model._program.replays == replays + 1
        torch.testing.assert_close(out, _reference(model, x), rtol=0, atol=0)
