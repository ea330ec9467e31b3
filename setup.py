"""Build steps of rnnkernels (its metadata is in pyproject.toml): the C++/CUDA extension
``rnnkernels._C`` ahead of time when torch is importable, and the extension's sources inside the
package so that it can be built on first use otherwise.

    pip install --no-build-isolation -e .     # torch installed first: _C is built now (Makefile)
    pip install .  /  pip install rnnkernels  # isolated build, no torch: _C is built on first use

Why two paths: torch cannot be a build requirement (an isolated build would download an unpinned,
multi-GB torch that is not the one the package runs with), so only a build that sees the user's
torch (``--no-build-isolation``) can compile the extension ahead of time. Every other install
ships the sources (``build_py`` copies them to ``rnnkernels/_sources/``; MANIFEST.in puts them in
the sdist), and ``rnnkernels/backends/jit_build.py`` compiles them for the running torch the
first time a compiled backend is needed. Sources and flags are defined once, in
``rnnkernels/backends/build_spec.py``, which both builders read.

The extension is built with ninja through ``torch.utils.cpp_extension``: a ``CUDAExtension`` (CPU
+ CUDA backends) when torch was built with CUDA and ``nvcc`` is found, a ``CppExtension`` (CPU
backend only) otherwise. Beside it goes ``rnnkernels/_build_info.json`` (torch and CUDA versions,
compiler, ISA levels, build time): at run time a prebuilt extension is imported only when it was
built for the running torch.

Build switches (read here only): ``RNNKERNELS_NO_EXT=1`` skips the ahead-of-time build (first use
builds it), ``RNNKERNELS_NO_CUDA=1`` builds the CPU-only extension even where CUDA is available,
``MAX_JOBS`` limits ninja's parallel jobs (default: the CPU count). A failed build leaves the
package installable (first use retries and reports why) and is printed here (``pip install -v``
shows it); with ``RNNKERNELS_REQUIRE_EXT=1`` (the Makefile and CI set it) a missing torch or a
failed build fails the installation instead.
"""
from __future__ import annotations

import importlib.util
import os
import sys

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = os.path.dirname(os.path.abspath(__file__))
EXT = "rnnkernels._C"


def _load(rel: str):
    """A standard-library-only module of the package, loaded by its path: the package itself
    (and so torch) must not be imported by an isolated build."""
    name = "_rnnkernels_setup_" + os.path.basename(rel)[:-3]
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, rel))
    module = sys.modules[name] = importlib.util.module_from_spec(spec)  # dataclasses need it
    spec.loader.exec_module(module)
    return module


spec = _load("rnnkernels/backends/build_spec.py")
config = _load("rnnkernels/backends/config.py")       # MAX_JOBS and ninja, as the JIT build
VERSION = _load("rnnkernels/_version.py").__version__


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _say(msg: str) -> None:
    print(f"rnnkernels setup: {msg}", file=sys.stderr, flush=True)


def _required() -> bool:
    return _flag("RNNKERNELS_REQUIRE_EXT")


class BuildPyWithSources(build_py):
    """Also copies the extension's C++/CUDA sources into the package (``rnnkernels/_sources/``,
    the repository's layout) for the first-use build. An editable install needs no copy: the
    package finds them in the repository."""

    def run(self):
        super().run()
        shipped = spec.shipped_files(ROOT)
        if not spec.sources(ROOT, with_cuda=False):
            raise RuntimeError(f"rnnkernels: the C++ sources of rnnkernels._C "
                               f"({', '.join(spec.SOURCE_DIRS)}) are missing from {ROOT}; "
                               "build from a clone or a complete sdist")
        if self.editable_mode:
            return
        dest = os.path.join(self.build_lib, "rnnkernels", spec.SOURCES_FOLDER)
        for rel in shipped:
            target = os.path.join(dest, *rel.split("/"))
            os.makedirs(os.path.dirname(target), exist_ok=True)
            self.copy_file(os.path.join(ROOT, rel), target, preserve_mode=False)


def _extension():
    """(ext_modules, build_ext class) for rnnkernels._C, or ([], None) when it is not to be
    built ahead of time."""
    if _flag("RNNKERNELS_NO_EXT"):
        _say("RNNKERNELS_NO_EXT is set: rnnkernels._C will be built on first use")
        return [], None
    try:
        import torch
        from torch.utils import cpp_extension as ce
    except Exception as exc:  # build isolation without torch, or a broken torch
        msg = (f"torch is not importable here ({exc}): rnnkernels._C will be built on first use "
               "(JIT, 1-2 min, cached). To build it now, install torch first and use "
               "`pip install --no-build-isolation .`")
        if _required():
            raise RuntimeError(f"{msg} (RNNKERNELS_REQUIRE_EXT is set)") from exc
        _say(msg)
        return [], None

    nvcc = spec.find_nvcc(ce.CUDA_HOME)
    with_cuda = torch.version.cuda is not None and nvcc is not None and not _flag(
        "RNNKERNELS_NO_CUDA")
    kwargs = dict(include_dirs=spec.include_dirs(ROOT), extra_link_args=list(spec.LINK_FLAGS))
    sources = spec.sources(ROOT, with_cuda)
    if with_cuda:
        ext = ce.CUDAExtension(EXT, sources, extra_compile_args={
            "cxx": spec.cxx_flags(True), "nvcc": spec.nvcc_flags(ROOT)}, **kwargs)
        _say(f"building rnnkernels._C with CUDA {torch.version.cuda} ({nvcc})")
    else:
        ext = ce.CppExtension(EXT, sources, extra_compile_args={"cxx": spec.cxx_flags(False)},
                              **kwargs)
        why = ("RNNKERNELS_NO_CUDA is set" if _flag("RNNKERNELS_NO_CUDA") else
               "torch has no CUDA" if torch.version.cuda is None else "nvcc not found")
        _say(f"building rnnkernels._C for the CPU only ({why})")
    info = dict(torch_version=torch.__version__, cuda=torch.version.cuda if with_cuda else None,
                cxx=ce.get_cxx_compiler(), built_by="setup.py", version=VERSION,
                source_digest=spec.source_hash(ROOT, with_cuda))

    class BuildExtension(ce.BuildExtension):
        """Writes the build record beside the built extension; a failed compile leaves the
        package installable (the first use then retries and says why)."""

        def run(self):
            try:
                super().run()
            except Exception as exc:  # CompileError, ninja's RuntimeError, a missing compiler...
                if _required():
                    raise
                _say("building rnnkernels._C FAILED; rnnkernels is installed without it and "
                     "tries to build it on first use. "
                     f"Reason: {type(exc).__name__}: {exc}")
                return
            folders = {os.path.dirname(os.path.join(self.build_lib, *EXT.split(".")))}
            if self.inplace:  # editable: the extension was copied into the source tree
                folders.add(os.path.dirname(self.get_ext_fullpath(EXT)))
            name = os.path.basename(self.get_ext_filename(EXT))
            for folder in folders:
                spec.write_info(folder, spec.make_info(path=name, **info))

    return [ext], BuildExtension.with_options(use_ninja=True)


def _requirements(rel: str) -> list[str]:
    with open(os.path.join(ROOT, rel)) as f:
        return [ln.split("#")[0].strip() for ln in f if ln.split("#")[0].strip()]


ext_modules, build_ext = _extension()
cmdclass = {"build_py": BuildPyWithSources}
if build_ext is not None:
    cmdclass["build_ext"] = build_ext

# ninja from PATH, else the `ninja` PyPI package's; one job per CPU unless MAX_JOBS says.
with config.build_environment(spec.default_jobs(), spec.ninja_dir()):
    setup(
        ext_modules=ext_modules,
        cmdclass=cmdclass,
        # Extras (pyproject.toml lists them as dynamic): `dev` is the test/benchmark toolset of
        # the Makefile, kept in one file.
        extras_require={"triton": ["triton>=3.0"], "examples": ["matplotlib"],
                        "dev": _requirements("requirements-dev.txt")},
        zip_safe=False,
    )
