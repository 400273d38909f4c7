"""Access to the compiled extension effconv._C."""
from __future__ import annotations

import torch  # noqa: F401  (loads libc10/libtorch before the extension)

try:
    from effconv import _C as _C_module
    _IMPORT_ERROR: Exception | None = None
except ImportError as e:  # not built, or built against another torch
    _C_module = None
    _IMPORT_ERROR = e


def available() -> bool:
    return _C_module is not None


def why_unavailable() -> str:
    return f"effconv._C failed to import ({_IMPORT_ERROR}); build it with `make build`"


def C():
    """The extension module, or a RuntimeError that says how to build it."""
    if _C_module is None:
        raise RuntimeError(why_unavailable())
    return _C_module


def with_cuda() -> bool:
    return _C_module is not None and bool(_C_module.with_cuda)
