"""Ahead-of-time compile every shipped Triton kernel and config for real GPUs
(no GPU needed) and report registers, shared memory and spills.

    python -m effconv.kernels.aot [--arch 80 90] [--quick]

Exits non-zero if any kernel fails to compile or spills registers. Spills
are read from the triton wheel's own ``ptxas -v`` on the generated PTX. The
test suite runs this (tests/test_triton_aot.py); it must run without
TRITON_INTERPRET, which turns kernels into interpreter functions.
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import dataclasses
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import triton
import triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from effconv.kernels import _config

BIN = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"

# dtype variant -> (pointer element type, dot precision, accumulator, config class)
DTYPES = {
    "fp16": ("fp16", "ieee", tl.float32, "mma"),
    "bf16": ("bf16", "ieee", tl.float32, "mma"),
    "fp32-tf32": ("fp32", "tf32", tl.float32, "mma"),
    "fp32-ieee": ("fp32", "ieee", tl.float32, "fma"),
    "fp64": ("fp64", "ieee", tl.float64, "fma"),
}


@dataclasses.dataclass(frozen=True)
class KernelSpec:
    module: str            # effconv.kernels.<module>
    fn_name: str           # the @triton.jit function
    config: str            # key in configs/<config_op>.json
    config_op: str
    pointers: tuple        # pointer args carrying the data dtype
    acc_pointers: tuple = ()  # pointer args holding the accumulator dtype (workspaces)
    constexprs: tuple = ()    # (name, value) pairs fixed for this spec
    # Integer args the launchers make 1 (channels_last activations, transposed
    # weights); Triton's JIT specialises an argument equal to 1 into a
    # constant, so the AOT build must too or it compiles the wrong kernel.
    ones: tuple = ()
    # Stride args that are multiples of 16 when channel counts are (the common
    # case): the JIT marks such values tt.divisibility=16, which enables
    # vectorised loads, so the 'aligned' variant does the same.
    strides: tuple = ()


def specs() -> list[KernelSpec]:
    full_epilogue = (("HAS_BIAS", True), ("HAS_SCALE", True), ("HAS_SHIFT", True), ("ACT", 3))
    no_epilogue = (("HAS_BIAS", False), ("HAS_SCALE", False), ("HAS_SHIFT", False), ("ACT", 0))
    fwd_ptrs = ("x_ptr", "w_ptr", "y_ptr", "bias_ptr", "scale_ptr", "shift_ptr")
    conv_strides = ("sxn", "sxh", "sxw", "swc", "swr", "sws", "syn", "syp", "syq")
    dgrad_strides = ("sdn", "sdp", "sdq", "swk", "swr", "sws", "sxn", "sxh", "sxw")
    return [
        KernelSpec("conv2d", "conv2d_fwd_kernel", "conv2d_fwd_kernel", "conv2d", fwd_ptrs, ("stats_ptr",),
                   constexprs=(("R", 3), ("S", 3), ("IS_1X1", False), ("STATS", False)) + full_epilogue,
                   ones=("sxc", "swk", "syk"), strides=conv_strides),
        KernelSpec("conv2d", "conv2d_fwd_kernel", "conv2d_fwd_kernel_1x1", "conv2d", fwd_ptrs, ("stats_ptr",),
                   constexprs=(("R", 1), ("S", 1), ("IS_1X1", True), ("STATS", False)) + full_epilogue,
                   ones=("sxc", "swk", "syk"), strides=conv_strides),
        # Training-mode Conv-BN: batch statistics in the epilogue, no affine epilogue.
        KernelSpec("conv2d", "conv2d_fwd_kernel", "conv2d_fwd_kernel_stats", "conv2d", fwd_ptrs, ("stats_ptr",),
                   constexprs=(("R", 3), ("S", 3), ("IS_1X1", False), ("STATS", True)) + no_epilogue,
                   ones=("sxc", "swk", "syk"), strides=conv_strides),
        KernelSpec("conv2d", "conv2d_fwd_kernel", "conv2d_fwd_kernel_1x1_stats", "conv2d", fwd_ptrs, ("stats_ptr",),
                   constexprs=(("R", 1), ("S", 1), ("IS_1X1", True), ("STATS", True)) + no_epilogue,
                   ones=("sxc", "swk", "syk"), strides=conv_strides),
        KernelSpec("conv2d", "conv2d_grad_input_kernel", "conv2d_grad_input_kernel", "conv2d",
                   ("dy_ptr", "w_ptr", "dx_ptr"), constexprs=(("R", 3), ("S", 3)), ones=("sdk", "swc", "sxc"),
                   strides=dgrad_strides),
        KernelSpec("conv2d", "conv2d_grad_weight_kernel", "conv2d_grad_weight_kernel", "conv2d",
                   ("dy_ptr", "x_ptr"), acc_pointers=("dw_ptr", "db_ptr"), constexprs=(("R", 3), ("S", 3)),
                   ones=("sdk", "sxc"), strides=("sdn", "sdp", "sdq", "sxn", "sxh", "sxw")),
        KernelSpec("depthwise", "depthwise_fwd_kernel", "depthwise_fwd_kernel", "depthwise", fwd_ptrs,
                   ("stats_ptr",), constexprs=(("R", 3), ("S", 3), ("STATS", False)) + full_epilogue,
                   ones=("sxc", "syk"), strides=("sxn", "sxh", "sxw", "syn", "syp", "syq")),
        KernelSpec("depthwise", "depthwise_fwd_kernel", "depthwise_fwd_kernel_stats", "depthwise", fwd_ptrs,
                   ("stats_ptr",), constexprs=(("R", 3), ("S", 3), ("STATS", True)) + no_epilogue,
                   ones=("sxc", "syk"), strides=("sxn", "sxh", "sxw", "syn", "syp", "syq")),
        KernelSpec("depthwise", "depthwise_grad_input_kernel", "depthwise_grad_input_kernel", "depthwise",
                   ("dy_ptr", "w_ptr", "dx_ptr"), constexprs=(("R", 3), ("S", 3)), ones=("sdk", "sxc"),
                   strides=("sdn", "sdp", "sdq", "sxn", "sxh", "sxw")),
        KernelSpec("depthwise", "depthwise_grad_weight_kernel", "depthwise_grad_weight_kernel", "depthwise",
                   ("dy_ptr", "x_ptr"), acc_pointers=("dw_ptr", "db_ptr"), constexprs=(("R", 3), ("S", 3)),
                   ones=("sdk", "sxc"), strides=("sdn", "sdp", "sdq", "sxn", "sxh", "sxw")),
        KernelSpec("bn_act", "bn_act_reduce_kernel", "bn_act_reduce_kernel", "bn_act", ("dy_ptr", "z_ptr"),
                   ("mean_ptr", "invstd_ptr", "gamma_ptr", "beta_ptr", "ws_ptr"), constexprs=(("ACT", 3),),
                   ones=("sc",), strides=("sn", "shw")),
        KernelSpec("bn_act", "bn_act_apply_kernel", "bn_act_apply_kernel", "bn_act", ("dy_ptr", "z_ptr", "dz_ptr"),
                   ("mean_ptr", "invstd_ptr", "gamma_ptr", "beta_ptr", "k_ptr"), constexprs=(("ACT", 3),),
                   ones=("sc",), strides=("sn", "shw")),
        KernelSpec("deform", "deform_fwd_kernel", "deform_fwd_kernel", "deform",
                   ("x_ptr", "off_ptr", "mask_ptr", "w_ptr", "bias_ptr", "y_ptr"),
                   constexprs=(("KW", 3), ("HAS_MASK", True), ("HAS_BIAS", True)), ones=("syk",),
                   strides=("sxn", "sxh", "sxw", "syn", "syp", "syq")),
        KernelSpec("deform", "deform_grad_cols_kernel", "deform_grad_cols_kernel", "deform",
                   ("dy_ptr", "x_ptr", "off_ptr", "mask_ptr", "w_ptr"), acc_pointers=("gx_ptr", "goff_ptr", "gmask_ptr"),
                   constexprs=(("KW", 3), ("HAS_MASK", True), ("WANT_GX", True), ("WANT_COORD", True)),
                   ones=("sdk",), strides=("sdn", "sdp", "sdq", "sxn", "sxh", "sxw")),
        KernelSpec("deform", "deform_grad_weight_kernel", "deform_grad_weight_kernel", "deform",
                   ("dy_ptr", "x_ptr", "off_ptr", "mask_ptr"), acc_pointers=("ws_ptr", "wsb_ptr"),
                   constexprs=(("KW", 3), ("HAS_MASK", True), ("WANT_BIAS", True)),
                   ones=("sdk",), strides=("sdn", "sdp", "sdq", "sxn", "sxh", "sxw")),
        KernelSpec("epilogue", "epilogue_kernel", "epilogue_kernel", "epilogue",
                   ("x_ptr", "y_ptr", "bias_ptr", "scale_ptr", "shift_ptr"), constexprs=full_epilogue),
        KernelSpec("max_pool2d", "max_pool2d_fwd_kernel", "max_pool2d_fwd_kernel", "max_pool2d", ("x_ptr", "y_ptr"),
                   constexprs=(("R", 3), ("S", 3)), ones=("sxc", "syc"),
                   strides=("sxn", "sxh", "sxw", "syn", "syp", "syq")),
        KernelSpec("max_pool2d", "max_pool2d_bwd_kernel", "max_pool2d_bwd_kernel", "max_pool2d",
                   ("dy_ptr", "x_ptr", "dx_ptr"), constexprs=(("R", 3), ("S", 3)), ones=("sdc", "sxc", "szc"),
                   strides=("sdn", "sdp", "sdq", "sxn", "sxh", "sxw", "szn", "szh", "szw")),
    ]


def _jobs(archs, quick):
    """Every config of a class x every dtype of that class x arch, with
    16-byte-aligned strides; the default config also unaligned (odd channel
    counts)."""
    for spec in specs():
        classes = _config.load(spec.config_op)[spec.config]
        for dt, (_, _, _, cls) in DTYPES.items():
            if "any" in classes and dt == "fp32-ieee":
                continue  # no tl.dot: identical to the fp32-tf32 build
            for ci, cfg in enumerate(classes.get(cls, classes.get("any", []))):
                if quick and ci > 0:
                    break
                for aligned in (True, False) if ci == 0 else (True,):
                    for arch in archs:
                        yield spec, ci, cfg, dt, arch, aligned


def compile_one(spec: KernelSpec, cfg: dict, dtype: str, arch: int, aligned: bool = True, index=tl.int32) -> dict:
    import importlib

    fn = getattr(importlib.import_module(f"effconv.kernels.{spec.module}"), spec.fn_name)
    elem, precision, acc, _ = DTYPES[dtype]
    acc_name = {tl.float32: "fp32", tl.float64: "fp64"}[acc]
    constexprs = dict(spec.constexprs)
    constexprs.update({name: 1 for name in spec.ones})
    constexprs.update({k: v for k, v in cfg.items() if k not in ("num_warps", "num_stages")})
    if "PRECISION" in fn.arg_names:
        constexprs["PRECISION"] = precision
    if "ACC_DTYPE" in fn.arg_names:
        constexprs["ACC_DTYPE"] = acc
    if "IDX" in fn.arg_names:
        constexprs["IDX"] = index
    signature = {}
    for name in fn.arg_names:
        if name in constexprs:
            signature[name] = "constexpr"
        elif name in spec.pointers:
            signature[name] = f"*{elem}"
        elif name in spec.acc_pointers:
            signature[name] = f"*{acc_name}"
        else:
            signature[name] = "i32"
    attrs = {}
    if aligned:
        for i, name in enumerate(fn.arg_names):
            if signature[name].startswith("*") or (name in spec.strides and name not in constexprs):
                attrs[(i,)] = [["tt.divisibility", 16]]
    src = ASTSource(fn=fn, signature=signature, constexprs=constexprs, attrs=attrs)
    opts = {"num_warps": cfg.get("num_warps", 4), "num_stages": cfg.get("num_stages", 2)}
    compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32), options=opts)
    ptx = compiled.asm["ptx"]
    gpu = re.search(r"^\.target\s+(\S+)", ptx, re.M).group(1).rstrip(",")
    with tempfile.TemporaryDirectory() as d:
        path = Path(d, "k.ptx")
        path.write_text(ptx)
        res = subprocess.run([str(BIN / "ptxas"), f"-arch={gpu}", "-v", str(path), "-o", str(Path(d, "k.cubin"))],
                             capture_output=True, text=True, check=True)
    info = res.stderr + res.stdout
    regs = int(re.search(r"Used (\d+) registers", info).group(1))
    spill = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", info)
    return {
        "regs": regs,
        "spill_stores": int(spill.group(1)) if spill else 0,
        "spill_loads": int(spill.group(2)) if spill else 0,
        "shared": compiled.metadata.shared,
    }


def _run(job):
    spec, ci, cfg, dt, arch, aligned = job
    try:
        return job, compile_one(spec, cfg, dt, arch, aligned), None
    except Exception as e:  # report every failure, not just the first
        return job, None, f"{type(e).__name__}: {str(e).strip().splitlines()[-1] if str(e).strip() else ''}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", type=int, nargs="+", default=[80, 90])
    ap.add_argument("--quick", action="store_true", help="default config of each kernel only")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    args = ap.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        print("effconv.kernels.aot: unset TRITON_INTERPRET (it replaces kernels with interpreter functions)")
        return 2
    jobs = list(_jobs(args.arch, args.quick))
    failures = 0
    print(f"{'kernel':28s} {'cfg':>3s} {'dtype':10s} {'align':5s} {'arch':>4s} {'regs':>4s} {'smem':>7s} spills")
    with cf.ProcessPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        for (spec, ci, cfg, dt, arch, aligned), info, err in pool.map(_run, jobs):
            label = f"{spec.config:28s} {ci:3d} {dt:10s} {'16B' if aligned else 'none':5s} sm{arch:<2d}"
            if err is not None:
                failures += 1
                print(f"{label}  COMPILE ERROR {err}")
                continue
            spills = info["spill_stores"] + info["spill_loads"]
            failures += spills > 0
            print(f"{label} {info['regs']:4d} {info['shared']:7d} {spills}{'  <-- SPILLS' if spills else ''}")
    print(f"{len(jobs)} compiles, {failures} failures")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
