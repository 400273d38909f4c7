"""Captured inference programs: an effconv model's forward replayed as a flat
list of kernel calls.

At batch 1 most of a network's layers take a few microseconds of kernel
time, and the Python around each call (module calls, memo checks) costs
more than in a hot loop: every kernel evicts the interpreter's working set
from L1/L2. MobileNetV2 (Zen 5) spent ~1.5 of its 4.3-4.6 ms outside the
kernels, ~0.5 ms of it needed (the classifier, the residual adds).

A model whose ``forward`` is :func:`forward` records, on an inference call
(autograd off, nothing observing, eval mode, CPU input), the kernel call
each of its layers made: the layers' fast paths (:func:`recorder`) note
their plan, weights and folded BatchNorm under their memo. The model's
stages are then flattened into steps: a recorded layer becomes one closure
over its plan; a layer with no record (an unplanned path, a foreign module)
becomes its bound ``forward``, so every step computes what the module
would. Later calls with the same input metadata and backend request replay
the steps while a snapshot of the module tree holds: every module's
``__dict__``, parameters, buffers, children and forward hooks unchanged
(their dicts' PEP 509 version tags, so CPython 3.11) and every parameter's
and buffer's version and storage, checked in one C++ call
(csrc/snapshot.cpp). Anything else takes the modules' own path: training,
autograd, torch.compile, explain() recording, hooks, shared modules,
inference-tensor parameters, Python >= 3.12.

``EFFCONV_PROGRAMS=0`` in the environment (read at import) or
``set_enabled(False)`` turns capture and replay off: every call takes the
modules' path. ``explain(model)`` reports a model's capture.
"""
from __future__ import annotations

import os
import threading
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules import module as _module

from effconv import _ext
from effconv import functional
from effconv.ops import _common

Step = Callable[[torch.Tensor], torch.Tensor]

_local = threading.local()
_enabled = os.environ.get("EFFCONV_PROGRAMS", "1") != "0"


def set_enabled(enabled: bool) -> bool:
    """Turns capture and replay on or off (all threads); returns the previous setting."""
    global _enabled
    old, _enabled = _enabled, bool(enabled)
    return old


def recorder() -> Optional[dict]:
    """The records of the capture running on this thread (memo -> step), or None."""
    return getattr(_local, "rec", None)


def conv_step(run, plan, weight, bias, stride, padding, dilation, groups, scale, shift) -> Step:
    """A recorded conv call: ``run(plan, x, ...)`` (an op family's run_plan) on a new input."""
    return lambda x: run(plan, x, weight, bias, stride, padding, dilation, groups, scale, shift)


def residual(steps: list) -> Step:
    """``x + steps(x)`` (an inverted residual block)."""
    def run(x):
        h = x
        for step in steps:
            h = step(h)
        return x + h
    return run


def to_channels_last(x: torch.Tensor) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last)


def global_avg_pool(x: torch.Tensor) -> torch.Tensor:
    """adaptive_avg_pool2d to 1x1, flattened to (N, C)."""
    return F.adaptive_avg_pool2d(x, (1, 1)).flatten(1)


class _Shared(Exception):
    """A module reached twice: its memo describes only its last call."""


class Builder:
    """Flattens modules into steps from a capture's records."""

    def __init__(self, rec: dict):
        self.rec, self._seen, self.recorded, self.forwards = rec, set(), 0, 0

    def steps(self, module) -> list:
        if not isinstance(module, nn.Module):
            return [module]
        if id(module) in self._seen:
            raise _Shared
        self._seen.add(id(module))
        kind = type(module)
        build = _builder_of(kind)
        if build is not None:
            return build(module, self)
        if kind is nn.Sequential:
            return [s for child in module._modules.values() for s in self.steps(child)]
        if kind is nn.Identity or (kind is nn.Dropout and not module.training):
            return []
        return self.forward(module)

    def forward(self, module: nn.Module) -> list:
        """``module`` as one step: its own forward (hooks are absent, see _capture)."""
        self.forwards += 1
        return [module.forward]

    def record(self, memo) -> Optional[Step]:
        """The step recorded under ``memo`` in the capture, or None."""
        step = self.rec.get(memo) if memo is not None else None
        self.recorded += step is not None
        return step

    def step(self, memo, module) -> list:
        """``memo``'s recorded step, else ``module.forward``."""
        step = self.record(memo)
        return [step] if step is not None else self.forward(module)


def _builder_of(kind: type):
    """``kind._program_steps`` when ``kind`` computes what the class that
    defines it does (a subclass overriding the forward gets none)."""
    owner = next((k for k in kind.__mro__ if "_program_steps" in k.__dict__), None)
    if owner is None or any(getattr(kind, name, None) is not getattr(owner, name, None)
                            for name in ("forward", "_conv_forward")):
        return None
    return owner.__dict__["_program_steps"]


class Program:
    """A capture: its steps (None: this model state cannot be captured) and
    what they assume (``key``: the input's metadata and the backend request,
    as an op's plan key has them; the snapshot)."""

    __slots__ = ("steps", "key", "dicts", "tags", "tensors", "stamps", "counts")

    def holds(self) -> bool:
        return _ext.C().snapshot_holds(self.dicts, self.tags, self.tensors, self.stamps)

    def describe(self) -> str:
        if self.steps is None:
            return "not capturable in its present state (hooks, a module used twice or inference-tensor parameters)"
        recorded, forwards = self.counts
        shape, _, dtype, _ = self.key[1]
        return f"{recorded} recorded kernel calls and {forwards} module forwards for input {list(shape)} {dtype}"


def describe(model: nn.Module) -> Optional[str]:
    """What ``model``'s inference calls replay, or None when its forward is not :func:`forward`."""
    if getattr(type(model), "_stages", None) is None:
        return None
    if not _enabled:
        return "off (EFFCONV_PROGRAMS=0 or set_enabled(False)): every call runs the modules"
    memo = model.__dict__.get("_program")
    if memo is not None and memo.skip:
        return (f"backed off: {memo.idle} captures in a row went stale before any replay; the next try is "
                f"{memo.skip + 1} calls away")
    if memo is None or memo.program is None:
        return "none captured yet: the next eval-mode inference call on CPU records one"
    return memo.program.describe()


class ProgramMemo:
    """A model's last capture, how often it was replayed, and the back-off
    for models whose captures go stale before any replay (a capture costs
    ~0.8 ms for MobileNetV2: a model changed between every inference call
    would pay it every call). Pickled and copied empty, like PlanMemo."""

    __slots__ = ("program", "replays", "idle", "skip")

    def __init__(self):
        self.program, self.replays, self.idle, self.skip = None, 0, 0, 0

    def should_capture(self) -> bool:
        """Whether to capture now, replacing the program (which no longer holds):
        after two captures in a row were never replayed, the calls in between
        captures double, up to _MAX_SKIP, until one is replayed."""
        if self.skip:
            self.skip -= 1
            return False
        if self.program is not None:
            self.idle = self.idle + 1 if self.replays == 0 else 0
            self.program = None
            if self.idle >= 2:
                self.skip = min(1 << self.idle, _MAX_SKIP)
                return False
        return True

    def __reduce__(self):
        return type(self), ()


_GLOBAL_HOOKS = (_module._global_forward_hooks, _module._global_forward_pre_hooks)
_MAX_SKIP = 256


def _run_stages(model, x):
    for stage in model._stages():
        x = stage(x)
    return x


def forward(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``model``'s forward: its ``_stages()`` applied in turn, replayed from
    a capture when one holds (see the module docstring)."""
    if not _enabled or not functional.quiet() or getattr(_local, "rec", None) is not None:
        return _run_stages(model, x)
    memo = model.__dict__.get("_program")
    prog = memo.program if memo is not None else None
    if prog is not None and type(x) is torch.Tensor and prog.key == _common.call_key((x,), ()) and prog.holds():
        memo.replays += 1
        if prog.steps is None:
            return _run_stages(model, x)
        for step in prog.steps:
            x = step(x)
        return x
    if (model.training or type(x) is not torch.Tensor or x.device.type != "cpu" or not _ext.available()
            or not _ext.C().dict_tags_supported()):
        return _run_stages(model, x)
    if memo is None:
        memo = model._program = ProgramMemo()
    if not memo.should_capture():
        return _run_stages(model, x)
    _local.rec = rec = {}
    try:
        out = _run_stages(model, x)
    finally:
        _local.rec = None
    memo.program, memo.replays = _capture(model, x, rec), 0
    return out


def _capture(model: nn.Module, x: torch.Tensor, rec: dict) -> Program:
    dicts, tensors, capturable = list(_GLOBAL_HOOKS), [], not any(_GLOBAL_HOOKS)
    for m in model.modules():
        hooks = (m._forward_hooks, m._forward_pre_hooks)
        capturable = capturable and not any(hooks)
        dicts += [m.__dict__, m._parameters, m._buffers, m._modules, *hooks]
        tensors += [t for d in (m._parameters, m._buffers) for t in d.values() if t is not None]
    prog = Program()
    prog.key = _common.call_key((x,), ())
    prog.steps, prog.counts = None, (0, 0)
    if capturable and not any(t.is_inference() for t in tensors):
        try:
            builder = Builder(rec)
            prog.steps = [s for stage in model._stages() for s in builder.steps(stage)]
            prog.counts = builder.recorded, builder.forwards
        except _Shared:
            pass
    if prog.steps is None:
        # What makes a model uncapturable lives in the dicts alone.
        tensors = []
    C = _ext.C()
    prog.dicts, prog.tags, prog.tensors, prog.stamps = dicts, C.dict_tags(dicts), tensors, C.tensor_stamps(tensors)
    return prog
