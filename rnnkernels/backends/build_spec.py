"""What the compiled extension ``rnnkernels._C`` is built from and how: its one definition.

Two builders read it: ``setup.py`` (ahead of time, ``pip install --no-build-isolation .``) and
``jit_build.py`` (on first use, when no usable prebuilt extension is installed), so a source file
or a flag is named here only. ``setup.py`` loads this file by its path, in a build environment
that may have no torch and where the package itself must not be imported: standard library only,
no relative imports.

Paths are relative to a *source root*: the repository root (a clone, an editable install, an
unpacked sdist), or the ``_sources/`` folder that ``setup.py``'s ``build_py`` step fills inside an
installed package, which keeps the repository's layout.
"""
from __future__ import annotations

import glob
import hashlib
import json
import os
import platform
import shutil
import subprocess
import time

# The shipped sources: every file of these folders with one of these suffixes. A new .cpp in
# python/ or csrc/cpu/ is compiled without touching this file.
SOURCE_DIRS = ("csrc/include", "csrc/cpu", "csrc/cuda", "python")
SOURCE_SUFFIXES = (".h", ".hpp", ".cpp", ".cu", ".cuh")
CUDA_BRIDGE = "python/cuda_ops.cpp"     # compiled only into a CUDA build, with csrc/cuda/*.cu
CUDA_DEFINE = "RNNK_WITH_CUDA"
SOURCES_FOLDER = "_sources"             # inside the installed package
INFO_FILE = "_build_info.json"          # beside the built shared object

# -O3 for the vector code; -g0 to halve the build time of the ATen-heavy files; OpenMP for the
# kernels' thread teams (the extension shares torch's libgomp, already loaded, so
# torch.set_num_threads governs both). No -ffast-math: the kernels rely on IEEE rounding (the
# exp range reduction) and NaN propagation. No -march: the CPU kernels are compiled twice,
# generic and with AVX2+FMA for those functions only, and the extension picks one at run time
# (csrc/cpu/scan_dispatch.cpp), so one build runs on any x86-64 CPU. -DNDEBUG as setuptools
# passes it (from Python's CFLAGS), so the JIT build compiles the same code.
CXX_FLAGS = ("-O3", "-g0", "-DNDEBUG", "-fopenmp", "-Wall", "-Wno-psabi", "-Wno-unknown-pragmas")
NVCC_FLAGS = ("-O3", "-lineinfo")
LINK_FLAGS = ("-fopenmp",)


def shipped_files(root: str) -> list[str]:
    """Every C++/CUDA file the extension may need, relative to ``root`` ('/'-separated,
    sorted): what an installed package carries in ``_sources/``."""
    found = []
    for folder in SOURCE_DIRS:
        for path in glob.glob(os.path.join(root, folder, "**", "*"), recursive=True):
            if path.endswith(SOURCE_SUFFIXES) and os.path.isfile(path):
                found.append(os.path.relpath(path, root).replace(os.sep, "/"))
    return sorted(found)


def sources(root: str, with_cuda: bool) -> list[str]:
    """The translation units (relative to ``root``): every ``python/*.cpp`` and
    ``csrc/cpu/*.cpp``; for a CUDA build also ``csrc/cuda/*.cu`` (and the CUDA bridge, left out
    otherwise)."""
    folders = ("python", "csrc/cpu", "csrc/cuda") if with_cuda else ("python", "csrc/cpu")
    return [p for p in shipped_files(root)
            if os.path.dirname(p) in folders and p.endswith((".cpp", ".cu"))
            and (with_cuda or p != CUDA_BRIDGE)]


def include_dirs(root: str) -> list[str]:
    return [os.path.join(root, "csrc", "include"), os.path.join(root, "csrc"),
            os.path.join(root, "python")]


def cxx_flags(with_cuda: bool) -> list[str]:
    return list(CXX_FLAGS) + ([f"-D{CUDA_DEFINE}=1"] if with_cuda else [])


def nvcc_flags(root: str) -> list[str]:
    return list(NVCC_FLAGS) + [f"-D{CUDA_DEFINE}=1", f"-I{os.path.join(root, 'csrc', 'include')}"]


def source_hash(root: str, with_cuda: bool) -> str:
    """A digest of every shipped file's name and bytes and of the flags: a JIT cache folder is
    reused only for exactly these sources, built exactly this way."""
    h = hashlib.sha256(repr((CXX_FLAGS, NVCC_FLAGS, LINK_FLAGS, with_cuda)).encode())
    for rel in shipped_files(root):
        h.update(rel.encode() + b"\0")
        with open(os.path.join(root, rel), "rb") as f:
            h.update(f.read() + b"\0")
    return h.hexdigest()[:16]


def isa_levels() -> list[str]:
    """The CPU instruction sets compiled in (csrc/cpu/scan_dispatch.cpp picks one at run time)."""
    x86 = platform.machine().lower() in ("x86_64", "amd64", "i386", "i686")
    return ["generic", "avx2", "avx512"] if x86 else ["generic"]


def default_jobs() -> int:
    """Parallel compiler jobs when MAX_JOBS is not set: the CPUs this process may use (ninja's
    own default, CPUs + 2, only adds memory pressure on a small machine)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def ninja_dir() -> str | None:
    """A folder to put on PATH so that torch finds ``ninja``: None when it is on PATH already,
    else the ``ninja`` PyPI package's (a venv used without activating it has it, off PATH)."""
    if shutil.which("ninja"):
        return None
    try:
        import ninja  # noqa: PLC0415
    except ImportError:
        return None
    folder = getattr(ninja, "BIN_DIR", "")   # "" when the package cannot find its executable
    return folder if folder and shutil.which("ninja", path=folder) else None


def find_nvcc(cuda_home: str | None) -> str | None:
    """nvcc on PATH, else in torch's CUDA_HOME (``torch.utils.cpp_extension.CUDA_HOME``)."""
    nvcc = shutil.which("nvcc") or (os.path.join(cuda_home, "bin", "nvcc") if cuda_home else None)
    return nvcc if nvcc and os.path.exists(nvcc) else None


def compiler_version(cxx: str) -> str:
    """The first line of ``cxx --version`` (e.g. 'g++ (Debian 12.2.0-14) 12.2.0'), or the name."""
    try:
        out = subprocess.run([cxx, "--version"], capture_output=True, text=True, timeout=30)
        return out.stdout.splitlines()[0].strip() if out.stdout else cxx
    except (OSError, subprocess.SubprocessError):
        return cxx


def make_info(*, torch_version: str, cuda: str | None, cxx: str, built_by: str, path: str,
              version: str, source_digest: str) -> dict:
    """The build record kept beside the shared object (``INFO_FILE``): a prebuilt extension is
    imported only when its ``torch`` (and ``cuda``) equal the running torch's."""
    return {"rnnkernels": version, "torch": torch_version, "cuda": cuda,
            "compiler": compiler_version(cxx), "isa": isa_levels(), "built_by": built_by,
            "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "path": path,
            "sources": source_digest}


def write_info(folder: str, info: dict) -> str:
    """Write ``info`` to ``folder/INFO_FILE`` atomically (a reader never sees half a file)."""
    path = os.path.join(folder, INFO_FILE)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        json.dump(info, f, indent=1, sort_keys=True)
        f.write("\n")
    os.replace(tmp, path)
    return path


def read_info(folder: str) -> dict | None:
    """The build record in ``folder``, or None when there is none (or it is unreadable)."""
    try:
        with open(os.path.join(folder, INFO_FILE)) as f:
            info = json.load(f)
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None
