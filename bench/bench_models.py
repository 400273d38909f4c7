"""Whole networks: effconv.models and effconv.convert(torchvision model)
against torchvision eager (NCHW and channels_last) and torch.compile with
inductor freezing, inference at batch 1 and 16, and a MobileNetV2 training
step. Two tables: 'models vs eager' and 'models vs torch.compile'."""
from __future__ import annotations

import functools
import json
from pathlib import Path

import pytest
import torch
import torchvision

import effconv
import effconv.models
from conftest import measure_providers

CONF = json.loads((Path(__file__).parent / "shapes" / "models.json").read_text())
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
INFER = [(c["model"], c["batch"], c) for c in CONF["inference"]]
TRAIN = [(c["model"], c["batch"], c) for c in CONF["training"]]
EAGER, COMPILED = "models vs eager", "models vs torch.compile"


@functools.lru_cache(maxsize=None)
def weights(name: str):
    torch.manual_seed(0)
    return getattr(torchvision.models, name)().state_dict()


def build(name: str, provider: str) -> torch.nn.Module:
    if provider == "effconv":
        m = getattr(effconv.models, name)()
    else:
        m = getattr(torchvision.models, name)()
    m.load_state_dict(weights(name))
    if provider == "effconv_convert":
        m = effconv.convert(m)
    if provider in ("torch_cl", "torch_compile", "effconv_convert"):
        m = m.to(memory_format=torch.channels_last)
    return m.to(DEVICE)


def case_name(name, batch):
    return f"{name} 224x224 batch {batch}"


def inference_runner(name, batch, provider):
    """One provider's inference call (compiled outside the timed region)."""
    model = build(name, provider).eval()
    x = torch.randn(batch, 3, 224, 224, device=DEVICE)
    if provider != "torch":
        x = x.contiguous(memory_format=torch.channels_last)
    if provider == "torch_compile":
        import torch._inductor.config as inductor_config

        with inductor_config.patch(freezing=True), torch.inference_mode():
            model = torch.compile(model)
            model(x)

    def run():
        with torch.inference_mode():  # the same mode for every provider
            model(x)

    return run


@pytest.mark.parametrize("name,batch,conf", INFER, ids=[f"{n}-b{b}" for n, b, _ in INFER])
def test_inference(benchmark, record, name, batch, conf):
    providers = ["torch", "torch_cl", "torch_compile", "effconv", "effconv_convert"]
    runs = {p: inference_runner(name, batch, p) for p in providers}
    case = case_name(name, batch)
    for provider, timing in measure_providers(benchmark, runs, DEVICE).items():
        if provider != "torch_compile":
            record(EAGER, case, "eval", provider, timing, target=conf["eager_target"])
        if provider in ("torch_compile", "effconv", "effconv_convert"):
            record(COMPILED, case, "eval", provider, timing, target=conf["compile_target"])


def training_runner(name, batch, provider):
    """One provider's SGD step on its own model copy."""
    model = build(name, provider).train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    x = torch.randn(batch, 3, 224, 224, device=DEVICE).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 1000, (batch,), device=DEVICE)

    def step():
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()

    return step


@pytest.mark.parametrize("name,batch,conf", TRAIN, ids=[f"{n}-b{b}" for n, b, _ in TRAIN])
def test_training_step(benchmark, record, name, batch, conf):
    runs = {p: training_runner(name, batch, p) for p in ("torch_cl", "effconv")}
    for provider, timing in measure_providers(benchmark, runs, DEVICE).items():
        record(EAGER, case_name(name, batch), "train step", provider, timing, target=conf["train_target"])
