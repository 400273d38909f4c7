"""Backend choice: which implementation runs an op.

Backends: ``triton`` (GPU; CPU tensors under ``TRITON_INTERPRET=1``),
``cuda`` (hand-written CUDA C++), ``cpu`` (C++ CPU kernels) and ``torch``
(PyTorch's own ops, as a reference or for configurations no kernel covers).
``auto`` picks per op and device: C++ on CPU tensors, Triton on CUDA tensors
unless the op documents another rule.

Choose with the ``EFFCONV_BACKEND`` environment variable or, per thread,
``with effconv.use_backend("triton"): ...``. When the requested backend cannot
run a call, the next one in the op's order runs instead; that substitution is
logged once per (op, reason) on the ``effconv`` logger and shows in
:func:`effconv.explain`. Nothing falls back silently.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import threading
from typing import Callable, Iterator, Sequence

import torch

BACKENDS = ("auto", "triton", "cuda", "cpu", "torch")
ENV_VAR = "EFFCONV_BACKEND"

log = logging.getLogger("effconv")

_local = threading.local()


def _validate(name: str) -> str:
    if name not in BACKENDS:
        raise ValueError(f"effconv backend must be one of {BACKENDS}, got {name!r}")
    return name


def _env_reader(name: str) -> Callable[[], object]:
    """A reader of environment variable `name` as os.environ holds it (raw
    value, None when unset). os.environ.get encodes the key and decodes the
    value on every call (~0.6 us); the ops read two variables per call, and
    batch-1 networks make ~50 calls per image, so read os.environ's own
    mapping when this Python has one. Still follows every os.environ change."""
    data, encode = getattr(os.environ, "_data", None), getattr(os.environ, "encodekey", None)
    if isinstance(data, dict) and callable(encode):
        key = encode(name)
        return lambda: data.get(key)
    return lambda: os.environ.get(name)


def _decode(raw) -> str:
    return raw.decode(errors="surrogateescape") if isinstance(raw, bytes) else raw


_backend_env = _env_reader(ENV_VAR)
_backend_parsed: dict = {}


def requested_backend() -> str:
    """The backend asked for here: innermost use_backend(), else EFFCONV_BACKEND, else 'auto'."""
    stack = getattr(_local, "stack", None)
    if stack:
        return stack[-1]
    raw = _backend_env()
    parsed = _backend_parsed.get(raw)
    if parsed is None:
        env = _decode(raw or "").strip().lower()
        if env and env not in BACKENDS:
            raise RuntimeError(f"{ENV_VAR} must be one of {BACKENDS}, got {env!r}")
        parsed = _backend_parsed[raw] = env or "auto"
    return parsed


def backend_state() -> tuple:
    """What a plan's routing reads of this thread's and process's state (the
    backend request and TRITON_INTERPRET), raw: equal states route alike."""
    stack = getattr(_local, "stack", None)
    return stack[-1] if stack else None, _backend_env(), _interpret_env()


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Run the ops called inside the block on backend ``name`` (this thread only)."""
    _validate(name)
    stack = getattr(_local, "stack", None)
    if stack is None:
        stack = _local.stack = []
    stack.append(name)
    try:
        yield
    finally:
        stack.pop()


_interpret_env = _env_reader("TRITON_INTERPRET")


def triton_interpreting() -> bool:
    raw = _interpret_env()
    return raw is not None and _decode(raw) == "1"


_triton_ok: tuple[bool, str] | None = None


def triton_status() -> tuple[bool, str]:
    """(importable?, why not). Imported lazily: `import triton` costs about a second."""
    global _triton_ok
    if _triton_ok is None:
        try:
            import triton  # noqa: F401

            _triton_ok = (True, "")
        except Exception as e:  # ImportError, or a broken install
            _triton_ok = (False, f"triton is not importable ({e})")
    return _triton_ok


@dataclasses.dataclass(frozen=True)
class Choice:
    op: str
    backend: str
    requested: str
    reason: str
    kernel: str = ""
    fell_back: bool = False


# A backend's capability check, f(device_type, dtype): None when it can run
# such a call, else the reason it cannot. Checks depend only on their
# arguments and on process state (extension built, TRITON_INTERPRET), so
# decisions are cached per (request, device type, dtype, interpreter).
Check = Callable[[str, torch.dtype], "str | None"]


@dataclasses.dataclass
class OpBackends:
    """Per-op table: capability checks and the 'auto' order per device type."""

    op: str
    checks: dict[str, Check]
    auto_order: dict[str, Sequence[str]]
    auto_reason: dict[str, str]
    cache: dict = dataclasses.field(default_factory=dict)


_recorders: list[list[Choice]] = []
_logged: set[tuple[str, str, str]] = set()


def _decide(table: OpBackends, requested: str, device_type: str, dtype: torch.dtype) -> tuple[str, str, bool]:
    order = list(table.auto_order.get(device_type, ("torch",)))
    if requested != "auto":
        order = [requested] + [b for b in order if b != requested]
    refusals = []
    for name in order:
        check = table.checks.get(name)
        why = f"{table.op} has no {name} backend" if check is None else check(device_type, dtype)
        if why is None:
            if requested == "auto":
                reason = table.auto_reason.get(device_type, f"first available backend for {device_type} tensors")
            elif name == requested:
                reason = f"requested backend '{requested}'"
            else:
                reason = f"requested backend '{requested}' cannot run this call"
            if refusals:
                reason += "; " + "; ".join(refusals)
            fell_back = requested not in ("auto", name) or (requested == "auto" and name == "torch")
            return name, reason, fell_back
        refusals.append(f"{name}: {why}")
    raise RuntimeError(f"effconv.{table.op}: no backend can run this call ({'; '.join(refusals)})")


def choose(table: OpBackends, device: torch.device, dtype: torch.dtype,
           describe: Callable[[], str] | None = None, record: bool = True) -> Choice | str:
    """The backend that runs a call on `device`/`dtype`.

    Returns the backend name; with record=False returns the full Choice
    without logging (explain's predictions). `describe` names the kernel
    variant for explain(); it is only called when someone is listening.
    """
    requested = requested_backend()
    key = (requested, device.type, dtype, triton_interpreting())
    hit = table.cache.get(key)
    if hit is None:
        hit = table.cache[key] = _decide(table, requested, device.type, dtype)
    backend, reason, fell_back = hit
    if not record:
        return Choice(table.op, backend, requested, reason, describe() if describe else "", fell_back)
    if _recorders or fell_back:
        report_choice(Choice(table.op, backend, requested, reason, describe() if describe else "", fell_back))
    return backend


def report_choice(choice: Choice) -> None:
    """Report a choice to explain() recorders (and log it once if it fell back)."""
    for rec in _recorders:
        rec.append(choice)
    if choice.fell_back:
        key = (choice.op, choice.backend, choice.reason)
        if key not in _logged:
            _logged.add(key)
            log.warning("effconv.%s runs on backend '%s': %s", choice.op, choice.backend, choice.reason)


def recording_active() -> bool:
    return bool(_recorders)


@contextlib.contextmanager
def recording() -> Iterator[list[Choice]]:
    """Collect every backend choice made while the block runs (used by explain())."""
    rec: list[Choice] = []
    _recorders.append(rec)
    try:
        yield rec
    finally:
        _recorders.remove(rec)
