"""Builds the torch_wrc extension; all other metadata lives in pyproject.toml.

- C++ (CPU) kernels are always compiled.
- CUDA kernels are compiled when a CUDA toolkit is found and torch sees a GPU, or when FORCE_CUDA=1
  (used by CI, which has nvcc but no GPU, so that a broken .cu file cannot land).
- WRC_BUILD_EXTENSION=0 skips the extension entirely (the ``wrc`` package falls back to pure PyTorch).
- The toolkit is CUDA_HOME / CUDA_PATH when set, else the folder above the ``nvcc`` on PATH (asked via
  ``nvcc -dryrun``, which also sees through wrapper scripts), else torch's own guess.
- TORCH_CUDA_ARCH_LIST picks GPU architectures; it defaults to the visible GPUs' (without one: "8.0;9.0"), the
  newest also embedded as PTX so that newer GPUs can run the kernels (e.g. "9.0+PTX" on an H100).
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
import sys

from setuptools import find_namespace_packages, setup

HERE = os.path.dirname(os.path.abspath(__file__))
CSRC = os.path.join("torch_wrc", "csrc")


def find_cuda_home() -> str | None:
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var) and os.path.isfile(os.path.join(os.environ[var], "bin", "nvcc")):
            return os.environ[var]
    nvcc = shutil.which("nvcc")
    if nvcc:
        try:
            out = subprocess.run([nvcc, "-dryrun", "x.cu"], capture_output=True, text=True, timeout=60)
            match = re.search(r"_HERE_=(\S+)", out.stdout + out.stderr)
            if match:
                return os.path.dirname(os.path.normpath(match.group(1)))
        except (OSError, subprocess.SubprocessError):
            pass
        return os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))
    return None


def default_arch_list(torch) -> str:
    """The visible GPUs' architectures, or Ampere and Hopper without one; the newest also as PTX, which the driver
    compiles for GPUs newer than any listed (torch's own default for visible GPUs embeds no PTX)."""
    if not torch.cuda.is_available():
        return "8.0;9.0+PTX"
    archs = sorted({torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())})
    return ";".join(f"{major}.{minor}" for major, minor in archs) + "+PTX"


def extensions() -> tuple[list, dict]:
    if os.environ.get("WRC_BUILD_EXTENSION", "1").lower() in ("0", "false", "no"):
        print("torch_wrc: WRC_BUILD_EXTENSION=0, skipping the C++/CUDA extension", file=sys.stderr)
        return [], {}
    import torch
    from torch.utils import cpp_extension

    sources = [os.path.join(CSRC, "wrc_ops.cpp"), *sorted(glob.glob(os.path.join(CSRC, "cpu", "*.cpp")))]
    cxx_flags = ["-O3"] + (["-fopenmp"] if sys.platform.startswith("linux") else [])
    cuda_home = find_cuda_home()
    force = os.environ.get("FORCE_CUDA", "0") == "1"
    if force and cuda_home is None:
        raise RuntimeError("FORCE_CUDA=1 but no CUDA toolkit was found: set CUDA_HOME or put nvcc on PATH")
    use_cuda = cuda_home is not None and (force or torch.cuda.is_available())
    if not use_cuda:
        print("torch_wrc: building the C++ (CPU) kernels only", file=sys.stderr)
        ext = cpp_extension.CppExtension("torch_wrc._C", sources, extra_compile_args={"cxx": cxx_flags},
                                         extra_link_args=["-fopenmp"] if "-fopenmp" in cxx_flags else [])
        return [ext], {"build_ext": cpp_extension.BuildExtension}
    os.environ["CUDA_HOME"] = cuda_home
    cpp_extension.CUDA_HOME = cuda_home  # torch guesses at import time; the toolkit found here wins
    if not os.environ.get("TORCH_CUDA_ARCH_LIST"):
        os.environ["TORCH_CUDA_ARCH_LIST"] = default_arch_list(torch)
    print(f"torch_wrc: building the C++ and CUDA kernels with the toolkit in {cuda_home} "
          f"(TORCH_CUDA_ARCH_LIST={os.environ['TORCH_CUDA_ARCH_LIST']})", file=sys.stderr)
    sources += sorted(glob.glob(os.path.join(CSRC, "cuda", "*.cu")))
    ext = cpp_extension.CUDAExtension(
        "torch_wrc._C", sources, define_macros=[("WITH_CUDA", None)],
        extra_compile_args={"cxx": cxx_flags, "nvcc": ["-O3", "--expt-relaxed-constexpr"]},
        extra_link_args=["-fopenmp"] if "-fopenmp" in cxx_flags else [],
    )
    return [ext], {"build_ext": cpp_extension.BuildExtension}


def packages() -> dict:
    """The importable packages, train_wrc.py as a module, and config/ carried inside the wheel as ``wrc/_config``
    (an installed package finds its Hydra configs there: hydra_plugins.wrc_resolvers.find_config_dir)."""
    found = find_namespace_packages(include=["wrc", "wrc.*", "torch_wrc", "torch_wrc.*", "hydra_plugins",
                                             "evaluation", "evaluation.*", "utils", "utils.*"])
    return {"packages": [*found, "wrc._config"], "package_dir": {"wrc._config": "config"},
            "package_data": {"wrc": ["py.typed"], "wrc._config": ["**/*.yaml"]}, "py_modules": ["train_wrc"]}


ext_modules, cmdclass = extensions()
setup(ext_modules=ext_modules, cmdclass=cmdclass, **packages())
