"""Build effconv and its extension effconv._C.

EFFCONV_NO_EXTENSION=1 installs the Python package only; the Makefile uses it
for the editable install and builds the extension in place with
`setup.py build_ext --inplace`, whose ninja build in ./build is incremental.

CPU kernels (csrc/cpu, csrc/bindings.cpp) always build. CUDA C++ kernels
(csrc/cuda/*.cu) build when torch is a CUDA build and nvcc is found, unless
EFFCONV_SKIP_CUDA=1; EFFCONV_CUDA_ARCHS picks the targets (default "8.0;9.0").
Triton kernels ship as Python sources: kernels/ installs as effconv.kernels.
"""
import glob
import os
import shutil
import sysconfig
from pathlib import Path

from setuptools import setup

ROOT = Path(__file__).resolve().parent


def _find_cuda_home():
    """The toolkit root: nvcc on PATH may be a wrapper script outside it
    (/usr/local/bin/nvcc here), which would make torch guess /usr/local."""
    if os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH"):
        return
    candidates = ["/usr/local/cuda"]
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.insert(0, str(Path(os.path.realpath(nvcc)).parent.parent))
    for c in candidates:
        if Path(c, "include", "cuda_runtime.h").exists() and Path(c, "bin", "nvcc").exists():
            os.environ["CUDA_HOME"] = c
            return


_find_cuda_home()

import torch  # noqa: E402  (CUDA_HOME must be settled before cpp_extension reads it)
from torch.utils import cpp_extension  # noqa: E402


def rel(paths):
    return sorted(str(Path(p).relative_to(ROOT)) for p in paths)


def cuda_plan():
    """(build CUDA?, why not) for this environment."""
    if os.environ.get("EFFCONV_SKIP_CUDA", "0") == "1":
        return False, "EFFCONV_SKIP_CUDA=1"
    if torch.version.cuda is None:
        return False, "torch is a CPU-only build"
    if cpp_extension.CUDA_HOME is None or shutil.which("nvcc") is None and not Path(
        cpp_extension.CUDA_HOME, "bin", "nvcc"
    ).exists():
        return False, "nvcc not found"
    return True, ""


def cuda_archs():
    archs = [a.strip() for a in os.environ.get("EFFCONV_CUDA_ARCHS", "8.0;9.0").replace(",", ";").split(";")]
    archs = [a for a in archs if a]
    # cpp_extension reads TORCH_CUDA_ARCH_LIST; pinning it stops it from
    # probing for a GPU or adding every arch of the torch build.
    os.environ["TORCH_CUDA_ARCH_LIST"] = ";".join(archs)
    flags = []
    for a in archs:
        num = a.replace(".", "").replace("+PTX", "")
        flags += ["-gencode", f"arch=compute_{num},code=sm_{num}"]
    return flags


def extension():
    include_dirs = [str(ROOT / "csrc" / "include"), str(ROOT / "csrc" / "cpu"), str(ROOT / "csrc")]
    sources = rel(glob.glob(str(ROOT / "csrc" / "**" / "*.cpp"), recursive=True))
    # -fopenmp: at::parallel_for is a header template whose OpenMP pragmas
    # compile to serial loops without it.
    cxx = ["-O3", "-std=c++20", "-fno-math-errno", "-fopenmp", "-Wall", "-Wno-unknown-pragmas"]
    build_cuda, why = cuda_plan()
    if not build_cuda:
        print(f"effconv: building CPU kernels only ({why})")
        return cpp_extension.CppExtension(
            "effconv._C", sources, include_dirs=include_dirs, extra_compile_args={"cxx": cxx},
            extra_link_args=["-fopenmp"],
        )
    # Headers the toolkit may lack (cusparse.h, cublas_v2.h, ...) ship in torch's nvidia wheels.
    nvidia_inc = Path(sysconfig.get_paths()["purelib"], "nvidia", "cu13", "include")
    if nvidia_inc.is_dir():
        include_dirs.append(str(nvidia_inc))
    nvcc = ["-O3", "-std=c++20", "--expt-relaxed-constexpr", "-Xptxas", "-v", "-lineinfo"] + cuda_archs()
    sources += rel(glob.glob(str(ROOT / "csrc" / "cuda" / "*.cu")))
    print(f"effconv: building CPU and CUDA kernels for {os.environ['TORCH_CUDA_ARCH_LIST']}")
    return cpp_extension.CUDAExtension(
        "effconv._C",
        sources,
        include_dirs=include_dirs,
        define_macros=[("EFFCONV_WITH_CUDA", "1")],
        extra_compile_args={"cxx": cxx + ["-DEFFCONV_WITH_CUDA"], "nvcc": nvcc},
        extra_link_args=["-fopenmp"],
    )


setup(
    name="effconv",
    version="0.1.0",
    description="Fast convolutions for efficient CNNs: Triton, CUDA C++ and C++ CPU kernels for PyTorch",
    python_requires=">=3.10",
    packages=["effconv", "effconv.ops", "effconv.nn", "effconv.models", "effconv.examples", "effconv.kernels"],
    package_dir={"effconv.kernels": "kernels"},
    package_data={"effconv.kernels": ["configs/*.json"]},
    ext_modules=[] if os.environ.get("EFFCONV_NO_EXTENSION") == "1" else [extension()],
    cmdclass={"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)},
    zip_safe=False,
)
