"""One registration for every convolution op family.

A family is three ops sharing one argument convention:

    {name}(input, weight, bias, stride, padding, dilation[, groups], scale, shift, activation)
    {name}_grad_input(grad_output, weight, input_size, stride, padding, dilation[, groups])
    {name}_grad_weight(grad_output, input, weight_size, stride, padding, dilation[, groups]) -> (grad_weight, grad_bias)

and, for families with a one-pass backward kernel (`tables` has "backward"),

    {name}_backward(grad_output, input, weight, stride, padding, dilation[, groups])
        -> (grad_input, grad_weight, grad_bias)

which autograd calls when both gradients are needed: its kernel reads
grad_output once for both. Backends without such a kernel run it as the
two ops above, each routed as on its own.

`grouped` families (conv2d) take `groups`; the others (depthwise_conv2d)
imply groups = input channels. This module defines the schemas, checks
(shared by fake and real implementations, so torch.compile raises at trace
time what eager raises at run time), fake implementations with the real
layout rule, the backend routing and the autograd formulas (written with
the family's own ops, so double backward works). The op modules supply only
their backend table and kernels.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import torch
import torch.nn.functional as F

from effconv import backends
from effconv.ops import _common as c


def out_size(in_size, k, stride, pad, dil):
    return (in_size + 2 * pad - dil * (k - 1) - 1) // stride + 1


def check_geometry(op, input_size, weight_size, stride, padding, dilation, groups):
    """Returns (P, Q). Sizes are (N, C, H, W) and (K, C/groups, R, S)."""
    c.check_pair(op, "stride", stride, 1)
    c.check_pair(op, "padding", padding, 0)
    c.check_pair(op, "dilation", dilation, 1)
    if groups <= 0:
        raise RuntimeError(f"effconv.{op}: expected groups > 0, got {groups}")
    n, ch, h, w = input_size
    k, cg, r, s = weight_size
    if k % groups != 0:
        raise RuntimeError(
            f"effconv.{op}: expected out_channels divisible by groups={groups}, got weight of size {list(weight_size)}"
        )
    if cg * groups != ch:
        raise RuntimeError(
            f"effconv.{op}: given groups={groups} and weight of size {list(weight_size)}, expected input "
            f"{list(input_size)} to have {cg * groups} channels, but got {ch} channels instead"
        )
    p = out_size(h, r, stride[0], padding[0], dilation[0])
    q = out_size(w, s, stride[1], padding[1], dilation[1])
    if p <= 0 or q <= 0:
        raise RuntimeError(
            f"effconv.{op}: calculated padded input size per channel: ({h + 2 * padding[0]} x {w + 2 * padding[1]}). "
            f"Kernel size (with dilation {list(dilation)}): ({dilation[0] * (r - 1) + 1} x {dilation[1] * (s - 1) + 1}). "
            "Expected a kernel no larger than the padded input"
        )
    return p, q


def reference_epilogue(z, bias, scale, shift, activation):
    """The epilogue in PyTorch ops (the 'torch' backend)."""
    view = (1, -1) + (1,) * (z.dim() - 2)
    if bias is not None:
        z = z + bias.to(z.dtype).view(view)
    if scale is not None:
        z = z * scale.to(z.dtype).view(view)
    if shift is not None:
        z = z + shift.to(z.dtype).view(view)
    if activation == "relu":
        z = torch.relu(z)
    elif activation == "relu6":
        z = F.relu6(z)
    elif activation == "silu":
        z = F.silu(z)
    return z


# Kernel signatures (groups always explicit):
#   forward(input, weight, bias, scale, shift, stride, padding, dilation, groups, act_code, out, stats=None)
#     stats: float64 [2, K] receiving the per-channel sum and sum of squares
#     of out (training-mode BatchNorm, effconv::conv_bn_act2d)
#   grad_input(grad_output, weight, stride, padding, dilation, groups, out)
#   grad_weight(grad_output, input, stride, padding, dilation, groups, grad_weight, grad_bias)
#   backward(grad_output, input, weight, stride, padding, dilation, groups, grad_input, grad_weight, grad_bias)
Runner = Callable[..., object]

FAMILIES: dict = {}  # op name -> ConvFamily (explain() and modules look families up here)


def _torch_forward(input, weight, bias, scale, shift, stride, padding, dilation, groups, act, out, stats=None):
    z = F.conv2d(input, weight, None, stride, padding, dilation, groups)
    activation = {v: k for k, v in c.ACTIVATIONS.items()}[act]
    out.copy_(reference_epilogue(z, bias, scale, shift, activation))
    if stats is not None:
        y = out.double()
        stats.copy_(torch.stack([y.sum((0, 2, 3)), (y * y).sum((0, 2, 3))]))


def _torch_grad_input(grad_output, weight, stride, padding, dilation, groups, out):
    out.copy_(torch.nn.grad.conv2d_input(list(out.shape), weight, grad_output, stride, padding, dilation, groups))


def _torch_grad_weight(grad_output, input, stride, padding, dilation, groups, grad_w, grad_b):
    grad_w.copy_(torch.nn.grad.conv2d_weight(input, list(grad_w.shape), grad_output, stride, padding, dilation, groups))
    grad_b.copy_(grad_output.sum((0, 2, 3)))


@dataclasses.dataclass
class ConvFamily:
    name: str
    grouped: bool
    tables: dict  # "forward" | "grad_input" | "grad_weight" [| "backward"] -> backends.OpBackends
    runners: dict  # same keys -> {backend name: Runner}; 'torch' is provided here (not for "backward")
    describe: Callable  # (weight_size, stride, padding, dilation, groups) -> kernel name for explain()
    check_weight: Callable | None = None  # extra family-specific weight check(op, input_size, weight_size)
    # Per-call 'auto' rule on CUDA tensors, (kind, tensor, weight_size, stride, padding, dilation, groups)
    # -> (backend, reason), for families with more than one GPU backend.
    gpu_rule: Callable | None = None

    def __post_init__(self):
        for kind, fn in (("forward", _torch_forward), ("grad_input", _torch_grad_input),
                         ("grad_weight", _torch_grad_weight)):
            self.runners[kind].setdefault("torch", fn)
        self.ops = {"forward": self.name, "grad_input": f"{self.name}_grad_input",
                    "grad_weight": f"{self.name}_grad_weight"}
        if "backward" in self.tables:
            self.ops["backward"] = f"{self.name}_backward"
        self._plans = {}  # call_key -> (output size, layout, pooled?, runner, activation code)
        self._register()
        FAMILIES[self.name] = self

    # ------------------------------------------------------------------ checks
    def _geometry(self, op, input_size, weight_size, stride, padding, dilation, groups):
        if self.check_weight is not None:
            self.check_weight(op, input_size, weight_size)
        return check_geometry(op, input_size, weight_size, stride, padding, dilation, groups)

    def check_forward(self, input, weight, bias, stride, padding, dilation, groups, scale, shift, activation):
        op = self.name
        for name, t in (("input", input), ("weight", weight)):
            if t.dim() != 4:
                raise RuntimeError(f"effconv.{op}: expected 4-D {name}, got {t.dim()}-D {name} of size {c.fmt_size(t)}")
        c.check_floating(op, "input", input)
        c.check_same(op, "input", input, "weight", weight)
        c.check_channel_vector(op, "bias", bias, weight.shape[0], input)
        c.check_channel_vector(op, "scale", scale, weight.shape[0], input)
        c.check_channel_vector(op, "shift", shift, weight.shape[0], input)
        c.activation_code(op, activation)
        return self._geometry(op, input.shape, weight.shape, stride, padding, dilation, groups)

    def _check_grad(self, kind, grad_output, other, other_name, input_size, weight_size, stride, padding, dilation,
                    groups, op=None):
        op = op or self.ops[kind]
        sizes_name = "input_size" if kind == "grad_input" else "weight_size"
        sizes = input_size if kind == "grad_input" else weight_size
        if grad_output.dim() != 4 or other.dim() != 4 or len(sizes) != 4:
            raise RuntimeError(
                f"effconv.{op}: expected 4-D grad_output, {other_name} and {sizes_name}, got sizes "
                f"{c.fmt_size(grad_output)}, {c.fmt_size(other)}, {list(sizes)}"
            )
        c.check_floating(op, "grad_output", grad_output)
        c.check_same(op, "grad_output", grad_output, other_name, other)
        p, q = self._geometry(op, input_size, weight_size, stride, padding, dilation, groups)
        expected = [input_size[0], weight_size[0], p, q]
        if list(grad_output.shape) != expected:
            raise RuntimeError(f"effconv.{op}: expected grad_output of size {expected}, got {c.fmt_size(grad_output)}")

    # ----------------------------------------------------------- computations
    def _route(self, kind, t, weight_size, stride, padding, dilation, groups, table=None) -> str:
        """The backend for a call; `table` overrides the kind's table (ops built on
        this family's kernels, which report under their own name)."""
        table = table or self.tables[kind]
        if self.gpu_rule is not None and kind != "backward" and t.device.type == "cuda" and \
                backends.requested_backend() == "auto":
            name, reason = self.gpu_rule(kind, t, weight_size, stride, padding, dilation, groups)
            if table.checks[name]("cuda", t.dtype) is None:
                if backends.recording_active():
                    backends.report_choice(backends.Choice(table.op, name, "auto", "auto: " + reason,
                                                    self.describe(weight_size, stride, padding, dilation, groups)))
                return name
        return backends.choose(table, t.device, t.dtype,
                               lambda: self.describe(weight_size, stride, padding, dilation, groups))

    def plan(self, input, weight, bias, stride, padding, dilation, groups, scale, shift, activation):
        """(output size, layout, pooled?, runner, activation code) of a forward
        call, after its checks and routing. The checks, the output layout and
        the backend are functions of the call's metadata alone: a call whose
        metadata was seen before reuses them (a batch-1 network makes ~50
        such calls per image, and the checks cost more than a small layer's
        kernel). explain() recording always takes the full path, so every
        choice is reported."""
        key = None if backends.recording_active() else c.call_key(
            (input, weight, bias, scale, shift), (stride, padding, dilation, groups, activation))
        plan = self._plans.get(key) if key is not None else None
        if plan is None:
            p, q = self.check_forward(input, weight, bias, stride, padding, dilation, groups, scale, shift,
                                      activation)
            backend = self._route("forward", input, weight.shape, stride, padding, dilation, groups)
            size = (input.shape[0], weight.shape[0], p, q)
            memory_format = c.conv_memory_format(input, weight)
            plan = (size, memory_format, c.pooled(size, input, memory_format), self.runners["forward"][backend],
                    c.ACTIVATIONS[activation])
            if key is not None:
                c.remember(self._plans, key, plan)
        return plan

    @staticmethod
    def run_plan(plan, input, weight, bias, stride, padding, dilation, groups, scale, shift):
        """A forward call on its plan (see plan()): the output, written by the routed kernel."""
        size, memory_format, pool, run, act = plan
        out = c.new_output(size, input, memory_format, pool=pool)
        run(input, weight, bias, scale, shift, stride, padding, dilation, groups, act, out)
        return out

    def forward(self, input, weight, bias, stride, padding, dilation, groups, scale, shift, activation):
        plan = self.plan(input, weight, bias, stride, padding, dilation, groups, scale, shift, activation)
        return self.run_plan(plan, input, weight, bias, stride, padding, dilation, groups, scale, shift)

    def forward_fake(self, input, weight, bias, stride, padding, dilation, groups, scale, shift, activation):
        p, q = self.check_forward(input, weight, bias, stride, padding, dilation, groups, scale, shift, activation)
        return c.empty((input.shape[0], weight.shape[0], p, q), input, c.conv_memory_format(input, weight))

    def grad_input(self, grad_output, weight, input_size, stride, padding, dilation, groups):
        self._check_grad("grad_input", grad_output, weight, "weight", input_size, weight.shape, stride, padding,
                         dilation, groups)
        out = c.new_output(input_size, grad_output, c.conv_memory_format(grad_output))
        backend = self._route("grad_input", grad_output, weight.shape, stride, padding, dilation, groups)
        self.runners["grad_input"][backend](grad_output, weight, stride, padding, dilation, groups, out)
        return out

    def grad_input_fake(self, grad_output, weight, input_size, stride, padding, dilation, groups):
        self._check_grad("grad_input", grad_output, weight, "weight", input_size, weight.shape, stride, padding,
                         dilation, groups)
        return c.empty(input_size, grad_output, c.conv_memory_format(grad_output))

    def grad_weight(self, grad_output, input, weight_size, stride, padding, dilation, groups):
        self._check_grad("grad_weight", grad_output, input, "input", input.shape, weight_size, stride, padding,
                         dilation, groups)
        grad_w = c.new_output(weight_size, grad_output)
        grad_b = c.new_output((weight_size[0],), grad_output)
        backend = self._route("grad_weight", grad_output, weight_size, stride, padding, dilation, groups)
        self.runners["grad_weight"][backend](grad_output, input, stride, padding, dilation, groups, grad_w, grad_b)
        return grad_w, grad_b

    def grad_weight_fake(self, grad_output, input, weight_size, stride, padding, dilation, groups):
        self._check_grad("grad_weight", grad_output, input, "input", input.shape, weight_size, stride, padding,
                         dilation, groups)
        return c.empty(weight_size, grad_output), c.empty((weight_size[0],), grad_output)

    def _check_backward(self, grad_output, input, weight, stride, padding, dilation, groups):
        op = self.ops["backward"]
        self._check_grad("grad_input", grad_output, weight, "weight", input.shape, weight.shape, stride, padding,
                         dilation, groups, op=op)
        self._check_grad("grad_weight", grad_output, input, "input", input.shape, weight.shape, stride, padding,
                         dilation, groups, op=op)

    def backward(self, grad_output, input, weight, stride, padding, dilation, groups):
        self._check_backward(grad_output, input, weight, stride, padding, dilation, groups)
        backend = self._route("backward", grad_output, weight.shape, stride, padding, dilation, groups)
        run = self.runners["backward"].get(backend)
        if run is None:
            # No one-pass kernel on this backend: the two ops, each routed as on its own.
            grad_w, grad_b = self.grad_weight(grad_output, input, weight.shape, stride, padding, dilation, groups)
            return self.grad_input(grad_output, weight, input.shape, stride, padding, dilation, groups), grad_w, grad_b
        grad_in = c.new_output(input.shape, grad_output, c.conv_memory_format(grad_output))
        grad_w = c.new_output(weight.shape, grad_output)
        grad_b = c.new_output((weight.shape[0],), grad_output)
        run(grad_output, input, weight, stride, padding, dilation, groups, grad_in, grad_w, grad_b)
        return grad_in, grad_w, grad_b

    def backward_fake(self, grad_output, input, weight, stride, padding, dilation, groups):
        self._check_backward(grad_output, input, weight, stride, padding, dilation, groups)
        return (c.empty(input.shape, grad_output, c.conv_memory_format(grad_output)), c.empty(weight.shape, grad_output),
                c.empty((weight.shape[0],), grad_output))

    # ---------------------------------------------------------- op handles
    def call_forward(self, input, weight, bias, stride, padding, dilation, groups, scale=None, shift=None,
                     activation="none"):
        g = (groups,) if self.grouped else ()
        return c.call(self.name, self.impls["forward"], (input, weight, bias, scale, shift), input, weight, bias,
                      stride, padding, dilation, *g, scale, shift, activation, function=self.function)

    def call_grad_input(self, grad_output, weight, input_size, stride, padding, dilation, groups):
        g = (groups,) if self.grouped else ()
        return c.call(self.ops["grad_input"], self.impls["grad_input"], (grad_output, weight), grad_output, weight,
                      input_size, stride, padding, dilation, *g)

    def call_grad_weight(self, grad_output, input, weight_size, stride, padding, dilation, groups):
        g = (groups,) if self.grouped else ()
        return c.call(self.ops["grad_weight"], self.impls["grad_weight"], (grad_output, input), grad_output, input,
                      weight_size, stride, padding, dilation, *g)

    def call_backward(self, grad_output, input, weight, stride, padding, dilation, groups):
        g = (groups,) if self.grouped else ()
        return c.call(self.ops["backward"], self.impls["backward"], (grad_output, input, weight), grad_output, input,
                      weight, stride, padding, dilation, *g)

    def grads(self, grad_output, input, weight, stride, padding, dilation, groups, need_input, need_weight,
              need_bias):
        """(grad_input, grad_weight, grad_bias), None where not needed: the
        one-pass backward op when the family has one and both kinds are
        needed, else the grad_input / grad_weight ops."""
        need_w = need_weight or need_bias
        grad_input = grad_weight = grad_bias = None
        if need_input and need_w and "backward" in self.ops:
            grad_input, grad_weight, grad_bias = self.call_backward(grad_output, input, weight, stride, padding,
                                                                    dilation, groups)
        else:
            if need_input:
                grad_input = self.call_grad_input(grad_output, weight, list(input.shape), stride, padding, dilation,
                                                  groups)
            if need_w:
                grad_weight, grad_bias = self.call_grad_weight(grad_output, input, list(weight.shape), stride,
                                                               padding, dilation, groups)
        return grad_input, grad_weight if need_weight else None, grad_bias if need_bias else None

    # --------------------------------------------------------------- autograd
    def _setup_forward(self, ctx, inputs, output):
        input, weight, bias, stride, padding, dilation, groups, scale, shift, activation = self._normalize(inputs)
        ctx.conf = (stride, padding, dilation, groups)
        ctx.activation = activation
        # Backward runs on the backend requested when forward ran: autograd may
        # run it on another thread (CUDA), where use_backend() is not in effect.
        ctx.backend = backends.requested_backend()
        # relu/relu6 without a scale differentiate from the output alone;
        # anything else recomputes the pre-activation in backward instead of
        # keeping another activation-sized tensor alive.
        saved_out = output if activation in ("relu", "relu6") and scale is None else None
        ctx.save_for_backward(input, weight, bias, scale, shift, saved_out)

    def _backward_forward(self, ctx, grad):
        with backends.use_backend(ctx.backend):
            return self._backward_forward_impl(ctx, grad)

    def _backward_forward_impl(self, ctx, grad):
        input, weight, bias, scale, shift, output = ctx.saved_tensors
        stride, padding, dilation, groups = ctx.conf
        act = ctx.activation
        # Trailing arguments left at their defaults may be missing from needs_input_grad.
        need = tuple(ctx.needs_input_grad) + (False,) * 10
        i_scale, i_shift = (7, 8) if self.grouped else (6, 7)
        grad_scale = grad_shift = None
        if scale is None and act in ("none", "relu", "relu6"):
            if act == "none":
                g_u = grad
            else:
                g_u = grad * ((output > 0) if act == "relu" else (output > 0) & (output < 6))
            if shift is not None and need[i_shift]:
                grad_shift = g_u.sum((0, 2, 3), dtype=torch.promote_types(g_u.dtype, torch.float32)).to(shift.dtype)
        else:
            # The pre-activation is recomputed at the forward's precision:
            # rounded to 16 bits it could lie on the other side of an
            # activation's kink than the forward's fp32 value did, and a
            # flipped mask is an O(1) gradient error (found on the GPU).
            wide = input.dtype in (torch.float16, torch.bfloat16)
            up = (lambda t: t.float() if t is not None else None) if wide else (lambda t: t)
            u = self.call_forward(up(input), up(weight), up(bias), stride, padding, dilation, groups)
            g_u, grad_scale, grad_shift = c.epilogue_backward(grad, u, scale, shift, act, need[i_scale],
                                                              need[i_shift])
            g_u = g_u.to(input.dtype)
        grad_input, grad_weight, grad_bias = self.grads(g_u, input, weight, stride, padding, dilation, groups, need[0],
                                                        need[1], need[2] and bias is not None)
        rest = (None,) * (4 if self.grouped else 3)
        return (grad_input, grad_weight, grad_bias) + rest + (grad_scale, grad_shift, None)

    def _setup_grad_input(self, ctx, inputs, output):
        grad_output, weight, input_size, stride, padding, dilation = inputs[:6]
        groups = inputs[6] if self.grouped else input_size[1]
        ctx.conf = (stride, padding, dilation, groups)
        ctx.backend = backends.requested_backend()
        ctx.save_for_backward(grad_output, weight)

    def _setup_grad_weight(self, ctx, inputs, output):
        grad_output, input, weight_size, stride, padding, dilation = inputs[:6]
        groups = inputs[6] if self.grouped else input.shape[1]
        ctx.conf = (stride, padding, dilation, groups)
        ctx.backend = backends.requested_backend()
        ctx.save_for_backward(grad_output, input)

    def _grad_input_vjp(self, grad_output, weight, gg, conf, need_go, need_w):
        # grad_input = conv_transpose(grad_output, weight) is bilinear:
        # d/d grad_output = conv(gg, weight); d/d weight = grad_weight(grad_output, gg).
        stride, padding, dilation, groups = conf
        g_go = self.call_forward(gg, weight, None, stride, padding, dilation, groups) if need_go else None
        g_w = self.call_grad_weight(grad_output, gg, list(weight.shape), stride, padding, dilation,
                                    groups)[0] if need_w else None
        return g_go, g_w

    def _grad_weight_vjp(self, grad_output, input, gg_w, gg_b, conf, need_go, need_in):
        # grad_weight(grad_output, input) is bilinear: <grad_weight, V> = <grad_output, conv(input, V)>.
        stride, padding, dilation, groups = conf
        g_go = self.call_forward(input, gg_w, gg_b, stride, padding, dilation, groups) if need_go else None
        g_in = self.call_grad_input(grad_output, gg_w, list(input.shape), stride, padding, dilation,
                                    groups) if need_in else None
        return g_go, g_in

    def _backward_grad_input(self, ctx, gg):
        grad_output, weight = ctx.saved_tensors
        with backends.use_backend(ctx.backend):
            grads = self._grad_input_vjp(grad_output, weight, gg, ctx.conf, *ctx.needs_input_grad[:2])
        return grads + (None,) * (5 if self.grouped else 4)

    def _backward_grad_weight(self, ctx, gg_w, gg_b):
        grad_output, input = ctx.saved_tensors
        with backends.use_backend(ctx.backend):
            grads = self._grad_weight_vjp(grad_output, input, gg_w, gg_b, ctx.conf, *ctx.needs_input_grad[:2])
        return grads + (None,) * (5 if self.grouped else 4)

    def _setup_backward(self, ctx, inputs, output):
        grad_output, input, weight, stride, padding, dilation = inputs[:6]
        groups = inputs[6] if self.grouped else input.shape[1]
        ctx.conf = (stride, padding, dilation, groups)
        ctx.backend = backends.requested_backend()
        ctx.save_for_backward(grad_output, input, weight)

    def _backward_backward(self, ctx, gg_in, gg_w, gg_b):
        # The sum of the two ops' formulas (_grad_input_vjp, _grad_weight_vjp).
        grad_output, input, weight = ctx.saved_tensors
        need = ctx.needs_input_grad
        a_go = b_go = g_in = g_w = None
        with backends.use_backend(ctx.backend):
            if gg_in is not None:
                a_go, g_w = self._grad_input_vjp(grad_output, weight, gg_in, ctx.conf, need[0], need[2])
            if gg_w is not None or gg_b is not None:
                b_go, g_in = self._grad_weight_vjp(grad_output, input,
                                                   gg_w if gg_w is not None else torch.zeros_like(weight), gg_b,
                                                   ctx.conf, need[0], need[1] and gg_w is not None)
        g_go = b_go if a_go is None else a_go if b_go is None else a_go + b_go
        return (g_go, g_in, g_w) + (None,) * (4 if self.grouped else 3)

    def _normalize(self, inputs):
        """Schema arguments -> (input, weight, bias, stride, padding, dilation, groups, scale, shift, activation)."""
        args = list(inputs) + [None] * 10
        if self.grouped:
            input, weight, bias, stride, padding, dilation, groups, scale, shift, activation = args[:10]
        else:
            input, weight, bias, stride, padding, dilation, scale, shift, activation = args[:9]
            groups = input.shape[1]
        return input, weight, bias, stride, padding, dilation, groups, scale, shift, activation or "none"

    # ----------------------------------------------------------- registration
    def _register(self):
        name, ops = self.name, self.ops
        g_arg = " int groups," if self.grouped else ""
        g_tail = ", int groups" if self.grouped else ""
        c.LIB.define(f"{name}(Tensor input, Tensor weight, Tensor? bias, int[2] stride, int[2] padding, "
                     f"int[2] dilation,{g_arg} Tensor? scale=None, Tensor? shift=None, str activation='none') -> Tensor")
        c.LIB.define(f"{ops['grad_input']}(Tensor grad_output, Tensor weight, SymInt[4] input_size, int[2] stride, "
                     f"int[2] padding, int[2] dilation{g_tail}) -> Tensor")
        c.LIB.define(f"{ops['grad_weight']}(Tensor grad_output, Tensor input, SymInt[4] weight_size, int[2] stride, "
                     f"int[2] padding, int[2] dilation{g_tail}) -> (Tensor, Tensor)")

        if "backward" in ops:
            c.LIB.define(f"{ops['backward']}(Tensor grad_output, Tensor input, Tensor weight, int[2] stride, "
                         f"int[2] padding, int[2] dilation{g_tail}) -> (Tensor, Tensor, Tensor)")

        fam = self
        if self.grouped:
            def fwd(input, weight, bias, stride, padding, dilation, groups, scale=None, shift=None, activation="none"):
                return fam.forward(input, weight, bias, stride, padding, dilation, groups, scale, shift, activation)

            def fwd_fake(input, weight, bias, stride, padding, dilation, groups, scale=None, shift=None,
                         activation="none"):
                return fam.forward_fake(input, weight, bias, stride, padding, dilation, groups, scale, shift,
                                        activation)

            def gi(grad_output, weight, input_size, stride, padding, dilation, groups):
                return fam.grad_input(grad_output, weight, input_size, stride, padding, dilation, groups)

            def gi_fake(grad_output, weight, input_size, stride, padding, dilation, groups):
                return fam.grad_input_fake(grad_output, weight, input_size, stride, padding, dilation, groups)

            def gw(grad_output, input, weight_size, stride, padding, dilation, groups):
                return fam.grad_weight(grad_output, input, weight_size, stride, padding, dilation, groups)

            def gw_fake(grad_output, input, weight_size, stride, padding, dilation, groups):
                return fam.grad_weight_fake(grad_output, input, weight_size, stride, padding, dilation, groups)

            def bw(grad_output, input, weight, stride, padding, dilation, groups):
                return fam.backward(grad_output, input, weight, stride, padding, dilation, groups)

            def bw_fake(grad_output, input, weight, stride, padding, dilation, groups):
                return fam.backward_fake(grad_output, input, weight, stride, padding, dilation, groups)
        else:
            def fwd(input, weight, bias, stride, padding, dilation, scale=None, shift=None, activation="none"):
                return fam.forward(input, weight, bias, stride, padding, dilation, input.shape[1], scale, shift,
                                   activation)

            def fwd_fake(input, weight, bias, stride, padding, dilation, scale=None, shift=None, activation="none"):
                return fam.forward_fake(input, weight, bias, stride, padding, dilation, input.shape[1], scale, shift,
                                        activation)

            def gi(grad_output, weight, input_size, stride, padding, dilation):
                return fam.grad_input(grad_output, weight, input_size, stride, padding, dilation, input_size[1])

            def gi_fake(grad_output, weight, input_size, stride, padding, dilation):
                return fam.grad_input_fake(grad_output, weight, input_size, stride, padding, dilation, input_size[1])

            def gw(grad_output, input, weight_size, stride, padding, dilation):
                return fam.grad_weight(grad_output, input, weight_size, stride, padding, dilation, input.shape[1])

            def gw_fake(grad_output, input, weight_size, stride, padding, dilation):
                return fam.grad_weight_fake(grad_output, input, weight_size, stride, padding, dilation,
                                            input.shape[1])

            def bw(grad_output, input, weight, stride, padding, dilation):
                return fam.backward(grad_output, input, weight, stride, padding, dilation, input.shape[1])

            def bw_fake(grad_output, input, weight, stride, padding, dilation):
                return fam.backward_fake(grad_output, input, weight, stride, padding, dilation, input.shape[1])

        self.impls = {"forward": fwd, "grad_input": gi, "grad_weight": gw}
        registrations = [(name, fwd, fwd_fake), (ops["grad_input"], gi, gi_fake), (ops["grad_weight"], gw, gw_fake)]
        if "backward" in ops:
            self.impls["backward"] = bw
            registrations.append((ops["backward"], bw, bw_fake))
            c.register_autograd(ops["backward"], bw, self._backward_backward, self._setup_backward)
        for op, real, fake in registrations:
            torch.library.register_fake(f"effconv::{op}")(fake)
            torch.library.register_kernel(f"effconv::{op}", ("cpu", "cuda"), real)
        self.function = c.register_autograd(name, fwd, self._backward_forward, self._setup_forward)
        c.register_autograd(ops["grad_input"], gi, self._backward_grad_input, self._setup_grad_input)
        c.register_autograd(ops["grad_weight"], gw, self._backward_grad_weight, self._setup_grad_weight)
