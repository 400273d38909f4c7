"""Launch configurations as data, and the autotune/interpreter switch."""
from __future__ import annotations

import functools
import json
import os
from pathlib import Path

import torch
import triton

CONFIG_DIR = Path(__file__).parent / "configs"


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@functools.lru_cache(maxsize=None)
def load(op: str) -> dict[str, list[dict]]:
    """{kernel name: [config, ...]} from configs/<op>.json; the first config of
    each kernel is its default (the interpreter's, and the AOT test's baseline)."""
    with open(CONFIG_DIR / f"{op}.json") as f:
        data = json.load(f)
    return {k: v for k, v in data.items() if not k.startswith("_")}


def to_triton(cfg: dict) -> triton.Config:
    meta = {k: v for k, v in cfg.items() if k not in ("num_warps", "num_stages")}
    return triton.Config(meta, num_warps=cfg.get("num_warps", 4), num_stages=cfg.get("num_stages", 2))


def launcher(fn, op: str, kernel: str, key: list[str]):
    """(callable, default meta). On a GPU the callable autotunes over the
    configs; under the interpreter it is the plain kernel and the caller
    passes the default config's meta-parameters (autotuning needs CUDA events)."""
    configs = load(op)[kernel]
    if interpreting():
        meta = {k: v for k, v in configs[0].items() if k not in ("num_warps", "num_stages")}
        return fn, meta
    return triton.autotune([to_triton(c) for c in configs], key=key)(fn), {}


def dot_precision(dtype: torch.dtype) -> str:
    """fp32 uses TF32 exactly when cuDNN would (torch.backends.cudnn.allow_tf32),
    so effconv and cuDNN agree on precision; other dtypes are exact products."""
    if dtype == torch.float32 and torch.backends.cudnn.allow_tf32:
        return "tf32"
    return "ieee"


def acc_dtype(dtype: torch.dtype):
    import triton.language as tl

    return tl.float64 if dtype == torch.float64 else tl.float32
