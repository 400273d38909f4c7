"""Benchmark harness shared by bench/bench_*.py (pytest-benchmark).

Each benchmark records (group, provider, timings, work) through the
`record` fixture; at the end of the session one table per family compares
every effconv provider with the best PyTorch provider measured in the same
run, and the results are written to bench/results/<time>.json. Timing: wall
clock on the CPU; CUDA events after a synchronize on the GPU.
"""
from __future__ import annotations

import collections
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
            f"({torch.get_num_threads()} threads, {torch.backends.cpu.get_cpu_capability()}), {dev}")


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(benchmark, fn, device: torch.device) -> dict:
    """Median and 20/80% quantiles in ms. Calibrates the number of rounds to
    the time budget, then hands the rounds to pytest-benchmark (so its JSON
    and comparison tools see them) and, on CUDA, times with events."""
    fn()
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    once = max(time.perf_counter() - t0, 1e-6)
    rounds = int(min(200, max(5, TIME_BUDGET_S / once)))
    times: list[float] = []

    def timed():
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize(device)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize(device)
            times.append(start.elapsed_time(end))
        else:
            t = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t) * 1e3)

    benchmark.pedantic(timed, rounds=rounds, iterations=1, warmup_rounds=min(3, rounds))
    times.sort()
    q = statistics.quantiles(times, n=5) if len(times) >= 5 else [times[0]] * 4
    return {"median_ms": statistics.median(times), "q20_ms": q[0], "q80_ms": q[3], "rounds": len(times)}


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
