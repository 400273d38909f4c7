"""effconv.explain: which op and backend a module or a call uses, and why."""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import torch
from torch import nn

from effconv import backends


@dataclasses.dataclass
class Explanation:
    """Rows of (where, op, backend, kernel, reason). ``str()`` renders a table."""

    rows: list[dict[str, str]]

    def __iter__(self):
        return iter(self.rows)

    def __len__(self):
        return len(self.rows)

    @property
    def fallbacks(self) -> list[dict[str, str]]:
        return [r for r in self.rows if r.get("fallback") == "yes"]

    def __str__(self) -> str:
        if not self.rows:
            return "(no effconv ops)"
        cols = ["where", "op", "backend", "kernel", "reason"]
        widths = {c: max(len(c), *(len(r.get(c, "")) for r in self.rows)) for c in cols[:-1]}
        lines = ["  ".join(c.ljust(widths[c]) for c in cols[:-1]) + "  reason"]
        for r in self.rows:
            lines.append("  ".join(r.get(c, "").ljust(widths[c]) for c in cols[:-1]) + "  " + r["reason"])
        return "\n".join(lines)

    __repr__ = __str__


def _row(where: str, choice: backends.Choice) -> dict[str, str]:
    return {
        "where": where,
        "op": choice.op,
        "backend": choice.backend,
        "kernel": choice.kernel,
        "reason": choice.reason,
        "fallback": "yes" if choice.fell_back else "no",
    }


def _pool_choice(pool: nn.MaxPool2d, device, dtype) -> backends.Choice:
    """A parameter-free pooling layer: on `device`/`dtype` when given, else CPU float32."""
    from torch.nn.modules.utils import _pair as pair

    from effconv.ops import max_pool2d

    kernel = max_pool2d.describe(pair(pool.kernel_size), pair(pool.stride or pool.kernel_size), pair(pool.padding),
                                 pair(pool.dilation), pool.ceil_mode)
    if pool.return_indices:
        return backends.Choice(max_pool2d.OP, "torch", backends.requested_backend(),
                               "return_indices=True: effconv's kernels do not produce indices", kernel, True)
    return backends.choose(max_pool2d.TABLES[max_pool2d.OP], device or torch.device("cpu"), dtype or torch.float32,
                           lambda: kernel, record=False)


def _static(module: nn.Module, device: torch.device | None, dtype: torch.dtype | None) -> Explanation:
    from effconv.ops import conv_bn_act2d
    from effconv.ops._conv_family import FAMILIES

    rows, fused_convs = [], set()
    for name, m in module.named_modules():
        route = getattr(m, "effconv_op", None)
        if route is None or id(m) in fused_convs:
            continue
        if route == "max_pool2d":
            rows.append(_row(name or type(m).__name__, _pool_choice(m, device, dtype)))
            continue
        conv = m[0] if route == "conv_bn_act2d" else m
        if not isinstance(conv, nn.Conv2d):
            continue
        family = FAMILIES[conv.effconv_op]
        padding = conv.padding if not isinstance(conv.padding, str) else (0, 0)
        kernel = family.describe(conv.weight.shape, conv.stride, padding, conv.dilation, conv.groups)
        pool = conv._modules.get("max_pool")
        if pool is not None:
            fused_convs.add(id(pool))
            kernel += (f" + {_pool_choice(pool, device, dtype).kernel} (conv2d_max_pool2d: one kernel in CPU "
                       "inference on the implicit-GEMM path, else the two ops)")
        table = family.tables["forward"]
        if route == "conv_bn_act2d":
            fused_convs.add(id(conv))
            act = m.activation
            if m.training:
                table = conv_bn_act2d.TABLES[family.name]
                kernel += f" + batch statistics in the epilogue, then BatchNorm+{act} epilogue pass"
            else:
                kernel += f" + folded BatchNorm+{act} epilogue"
        choice = backends.choose(table, device or conv.weight.device, dtype or conv.weight.dtype, lambda: kernel,
                                 record=False)
        rows.append(_row(name or type(m).__name__, choice))
    from effconv import program

    captured = program.describe(module)
    if captured is not None:
        rows.append({"where": type(module).__name__, "op": "program", "backend": "cpu", "kernel": captured,
                     "reason": "eval-mode inference calls replay the last call's kernel calls while nothing they "
                               "read has changed (effconv.program)", "fallback": "no"})
    return Explanation(rows)


def explain(target: Any, *args, device=None, dtype=None, **kwargs) -> Explanation:
    """Say which effconv op and backend run, and why.

    - ``explain(module)``: without inputs, predicts for each effconv layer the
      op it routes to and the backend its parameters' device (or ``device``,
      ``dtype``) would use under the current backend request (pooling
      layers, which have no parameters: CPU float32 unless given).
    - ``explain(fn_or_module, *args, **kwargs)``: runs the call (under
      ``torch.no_grad()``) and reports every op it actually ran, in order,
      including any backend substitution or PyTorch fallback.
    """
    if isinstance(target, nn.Module) and not args and not kwargs:
        return _static(target, torch.device(device) if device is not None else None, dtype)
    if not callable(target):
        raise TypeError(f"explain() needs a module or a callable, got {type(target).__name__}")
    fn: Callable = target
    with backends.recording() as rec, torch.no_grad():
        fn(*args, **kwargs)
    return Explanation([_row(f"call {i}", ch) for i, ch in enumerate(rec)])
