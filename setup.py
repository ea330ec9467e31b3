"""Install rnnkernels and build its optional C++/CUDA extension ``rnnkernels._C``.

    pip install --no-build-isolation -e .          # torch must already be installed

The extension is built with ninja through ``torch.utils.cpp_extension``:

* a ``CUDAExtension`` (CPU + CUDA backends) when torch was built with CUDA and ``nvcc`` is found,
* a ``CppExtension`` (CPU backend only) otherwise.

Environment switches: ``RNNKERNELS_NO_EXT=1`` skips the extension, ``RNNKERNELS_NO_CUDA=1`` builds
the CPU-only one even where CUDA is available, ``MAX_JOBS`` limits ninja's parallel jobs.

A failed extension build does not fail the installation: the package then runs on the
``reference`` and ``triton`` backends, ``rnnkernels.backends.compiled.AVAILABLE`` is False and the reason is
printed here (``pip install -v`` shows it). With ``RNNKERNELS_REQUIRE_EXT=1`` (the Makefile sets it,
so ``make test`` and CI do) a missing torch or a failed build fails the installation instead.

No ``-march`` flag: the CPU kernels are compiled twice, generic and with AVX2+FMA enabled for
those functions only, and the extension picks one at run time (csrc/cpu/scan_dispatch.cpp), so a
wheel built here runs on any x86-64 CPU.
"""
from __future__ import annotations

import glob
import os
import shutil
import sys

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _say(msg: str) -> None:
    print(f"rnnkernels setup: {msg}", file=sys.stderr, flush=True)


def _rel(pattern: str) -> list[str]:
    return sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, pattern)))


def _required() -> bool:
    return _flag("RNNKERNELS_REQUIRE_EXT")


def _extension():
    """(ext_modules, cmdclass) for rnnkernels._C, or ([], {}) when it is not to be built."""
    if _flag("RNNKERNELS_NO_EXT"):
        _say("RNNKERNELS_NO_EXT is set: not building rnnkernels._C")
        return [], {}
    try:
        import torch
        from torch.utils import cpp_extension as ce
    except Exception as exc:  # build isolation without torch, or a broken torch
        msg = (f"torch is not importable ({exc}); not building rnnkernels._C. "
               "Install torch first and use `pip install --no-build-isolation -e .`")
        if _required():
            raise RuntimeError(f"{msg} (RNNKERNELS_REQUIRE_EXT is set)") from exc
        _say(msg)
        return [], {}

    nvcc = shutil.which("nvcc") or (
        os.path.join(ce.CUDA_HOME, "bin", "nvcc") if ce.CUDA_HOME else None)
    with_cuda = (torch.version.cuda is not None and nvcc is not None and os.path.exists(nvcc)
                 and not _flag("RNNKERNELS_NO_CUDA"))

    # Every python/*.cpp but the CUDA bridge (added below when CUDA is built), so a new binding
    # file is picked up without touching this list.
    sources = ([p for p in _rel("python/*.cpp") if p != os.path.join("python", "cuda_ops.cpp")]
               + _rel("csrc/cpu/*.cpp"))
    include_dirs = [os.path.join(ROOT, "csrc", "include"), os.path.join(ROOT, "csrc"),
                    os.path.join(ROOT, "python")]
    # -O3 for the vector code; -g0 to halve the build time of the ATen-heavy files; OpenMP for the
    # kernels' thread teams (the extension shares torch's libgomp, already loaded, so
    # torch.set_num_threads governs both). No -ffast-math: the kernels rely on IEEE rounding (the
    # exp range reduction) and NaN propagation.
    cxx = ["-O3", "-g0", "-fopenmp", "-Wall", "-Wno-psabi", "-Wno-unknown-pragmas"]
    define_macros = []
    if with_cuda:
        sources += _rel("python/cuda_ops.cpp") + _rel("csrc/cuda/*.cu")
        define_macros.append(("RNNK_WITH_CUDA", "1"))
        nvcc_flags = ["-O3", "-lineinfo", f"-I{os.path.join(ROOT, 'csrc', 'include')}"]
        ext = ce.CUDAExtension(
            "rnnkernels._C", sources, include_dirs=include_dirs, define_macros=define_macros,
            extra_compile_args={"cxx": cxx, "nvcc": nvcc_flags}, extra_link_args=["-fopenmp"])
        _say(f"building rnnkernels._C with CUDA {torch.version.cuda} ({nvcc})")
    else:
        ext = ce.CppExtension(
            "rnnkernels._C", sources, include_dirs=include_dirs, define_macros=define_macros,
            extra_compile_args={"cxx": cxx}, extra_link_args=["-fopenmp"])
        why = ("RNNKERNELS_NO_CUDA is set" if _flag("RNNKERNELS_NO_CUDA") else
               "torch has no CUDA" if torch.version.cuda is None else "nvcc not found")
        _say(f"building rnnkernels._C for the CPU only ({why})")

    class OptionalBuildExtension(ce.BuildExtension):
        """A failed compile leaves the package installable, without the extension."""

        def run(self):
            try:
                super().run()
            except Exception as exc:  # CompileError, ninja's RuntimeError, a missing compiler...
                if _required():
                    raise
                _say("building the C++/CUDA extension rnnkernels._C FAILED; rnnkernels is "
                     "installed without it and runs on the reference/triton backends. "
                     f"Reason: {type(exc).__name__}: {exc}")

    return [ext], {"build_ext": OptionalBuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = _extension()

setup(
    name="rnnkernels",
    version="0.1.0",
    description="Fused LSTM/GRU/RNN kernels for PyTorch (Triton, CUDA, C++) behind drop-in "
                "torch.nn modules",
    packages=find_packages(include=["rnnkernels", "rnnkernels.*"]),
    python_requires=">=3.9",
    install_requires=["torch>=2.4"],
    extras_require={"triton": ["triton"]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    zip_safe=False,
)
