"""Finding the compiled extension for ``backends/compiled.py``: a prebuilt ``rnnkernels._C`` when
it was built for the running torch, else a build on first use (JIT), cached.

Why a check before the import: an extension compiled against another torch fails with undefined
symbols at best and crashes at worst, so a prebuilt ``_C`` is imported only when its build record
(``_build_info.json``, written beside it by ``setup.py``) names the running torch (and CUDA).
Otherwise the sources the package ships (``rnnkernels/_sources/``, or the repository of an
editable install) are compiled with ``torch.utils.cpp_extension.load`` (ninja) into
``config.cache_dir()/<key>/``, the key being (rnnkernels version, torch version, CUDA version or
cpu, Python ABI and machine, digest of the sources and flags): a new torch gets its own build and
never loads another's. Nothing here runs at ``import rnnkernels``; ``compiled.py`` calls ``load()``
the first time a compiled backend is asked whether it can run.

Concurrency: processes that start at once serialize on an ``flock`` of ``<key>.lock`` (released
by the kernel if its holder dies, unlike torch's own lock file, which a killed build leaves
behind: the holder of the flock removes such a stale one); the others wait, then load what the
first one built. A build becomes visible only through its build record, written atomically after
the shared object is complete.
"""
from __future__ import annotations

import contextlib
import importlib
import importlib.util
import os
import platform
import shutil
import sys
import time
from dataclasses import dataclass

import torch

from .. import _version
from . import build_spec as spec
from . import config

PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))   # rnnkernels/
PREBUILT = "rnnkernels._C"
JIT_NAME = "rnnkernels_C"
ERROR_LOG = "build_error.log"   # in a cache folder: its build failed (deleting the folder retries)
REBUILD_HINT = ("`pip install --no-build-isolation .` with this torch installed builds it ahead "
                "of time")


@dataclass(frozen=True)
class Loaded:
    """The outcome of ``load()``: the build record of the extension now registered in torch
    (``path`` = its shared object), or why there is none."""
    info: dict | None
    error: str | None


def _say(msg: str) -> None:
    print(f"rnnkernels: {msg}", file=sys.stderr, flush=True)


def load() -> Loaded:
    """Register the extension's ops (``torch.ops.rnnkernels_C``) once: the prebuilt one if it
    fits the running torch, else the first-use build. Never raises; the error says what to do."""
    info, why_not_prebuilt = _import_prebuilt()
    if info is not None:
        return Loaded(info, None)
    root, why_no_jit = jit_possible()
    if why_not_prebuilt is None:
        why_not_prebuilt = "no prebuilt rnnkernels._C is installed"
    elif why_no_jit is None:  # one is installed but unusable: say why, once, and build instead
        _say(f"{why_not_prebuilt}; using a build for this torch instead")
    if why_no_jit is not None:
        return Loaded(None, f"{why_not_prebuilt}, and {why_no_jit}")
    try:
        return Loaded(_jit(root), None)
    except JitError as exc:
        return Loaded(None, f"{why_not_prebuilt}, and {exc}")


# ------------------------------------------------------------------------------- prebuilt
def mismatch(info: dict | None, where: str) -> str | None:
    """Why the prebuilt extension ``where`` with build record ``info`` must not be imported
    into this process (None: it was built for the running torch)."""
    if info is None:
        return (f"rnnkernels._C at {where} has no build record ({spec.INFO_FILE}), so its torch "
                f"version is unknown: not loaded ({REBUILD_HINT})")
    if info.get("torch") != torch.__version__ or (
            info.get("cuda") is not None and info.get("cuda") != torch.version.cuda):
        cuda = f" with CUDA {info['cuda']}" if info.get("cuda") else ""
        return (f"rnnkernels._C at {where} was built for torch {info.get('torch')}{cuda}, this "
                f"is torch {torch.__version__}: not loaded (it would fail or crash)")
    return None


def _import_prebuilt() -> tuple[dict | None, str | None]:
    """(build record, None) once the prebuilt extension is imported; (None, reason) when one is
    installed but unusable; (None, None) when there is none."""
    found = importlib.util.find_spec(PREBUILT)
    if found is None or not found.origin:
        return None, None
    info = spec.read_info(os.path.dirname(found.origin))
    reason = mismatch(info, found.origin)
    if reason is not None:
        return None, reason
    try:
        importlib.import_module(PREBUILT)  # registers torch.ops.rnnkernels_C.*
    except Exception as exc:  # noqa: BLE001  (an ImportError, an undefined symbol...)
        return None, f"rnnkernels._C at {found.origin} failed to load ({type(exc).__name__}: {exc})"
    return dict(info, path=found.origin), None


# ------------------------------------------------------------------------------------ JIT
class JitError(RuntimeError):
    """The first-use build failed (the message says where the compiler output is)."""


def source_root() -> str | None:
    """Where the extension's sources are: the installed package's ``_sources/``, else the
    repository around the package (editable install, clone); None if neither has them."""
    for root in (os.path.join(PACKAGE_DIR, spec.SOURCES_FOLDER), os.path.dirname(PACKAGE_DIR)):
        if spec.sources(root, with_cuda=False):
            return root
    return None


def jit_possible() -> tuple[str | None, str | None]:
    """(source root, None) when a first-use build may be used (built now, or found in the
    cache), else (None, why not and what to do)."""
    if config.flag("no_jit"):
        return None, f"RNNKERNELS_NO_JIT is set, so it is not built on first use ({REBUILD_HINT})"
    root = source_root()
    if root is None:
        return None, (f"the C++ sources of rnnkernels._C are not in this installation (looked in "
                      f"{os.path.join(PACKAGE_DIR, spec.SOURCES_FOLDER)} and "
                      f"{os.path.dirname(PACKAGE_DIR)}): reinstall rnnkernels from a wheel, an "
                      "sdist or a clone")
    return root, None


def _missing_tool() -> str | None:
    """Why a build cannot start here (no ninja, no compiler), checked before a minute is spent
    finding out; None when both are found."""
    if spec.ninja_dir() is None and shutil.which("ninja") is None:
        return "ninja is not installed, so it cannot be built on first use: `pip install ninja`"
    from torch.utils.cpp_extension import get_cxx_compiler  # noqa: PLC0415  (imports setuptools)
    cxx = get_cxx_compiler()
    if shutil.which(cxx) is None:
        return (f"no C++ compiler ({cxx!r}) is on PATH, so it cannot be built on first use: "
                "install one (e.g. `apt-get install g++`) or set CXX")
    return None


def _variants(root: str) -> list[tuple[bool, str]]:
    """(with_cuda, cache folder) to try in order: a CUDA build first where torch has CUDA and
    nvcc is found, then the CPU-only one."""
    cuda_torch = torch.version.cuda is not None
    if cuda_torch:
        from torch.utils.cpp_extension import CUDA_HOME  # noqa: PLC0415
        cuda_torch = spec.find_nvcc(CUDA_HOME) is not None
    return [(with_cuda, _folder(root, with_cuda)) for with_cuda in
            ((True, False) if cuda_torch else (False,))]


def _folder(root: str, with_cuda: bool) -> str:
    device = f"cu{torch.version.cuda.replace('.', '')}" if with_cuda else "cpu"
    python = f"{sys.implementation.cache_tag}{sys.abiflags}-{platform.machine()}"
    key = (f"{_version.__version__}-torch{torch.__version__}-{device}-{python}-"
           f"{spec.source_hash(root, with_cuda)}")
    return os.path.join(config.cache_dir(), key)


def _jit(root: str) -> dict:
    errors = []
    for with_cuda, folder in _variants(root):
        try:
            return _build_or_reuse(root, with_cuda, folder)
        except JitError as exc:
            errors.append(str(exc))
    raise JitError("; ".join(dict.fromkeys(errors)))  # a missing tool fails both alike


def _complete(folder: str) -> dict | None:
    info = spec.read_info(folder)
    if info and os.path.exists(os.path.join(folder, info.get("path", ""))):
        return info
    return None


def _build_or_reuse(root: str, with_cuda: bool, folder: str) -> dict:
    os.makedirs(folder, exist_ok=True)
    with _exclusive(folder):
        info = _complete(folder)
        if info is None:
            _raise_earlier_failure(folder)
            missing = _missing_tool()
            if missing is not None:
                raise JitError(missing)
            info = _build(root, with_cuda, folder)  # also loads it
        else:
            so = os.path.join(folder, info["path"])
            try:
                torch.ops.load_library(so)
            except Exception as exc:  # noqa: BLE001
                raise JitError(f"the cached build {so} failed to load ({type(exc).__name__}: "
                               f"{exc}); delete {folder} to rebuild it") from exc
    return dict(info, path=os.path.join(folder, info["path"]))


def _raise_earlier_failure(folder: str) -> None:
    """A build of exactly these sources for exactly this torch failed before: say so rather than
    spend minutes failing again in every new process (deleting the folder retries)."""
    log = os.path.join(folder, ERROR_LOG)
    if os.path.exists(log):
        with open(log) as f:
            first = f.readline().strip()
        raise JitError(f"an earlier first-use build failed ({first[:300]}); its full output is "
                       f"in {log}; delete {folder} to retry")


@contextlib.contextmanager
def _exclusive(folder: str):
    """Hold an exclusive ``flock`` on ``<folder>.lock`` (waiting, and saying so, while another
    process builds there); a no-op where ``fcntl`` does not exist."""
    try:
        import fcntl  # noqa: PLC0415
    except ImportError:  # Windows: torch's own lock file is the only guard there
        yield
        return
    with open(folder + ".lock", "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            _say(f"waiting for another process building the C++ extension in {folder}...")
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _build(root: str, with_cuda: bool, folder: str) -> dict:
    from torch.utils import cpp_extension as ce  # noqa: PLC0415
    with contextlib.suppress(FileNotFoundError):  # torch's lock file, left by a killed build:
        os.remove(os.path.join(folder, "lock"))   # we hold the flock, nobody else is building
    what = f"CUDA {torch.version.cuda}" if with_cuda else "the CPU"
    eta = "several minutes" if with_cuda else "1-2 min"
    _say(f"building the C++ extension for torch {torch.__version__} and {what} "
         f"(first use, {eta})...")
    start = time.perf_counter()
    try:
        with config.build_environment(spec.default_jobs(), spec.ninja_dir()):
            so = ce.load(JIT_NAME, [os.path.join(root, s) for s in spec.sources(root, with_cuda)],
                         extra_cflags=spec.cxx_flags(with_cuda),
                         extra_cuda_cflags=spec.nvcc_flags(root) if with_cuda else None,
                         extra_ldflags=list(spec.LINK_FLAGS),
                         extra_include_paths=spec.include_dirs(root), build_directory=folder,
                         with_cuda=with_cuda, is_python_module=False, verbose=False)
    except Exception as exc:  # noqa: BLE001  (a compile error, or a library that fails to load)
        # torch's load_library hides the loader's message (an undefined symbol...) in __cause__
        text = f"{type(exc).__name__}: {exc}" + (f" ({exc.__cause__})" if exc.__cause__ else "")
        log = os.path.join(folder, ERROR_LOG)
        with open(log, "w") as f:
            f.write(text + "\n")
        _say(f"building the C++ extension for {what} FAILED; its output is in {log}")
        raise JitError(f"the first-use build for {what} failed ({text.splitlines()[0][:300]}); "
                       f"its full output is in {log}") from exc
    info = spec.make_info(torch_version=torch.__version__,
                          cuda=torch.version.cuda if with_cuda else None,
                          cxx=ce.get_cxx_compiler(), built_by="jit", path=os.path.basename(so),
                          version=_version.__version__,
                          source_digest=spec.source_hash(root, with_cuda))
    spec.write_info(folder, info)
    _say(f"built in {time.perf_counter() - start:.0f} s, cached at {folder}")
    return info
