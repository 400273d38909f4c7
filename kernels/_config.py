"""Launch configurations as data, and the autotune/interpreter switch.

configs/<op>.json maps kernel -> class -> [config, ...]. Classes split
configs by what executes the dot: 'mma' (tensor cores: fp16, bf16, TF32)
and 'fma' (FMA units: IEEE fp32, fp64), whose register budgets differ; a
kernel without a dot has the single class 'any'. The first config of each
class is its default.
"""
from __future__ import annotations

import contextlib
import functools
import json
import os
from pathlib import Path

import torch
import triton
import triton.language as tl

CONFIG_DIR = Path(__file__).parent / "configs"
META_KEYS = ("num_warps", "num_stages")


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


_FORCED: list[int] = []


@contextlib.contextmanager
def forced_config(index: int):
    """Launches config `index` of every class (a class with fewer configs its
    last) instead of autotuning or the default: how the tests run each
    shipped config, under the interpreter and on a GPU."""
    _FORCED.append(index)
    try:
        yield
    finally:
        _FORCED.pop()


def autotuning() -> bool:
    """EFFCONV_TRITON_AUTOTUNE=0 launches each class's default config instead
    of benchmarking them all: one compile per specialisation (GPU test runs,
    reproducible config choice)."""
    return os.environ.get("EFFCONV_TRITON_AUTOTUNE", "1") != "0"


@functools.lru_cache(maxsize=None)
def load(op: str) -> dict[str, dict[str, list[dict]]]:
    with open(CONFIG_DIR / f"{op}.json") as f:
        data = json.load(f)
    return {k: v for k, v in data.items() if not k.startswith("_")}


def meta_of(cfg: dict) -> dict:
    return {k: v for k, v in cfg.items() if k not in META_KEYS}


def dot_precision(dtype: torch.dtype) -> str:
    """fp32 uses TF32 exactly when cuDNN would (torch.backends.cudnn.allow_tf32),
    so effconv and cuDNN agree on precision; other dtypes are exact products."""
    if dtype == torch.float32 and torch.backends.cudnn.allow_tf32:
        return "tf32"
    return "ieee"


def dot_class(dtype: torch.dtype) -> str:
    if dtype in (torch.float16, torch.bfloat16):
        return "mma"
    if dtype == torch.float32 and dot_precision(dtype) == "tf32":
        return "mma"
    return "fma"


def acc_dtype(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def index_dtype(*tensors: torch.Tensor):
    """int32 offsets while every tensor spans fewer than 2^31 elements (fewer
    registers, faster address math), int64 beyond."""
    span = max((t.numel() and sum((s - 1) * abs(st) for s, st in zip(t.shape, t.stride())) + 1) for t in tensors)
    return tl.int64 if span >= 2**31 else tl.int32


class Launcher:
    """Picks the kernel variant for a dtype class: on a GPU an autotuner over
    that class's configs; under the interpreter (autotuning needs CUDA
    events) or with autotuning off, the plain kernel with the class's
    default config."""

    def __init__(self, fn, op: str, kernel: str, key: list[str], reset_to_zero: tuple[str, ...] = ()):
        self.fn, self.op, self.kernel, self.key = fn, op, kernel, key
        # Workspaces that programs write only partly (which rows depends on
        # the config): zeroed before each benchmarked config and the real run.
        self.reset_to_zero = list(reset_to_zero)
        self._tuned: dict[str, object] = {}

    def __call__(self, cls: str):
        configs = load(self.op)[self.kernel][cls]
        if _FORCED or interpreting() or not autotuning():
            cfg = configs[min(_FORCED[-1], len(configs) - 1)] if _FORCED else configs[0]
            # The interpreter takes no launch options (num_warps, num_stages).
            return self.fn, meta_of(cfg) if interpreting() else dict(cfg)
        if cls not in self._tuned:
            tconfigs = [triton.Config(meta_of(c), num_warps=c["num_warps"], num_stages=c["num_stages"])
                        for c in configs]
            self._tuned[cls] = triton.autotune(tconfigs, key=self.key,
                                               reset_to_zero=self.reset_to_zero or None)(self.fn)
        return self._tuned[cls], {}


def stats_workspace(kernel, meta: dict, rows_of, channels: int, like: torch.Tensor) -> torch.Tensor:
    """Zeroed [2, rows, channels] (fp32; fp64 for fp64 data) for a conv forward with STATS: each
    program along the pixel axes stores its tile's per-channel sum (plane 0)
    and sum of squares (plane 1) in its own row, and the launcher reduces
    the rows in float64 -- deterministic, no atomics. rows_of(meta) counts
    programs along the pixel axes; when autotuning, the most any config
    launches (rows a larger tile leaves unwritten stay zero)."""
    candidates = [meta] if meta else [c.kwargs for c in kernel.configs]
    rows = max(rows_of(m) for m in candidates)
    dtype = torch.float64 if like.dtype == torch.float64 else torch.float32
    return torch.zeros((2, rows, channels), dtype=dtype, device=like.device)


def finish_stats(workspace: torch.Tensor, stats: torch.Tensor) -> None:
    stats.copy_(workspace.sum(1, dtype=torch.float64))
