"""Benchmark harness shared by bench/bench_*.py (pytest-benchmark).

Each benchmark times every provider of one case in the same rounds
(`measure_providers`) and records (group, provider, timings, work) through
the `record` fixture; at the end of the session one table per family
compares every effconv provider with the best PyTorch provider measured in
the same rounds, and the results are written to bench/results/<time>.json.
Timing: wall clock on the CPU; CUDA events after a synchronize on the GPU.
"""
from __future__ import annotations

import collections
import ctypes
import datetime
import json
import os
import platform
import statistics
import time
from pathlib import Path

import pytest

# Inductor compiles in this process: its default pool of compile workers
# keeps importing and idling on the CPU cores for a while after a
# torch.compile, which slowed every provider timed after it (batch-1
# effconv ran ~30% slower right after the torch.compile provider).
os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "1")

import torch  # noqa: E402


def _steady_malloc() -> str:
    """glibc serves large blocks with mmap (from a threshold that moves with
    what was freed, up to 32 MiB) and trims the heap top on free, so whether
    an op's activation-sized temporaries were page-faulted in again on every
    call depended on what the process had allocated before: torch's
    channels_last C192 28² depthwise forward+backward took 3 ms without
    faults and 11-15 ms with 9376 of them in one process, depending on which
    provider ran before, and its C144 56² N32 forward 3.9 or 17 ms in two
    runs. Without mmap and trimming, every provider's blocks come back from
    the heap after its first calls, faulted in once: each gets the
    allocator's fault-free steady state (effconv's own outputs come from its
    buffer pool either way). EFFCONV_BENCH_MALLOC=default keeps glibc's
    defaults (what an untuned PyTorch process gets), and thresholds set in
    the environment (the deformable bench's memory probe sets its own) are
    left alone."""
    if os.environ.get("EFFCONV_BENCH_MALLOC", "steady") == "default":
        return "glibc malloc defaults (EFFCONV_BENCH_MALLOC=default)"
    if "MALLOC_MMAP_THRESHOLD_" in os.environ or "MALLOC_TRIM_THRESHOLD_" in os.environ:
        return "glibc malloc: thresholds from the environment"
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return "system malloc"
    m_trim_threshold, m_mmap_max = -1, -4  # glibc's mallopt parameters
    if libc.mallopt(m_mmap_max, 0) and libc.mallopt(m_trim_threshold, 2**31 - 1):
        return "glibc malloc: no mmap, no trim"
    return "glibc malloc (defaults)"


MALLOC = _steady_malloc()

RESULTS = collections.OrderedDict()  # (family, case, mode) -> {provider: row}
TARGETS = {}                         # (family, case, mode) -> target speedup
UNITS = {}                           # family -> what its numbers are, when not median ms
OUT_DIR = Path(__file__).parent / "results"
TIME_BUDGET_S = float(os.environ.get("EFFCONV_BENCH_SECONDS", "1.5"))


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    dev = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    return (f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} "
            f"({torch.get_num_threads()} threads, {torch.backends.cpu.get_cpu_capability()}), {dev}, {MALLOC}")


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed_ms(fn, device: torch.device) -> float:
    """One run of fn in ms: CUDA events after a synchronize on the GPU, wall clock on the CPU."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize(device)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize(device)
        return start.elapsed_time(end)
    t = time.perf_counter()
    fn()
    return (time.perf_counter() - t) * 1e3


def _once_s(fn, device: torch.device) -> float:
    """Seconds of one warm run (after one untimed run)."""
    fn()
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    return max(time.perf_counter() - t0, 1e-6)


def _summary(times: list[float]) -> dict:
    times = sorted(times)
    q = statistics.quantiles(times, n=5) if len(times) >= 5 else [times[0]] * 4
    return {"median_ms": statistics.median(times), "q20_ms": q[0], "q80_ms": q[3], "rounds": len(times)}


def measure(benchmark, fn, device: torch.device) -> dict:
    """Median and 20/80% quantiles in ms of one function (a reference row
    with nothing to compare against). Calibrates the number of rounds to the
    time budget, then hands the rounds to pytest-benchmark (so its JSON and
    comparison tools see them)."""
    rounds = int(min(200, max(5, TIME_BUDGET_S / _once_s(fn, device))))
    times: list[float] = []
    benchmark.pedantic(lambda: times.append(_timed_ms(fn, device)), rounds=rounds, iterations=1,
                       warmup_rounds=0)
    return _summary(times)


def step(f, inputs: tuple, train: bool):
    """A provider's timed call: f(*inputs) without autograd, or (train) its
    forward and the gradients of every input for a fixed output gradient."""
    if train:
        dy = torch.randn_like(f(*inputs))
        return lambda: torch.autograd.grad(f(*inputs), inputs, dy)

    def run():
        with torch.no_grad():
            f(*inputs)

    return run


ROUNDS = 5  # blocks per provider and case


def measure_providers(benchmark, runs: dict, device: torch.device) -> dict:
    """{provider: timing} for one case, the providers timed in turns. Each
    of ROUNDS rounds gives every provider (in rotating order) a block of
    consecutive runs worth its share of the time budget and keeps the last
    two thirds: the first runs after another provider are slower until the
    caches settle on this one's operands (C384 14² depthwise forward+backward
    took 2.0, 1.2, 1.0, 0.94 ms ... 0.88 ms in a row after a torch call), and
    a benchmark loop measures the settled state. Timed one provider after
    another instead, the shared machine's slow drifts (its copy bandwidth
    swung between 35 and 67 GB/s within an hour) fell on whichever provider
    ran in a slow minute and moved single-run ratios by up to 1.8x; in turns
    they fall on all alike. pytest-benchmark gets the rounds as its timings."""
    names = list(runs)
    block_s = TIME_BUDGET_S / ROUNDS
    per_block = {p: int(min(60, max(2, block_s / _once_s(fn, device)))) for p, fn in runs.items()}
    times: dict = {p: [] for p in names}
    done = [0]

    def one_round():
        k = done[0] % len(names)
        done[0] += 1
        for p in names[k:] + names[:k]:
            n = per_block[p]
            block = [_timed_ms(runs[p], device) for _ in range(n)]
            times[p].extend(block[max(1, n // 3):])

    benchmark.pedantic(one_round, rounds=ROUNDS, iterations=1, warmup_rounds=0)
    return {p: _summary(t) for p, t in times.items()}


def measure_and_record(benchmark, record, runs: dict, device: torch.device, family: str, case: str, mode: str,
                       flop: float = 0.0, bytes_moved: float = 0.0, target: float | None = None) -> None:
    """measure_providers, then one row per provider (the same work for each)."""
    for provider, timing in measure_providers(benchmark, runs, device).items():
        record(family, case, mode, provider, timing, flop, bytes_moved, target)


@pytest.fixture
def record():
    def _record(family: str, case: str, mode: str, provider: str, timing: dict, flop: float = 0.0,
                bytes_moved: float = 0.0, target: float | None = None):
        row = dict(timing)
        ms = timing["median_ms"]
        row["gflops"] = flop / ms / 1e6 if flop else None
        row["gbps"] = bytes_moved / ms / 1e6 if bytes_moved else None
        RESULTS.setdefault((family, case, mode), {})[provider] = row
        if target is not None:
            TARGETS[(family, case, mode)] = target

    return _record


def _table(rows_by_key) -> list[str]:
    lines = []
    families = collections.OrderedDict()
    for (family, case, mode), provs in rows_by_key.items():
        families.setdefault(family, []).append((case, mode, provs))
    for family, rows in families.items():
        providers = []
        for _, _, provs in rows:
            for p in provs:
                if p not in providers:
                    providers.append(p)
        first_seen = {p: i for i, p in enumerate(providers)}
        providers.sort(key=lambda p: (not p.startswith("torch"), first_seen[p]))
        torch_provs = [p for p in providers if p.startswith("torch")]
        ours = [p for p in providers if not p.startswith("torch")]
        head = ["case", "mode"] + [f"{p} ms" for p in providers] + [f"x {p}" for p in ours] + ["target", "GFLOP/s", "GB/s"]
        table = []
        for case, mode, provs in rows:
            best = min((provs[p]["median_ms"] for p in torch_provs if p in provs), default=None)
            cells = [case, mode] + [f"{provs[p]['median_ms']:.3f}" if p in provs else "-" for p in providers]
            for p in ours:
                cells.append(f"{best / provs[p]['median_ms']:.2f}" if p in provs and best else "-")
            tgt = TARGETS.get((family, case, mode))
            if tgt is not None and ours and ours[0] in provs and best:
                met = best / provs[ours[0]]["median_ms"] >= tgt
                cells.append(f">={tgt:g} {'met' if met else 'NOT met'}")
            else:
                cells.append("")
            main = provs.get(ours[0]) if ours else None
            cells.append(f"{main['gflops']:.0f}" if main and main.get("gflops") else "")
            cells.append(f"{main['gbps']:.1f}" if main and main.get("gbps") else "")
            table.append(cells)
        widths = [max(len(h), *(len(r[i]) for r in table)) for i, h in enumerate(head)]
        unit = UNITS.get(family, "median ms")
        lines.append(f"== {family}: {unit} (ratio 'x' = best torch provider / effconv) ==")
        lines.append("  ".join(h.replace(" ms", f" {unit.split()[-1]}" if family in UNITS else " ms").ljust(w)
                               for h, w in zip(head, widths)))
        for r in table:
            lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths)))
        lines.append("")
    return lines


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if not RESULTS:
        return
    tr = terminalreporter
    tr.section("effconv benchmark summary")
    tr.write_line(f"machine: {machine()}")
    for line in _table(RESULTS):
        tr.write_line(line)
    OUT_DIR.mkdir(exist_ok=True)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    payload = {
        "machine": machine(),
        "results": [
            {"family": f, "case": c, "mode": m, "provider": p, **row, "target": TARGETS.get((f, c, m))}
            for (f, c, m), provs in RESULTS.items() for p, row in provs.items()
        ],
    }
    for name in (f"{stamp}.json", "latest.json"):
        (OUT_DIR / name).write_text(json.dumps(payload, indent=1))
    (OUT_DIR / "latest.txt").write_text("machine: " + machine() + "\n" + "\n".join(_table(RESULTS)) + "\n")
    tr.write_line(f"results: {OUT_DIR / (stamp + '.json')}")
