"""effconv.convert: put an existing model on effconv's kernels.

    model = effconv.convert(torchvision.models.mobilenet_v2(weights=...))
    print(effconv.conversion_report(model))

- every ``nn.Conv2d`` becomes an :class:`effconv.Conv2d` on the same tensors,
  every ``torchvision.ops.DeformConv2d`` an :class:`effconv.DeformConv2d`
  and every ``nn.MaxPool2d`` an :class:`effconv.MaxPool2d`;
- inside ``nn.Sequential`` containers (torchvision's ``Conv2dNormActivation``
  included), Conv2d -> BatchNorm2d -> (ReLU | ReLU6 | SiLU | nothing) runs
  becomes one :class:`effconv.ConvBNAct2d` sharing the original parameters
  and buffers. A Sequential that is exactly such a run is replaced whole,
  so state_dict keys do not change; a run inside a longer Sequential keeps
  its positions (the fused block at the conv's index, ``nn.Identity`` at the
  others), which nests its keys one level deeper.
- inside ``nn.Sequential`` containers, Conv2d -> (ReLU | ReLU6 | SiLU) runs
  without BatchNorm, with or without a MaxPool2d after them (SqueezeNet's
  stem and classifier), become one :class:`effconv.Conv2d` with the
  activation in its epilogue and the pool as its ``max_pool`` (one kernel
  in CPU inference); the conv keeps its index, so keys do not change, and
  ``nn.Identity`` takes the others' places;
- torchvision's SqueezeNet ``Fire`` becomes effconv's (same parameters and
  keys): its ReLUs run in the convs' epilogues and the expand convs write
  their halves of one output instead of a ``torch.cat``, which a module swap
  cannot do from inside the original ``forward``;
- BatchNorm whose order relative to its conv is decided by a custom
  ``forward`` (ResNet's ``conv1``/``bn1`` attributes) stays as it is: the
  graph cannot be read from the module tree. The report says so.

Outputs are unchanged in train and eval mode (up to floating-point rounding).
"""
from __future__ import annotations

import copy
import dataclasses

from torch import nn

from effconv.nn.conv import Conv2d
from effconv.nn.conv_bn_act import ConvBNAct2d, activation_name
from effconv.nn.deform import DeformConv2d
from effconv.nn.pool import MaxPool2d


@dataclasses.dataclass
class ConversionReport:
    """What convert() changed (``converted``) and what it left alone and why (``kept``)."""

    converted: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # (where, what)
    kept: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # (where, why)

    def __str__(self) -> str:
        lines = [f"converted {len(self.converted)}:"] + [f"  {w}: {what}" for w, what in self.converted]
        lines += [f"left alone {len(self.kept)}:"] + [f"  {w}: {why}" for w, why in self.kept]
        return "\n".join(lines)

    __repr__ = __str__


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _is_torchvision_deform(m: nn.Module) -> bool:
    # By name: torchvision is not imported unless the model already uses it.
    return type(m).__name__ == "DeformConv2d" and type(m).__module__.startswith("torchvision.ops")


def _is_torchvision_fire(m: nn.Module) -> bool:
    """torchvision.models.squeezenet.Fire with its stock ReLUs and convs."""
    if type(m).__name__ != "Fire" or type(m).__module__ != "torchvision.models.squeezenet":
        return False

    def plain(conv) -> bool:
        return type(conv) is nn.Conv2d or (type(conv) is Conv2d and conv.activation is None)

    return (all(type(getattr(m, a, None)) is nn.ReLU for a in ("squeeze_activation", "expand1x1_activation",
                                                                "expand3x3_activation"))
            and all(plain(getattr(m, c, None)) for c in ("squeeze", "expand1x1", "expand3x3")))


def _is_plain_conv(m: nn.Module) -> bool:
    return type(m) is nn.Conv2d or type(m) is Conv2d


def _run_at(seq: nn.Sequential, i: int):
    """(conv, bn, act module or None, length) of a fusable run starting at seq[i], or None."""
    mods = list(seq)
    if not (_is_plain_conv(mods[i]) and i + 1 < len(mods) and type(mods[i + 1]) is nn.BatchNorm2d):
        return None
    conv, bn = mods[i], mods[i + 1]
    if bn.num_features != conv.out_channels:
        return None
    if i + 2 < len(mods) and activation_name(mods[i + 2]) not in (None, "none"):
        return conv, bn, mods[i + 2], 3
    return conv, bn, None, 2


def _epilogue_run_at(seq: nn.Sequential, i: int):
    """(conv, activation name, pool or None, length) of a Conv2d -> (activation) -> (MaxPool2d) run at
    seq[i] with an activation or a pool to fuse, or None."""
    mods = list(seq)
    conv = mods[i]
    if not (type(conv) is nn.Conv2d
            or (type(conv) is Conv2d and conv.activation is None and conv._modules.get("max_pool") is None)):
        return None
    j = i + 1
    act = activation_name(mods[j]) if j < len(mods) and not isinstance(mods[j], nn.Identity) else None
    if act not in (None, "none"):
        j += 1
    else:
        act = "none"
    pool = None
    if j < len(mods) and isinstance(mods[j], nn.MaxPool2d) and not mods[j].return_indices:
        try:
            pool = MaxPool2d.from_torch(mods[j])
            j += 1
        except ValueError:  # arguments PyTorch itself rejects at call time: left to the plain conversion
            pass
    if act == "none" and pool is None:
        return None
    return conv, act, pool, j - i


def _describe(conv, bn, act) -> str:
    name = activation_name(act) if act is not None else "none"
    return (f"Conv2d({conv.in_channels}, {conv.out_channels}, {tuple(conv.kernel_size)}, groups={conv.groups}) + "
            f"BatchNorm2d + {name} -> ConvBNAct2d")


def _fuse_whole(m: nn.Module):
    """A Sequential that is exactly one conv-BN(-activation) run, as one fused block (else None)."""
    if isinstance(m, nn.Sequential) and not isinstance(m, ConvBNAct2d) and len(m) in (2, 3):
        run = _run_at(m, 0)
        if run is not None and run[3] == len(m):
            return ConvBNAct2d.from_modules(*run[:3]), _describe(*run[:3])
    return None


def _convert_child(child: nn.Module, where: str, parent: nn.Module | None, fuse: bool,
                   report: ConversionReport) -> nn.Module:
    """The module to put in child's place (child itself, converted in place, or a new one)."""
    if isinstance(child, ConvBNAct2d):
        return child
    fused = _fuse_whole(child) if fuse else None
    if fused is not None:
        report.converted.append((where, fused[1]))
        return fused[0]
    if fuse and _is_torchvision_fire(child):
        from effconv.models.squeezenet import Fire

        report.converted.append((where, "torchvision Fire -> effconv Fire (ReLUs fused, expand without torch.cat)"))
        return Fire.from_torchvision(child)
    if type(child) is nn.Conv2d:
        report.converted.append((where, "nn.Conv2d -> effconv.Conv2d"))
        return Conv2d.from_torch(child)
    if type(child) is nn.MaxPool2d:
        try:
            pool = MaxPool2d.from_torch(child)
        except ValueError as e:  # arguments PyTorch itself rejects at call time
            report.kept.append((where, f"nn.MaxPool2d with invalid arguments ({e})"))
            return child
        report.converted.append((where, "nn.MaxPool2d -> effconv.MaxPool2d"))
        return pool
    if _is_torchvision_deform(child):
        report.converted.append((where, "torchvision.ops.DeformConv2d -> effconv.DeformConv2d"))
        return DeformConv2d.from_torchvision(child)
    if isinstance(child, nn.Conv2d) and type(child) is not Conv2d:
        report.kept.append((where, f"{type(child).__name__} subclasses nn.Conv2d with its own forward"))
    elif type(child) is nn.BatchNorm2d:
        if isinstance(parent, nn.Sequential):
            why = "BatchNorm2d not preceded by a Conv2d with matching channels: not fused"
        elif parent is None:
            why = "a BatchNorm2d on its own: nothing to fuse it with"
        else:
            why = f"BatchNorm2d inside {type(parent).__name__}, whose forward decides what it follows: not fused"
        report.kept.append((where, why))
    elif fuse and isinstance(child, nn.Sequential):
        _convert_sequence(child, where, report)
    else:
        for name, grandchild in list(child.named_children()):
            new = _convert_child(grandchild, _join(where, name), child, fuse, report)
            if new is not grandchild:
                setattr(child, name, new)
    return child


def _convert_sequence(seq: nn.Sequential, prefix: str, report: ConversionReport) -> None:
    i = 0
    while i < len(seq):
        fused = _epilogue_run_at(seq, i)
        if fused is not None:
            conv, act, pool, length = fused
            seq[i] = Conv2d.from_torch(conv, activation=act, max_pool=pool)
            for j in range(i + 1, i + length):
                seq[j] = nn.Identity()
            what = "Conv2d" + (f" + {act}" if act != "none" else "") + (" + MaxPool2d" if pool is not None else "")
            into = f"effconv.Conv2d(activation={act!r}" + (", max_pool=...)" if pool is not None else ")")
            report.converted.append((f"{_join(prefix, str(i))}..{i + length - 1}", f"{what} -> {into} (keys unchanged"
                                     + ("; one kernel in CPU inference)" if pool is not None else ")")))
            i += length
            continue
        run = _run_at(seq, i)
        if run is None:
            seq[i] = _convert_child(seq[i], _join(prefix, str(i)), seq, True, report)
            i += 1
            continue
        conv, bn, act, length = run
        seq[i] = ConvBNAct2d.from_modules(conv, bn, act)
        for j in range(i + 1, i + length):
            seq[j] = nn.Identity()
        report.converted.append((f"{_join(prefix, str(i))}..{i + length - 1}",
                                 _describe(conv, bn, act) + " (keys now nested under the conv's index)"))
        i += length


def convert(model: nn.Module, inplace: bool = False, fuse: bool = True) -> nn.Module:
    """Return ``model`` on effconv layers (a deep copy unless ``inplace``;
    a root module that is itself replaced, such as a bare nn.Conv2d, is
    returned new either way).

    ``fuse=False`` only swaps Conv2d modules. What was converted and what was
    left alone (and why) is in :func:`conversion_report`.
    """
    if not inplace:
        model = copy.deepcopy(model)
    report = ConversionReport()
    model = _convert_child(model, "", None, fuse, report)
    object.__setattr__(model, "_effconv_report", report)
    return model


def conversion_report(model: nn.Module) -> ConversionReport:
    """The report of the convert() call that produced ``model``."""
    report = getattr(model, "_effconv_report", None)
    if report is None:
        raise ValueError("this model did not come from effconv.convert()")
    return report
