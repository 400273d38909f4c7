"""Deformable convolution (DCNv2 with mask, 3x3) against
torchvision.ops.deform_conv2d on the same inputs: forward and
forward+backward time, and the extra memory a forward+backward step takes
(each provider in a fresh process: sampled resident set on CPU, the caching
allocator's peak on CUDA)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torchvision.ops as tvo

import effconv
from conftest import UNITS, measure_providers

CONF = json.loads((Path(__file__).parent / "shapes" / "deform.json").read_text())
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
CASES = [pytest.param(c, id=c["name"].replace(" ", "_")) for c in CONF["cases"]]
FAMILY, MEMORY = "deform_conv2d vs torchvision", "deform_conv2d peak memory vs torchvision"
UNITS[MEMORY] = "extra memory of fwd+bwd, MB"
PROVIDERS = {"torchvision": tvo.deform_conv2d, "effconv": effconv.functional.deform_conv2d}


def make_inputs(c, device, requires_grad=False, channels_last=False):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(c["n"], c["c"], c["h"], c["w"], generator=g)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    ts = [x, torch.randn(c["n"], 18, c["h"], c["w"], generator=g), torch.randn(c["k"], c["c"], 3, 3, generator=g) * 0.05,
          torch.randn(c["k"], generator=g), torch.rand(c["n"], 9, c["h"], c["w"], generator=g)]
    return [t.to(device).requires_grad_(requires_grad) for t in ts]


def flops(c):
    return 2.0 * c["n"] * c["h"] * c["w"] * c["k"] * c["c"] * 9


def runner(provider, c, mode):
    """The timed step of one provider: its own copy of the inputs."""
    fn = PROVIDERS[provider.removesuffix("_cl")]
    x, off, w, b, m = make_inputs(c, DEVICE, mode != "forward", provider.endswith("_cl"))
    if mode == "forward":
        def run():
            with torch.no_grad():
                fn(x, off, w, b, 1, 1, 1, m)
    else:
        def run():
            fn(x, off, w, b, 1, 1, 1, m).sum().backward()
            for t in (x, off, w, b, m):
                t.grad = None
    return run


@pytest.mark.parametrize("mode", ["forward", "forward+backward"])
@pytest.mark.parametrize("c", CASES)
def test_deform_conv2d(benchmark, record, c, mode):
    runs = {p: runner(p, c, mode) for p in ("torchvision", "effconv", "effconv_cl")}
    for provider, timing in measure_providers(benchmark, runs, DEVICE).items():
        record(FAMILY, c["name"], mode, provider, timing, flop=flops(c) * (1 if mode == "forward" else 3),
               target=c["target"])


_PEAK = r"""
import os, sys, json, threading, time, torch
sys.path.insert(0, {bench!r})
import effconv
from bench_deform_conv2d import make_inputs, PROVIDERS
c, provider, device = json.loads(sys.argv[1]), sys.argv[2], torch.device(sys.argv[3])
page = os.sysconf("SC_PAGE_SIZE")
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * page
x, off, w, b, m = make_inputs(c, device, True)
fn = PROVIDERS[provider]
fn(x, off, w, b, 1, 1, 1, m).sum().backward()  # warm-up
for t in (x, off, w, b, m):
    t.grad = None
effconv.empty_cache()  # effconv's cached buffers count only if the step needs them again
if device.type == "cuda":
    torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats(); base = torch.cuda.memory_allocated()
else:
    base = rss()
peak, done = [base], threading.Event()
def sample():
    while not done.is_set():
        peak[0] = max(peak[0], rss())
        time.sleep(0.0002)
th = threading.Thread(target=sample)
if device.type != "cuda":
    th.start()
fn(x, off, w, b, 1, 1, 1, m).sum().backward()
if device.type == "cuda":
    torch.cuda.synchronize(); extra = torch.cuda.max_memory_allocated() - base
else:
    done.set(); th.join(); extra = max(peak[0], rss()) - base
print(json.dumps(extra))
"""


@pytest.mark.parametrize("provider", ["torchvision", "effconv"])
@pytest.mark.parametrize("c", CASES)
def test_deform_conv2d_peak_memory(record, c, provider):
    """Memory a forward+backward step needs beyond its inputs and weights:
    CPU: the resident set sampled every 0.2 ms during the step, minus the
    resident set before it (after a warm-up step and effconv.empty_cache());
    CUDA: the caching allocator's peak above what was allocated before."""
    # Fixed glibc thresholds: every allocation above 64 KiB is its own
    # mapping, returned on free, so the resident set follows live memory. With
    # glibc's adaptive threshold, memory the warm-up step freed stayed
    # resident and was reused unseen (torchvision's step measured 55 MB in one
    # run, 3 MB in another).
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="0")
    out = subprocess.run([sys.executable, "-c", _PEAK.format(bench=str(Path(__file__).parent)), json.dumps(c),
                          provider, DEVICE.type], capture_output=True, text=True, check=True, env=env)
    mb = json.loads(out.stdout.strip().splitlines()[-1]) / 2**20
    record(MEMORY, c["name"], "fwd+bwd", provider, {"median_ms": mb, "q20_ms": mb, "q80_ms": mb, "rounds": 1})
