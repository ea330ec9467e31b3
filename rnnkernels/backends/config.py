"""Every environment variable and process-wide option of the backends, in one table.

Nothing else in ``rnnkernels`` reads ``os.environ`` (the build switches of ``setup.py`` and the
test/benchmark variables of ``tests/`` and ``bench/`` are documented where they are read). The
table is rendered into ``docs/BACKENDS.md`` ("Settings"); a test checks the two agree.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass


@dataclass(frozen=True)
class Setting:
    key: str                 # the name code uses: config.get("backend")
    env: str                 # the environment variable that sets it
    default: str
    values: tuple[str, ...]  # the accepted values; empty = any
    doc: str

    def read(self) -> str:
        """The value from the environment (the default when unset or empty), validated."""
        got = _raw_environ(self.env)
        if got is not _NO_FAST_READ:
            hit = _validated.get((self.env, got))
            if hit is not None:
                return hit
        raw = (os.environ.get(self.env, "") if got is _NO_FAST_READ else
               "" if got is None else os.environ.decodevalue(got)).strip() or self.default
        if self.values and raw not in self.values:
            raise ValueError(f"{self.env}={raw!r} is not one of {self.values}")
        if got is not _NO_FAST_READ:
            _validated[(self.env, got)] = raw
        return raw


# ``RNNKERNELS_BACKEND`` is read on every call of a module under ``auto`` (a variable set or
# changed at any time takes effect at the next call), where ``os.environ.get`` costs ~1.5 µs (it
# encodes the key and decodes the value): as much as the rest of a cell call's routing. So the
# raw value is looked up in the dict behind ``os.environ`` (``_data``, keyed by ``encodekey``;
# CPython's ``os._Environ`` since 3.2, which ``os.environ``'s own methods update) and each raw
# value's validated string is kept. Anywhere that dict is missing, ``os.environ.get`` it is.
_NO_FAST_READ = object()
_ENV_DATA = getattr(os.environ, "_data", None)
_ENV_KEYS: dict[str, object] = {}
_validated: dict[tuple[str, object], str] = {}


def _raw_environ(name: str):
    """The raw (encoded) value of ``name`` in the environment, None when unset, or
    ``_NO_FAST_READ`` where this Python has no raw dict to look in. (torch.compile's Dynamo
    never traces this: ``get`` is a constant of its graphs, see ``_dynamo_setup.py``.)"""
    if not isinstance(_ENV_DATA, dict):
        return _NO_FAST_READ
    key = _ENV_KEYS.get(name)
    if key is None:
        try:
            key = _ENV_KEYS[name] = os.environ.encodekey(name)
        except Exception:        # not CPython's _Environ
            return _NO_FAST_READ
    return _ENV_DATA.get(key)


BACKEND_NAMES = ("triton", "cuda", "cpu", "reference")   # the registry's order (backends/)
TORCH_ROUTE = "torch"     # not a scan backend: functional hands the whole call to torch's own RNN

SETTINGS: dict[str, Setting] = {s.key: s for s in (
    Setting("backend", "RNNKERNELS_BACKEND", "auto", ("auto",) + BACKEND_NAMES + (TORCH_ROUTE,),
            "replaces a module's backend='auto' (never an explicit backend=...)"),
    Setting("plan", "RNNKERNELS_PLAN", "on", ("on", "off"),
            "on = backend='auto' hands a call to torch's own RNN where the measured plan "
            "(rnnkernels/plans/) says torch's kernel is faster; off = never for speed"),
    Setting("triton_strategy", "RNNKERNELS_TRITON_STRATEGY", "auto",
            ("auto", "step", "persistent", "persistent-grid", "resident"),
            "the Triton launch strategy (the context manager backends.triton.strategy wins)"),
    Setting("triton_graphs", "RNNKERNELS_TRITON_GRAPHS", "1", ("0", "1", "false", "true"),
            "CUDA-graph replay of the Triton 'step' strategy from a signature's second call"),
    Setting("triton_interpret", "TRITON_INTERPRET", "0", (),
            "Triton's own switch, 1 = run Triton kernels in its CPU interpreter (read once, at "
            "the first import of triton; tests only)"),
    Setting("cpu_isa", "RNNKERNELS_CPU_ISA", "auto", ("auto", "avx512", "avx2", "generic"),
            "the CPU kernels' instruction set (read by the compiled extension at load; "
            "compiled.option('cpu_isa', ...) changes it later)"),
    Setting("no_jit", "RNNKERNELS_NO_JIT", "0", ("0", "1", "false", "true"),
            "1 = never build rnnkernels._C on first use (without a usable prebuilt one the cpu and "
            "cuda backends are then unavailable, with the reason)"),
    Setting("cache_dir", "RNNKERNELS_CACHE_DIR", "$XDG_CACHE_HOME/rnnkernels", (),
            "where the first-use build of rnnkernels._C is kept, one folder per rnnkernels, "
            "torch, CUDA, Python and source version"),
    Setting("xdg_cache_home", "XDG_CACHE_HOME", "~/.cache", (),
            "the XDG base directory of caches, the default parent of RNNKERNELS_CACHE_DIR"),
    Setting("build_jobs", "MAX_JOBS", "cpus", (),
            "torch's own: parallel compiler jobs of an extension build (setup.py's and the "
            "first-use build); cpus = the CPUs this process may use"),
)}

# Process-wide options of the compiled extension, set with compiled.set_option / compiled.option
# (tests and benchmarks force each path with them). Checked by the extension itself.
EXTENSION_OPTIONS: dict[str, str] = {
    "cpu_path": "auto, gemm, fused: the CPU scan's path (GEMM per step, or the fused kernels)",
    "cuda_path": "auto, step, persistent: the CUDA scan's kernel",
    "cpu_isa": "auto, avx512, avx2, generic: the CPU kernels' instruction set",
    "cpu_pool_mb": "integer >= 0: MiB of large CPU outputs kept for reuse (default 512)",
    "poison": "0, 1: fill every buffer the extension allocates with NaN (tests)",
}


def get(key: str) -> str:
    """The current value of setting ``key`` (read from the environment each call)."""
    return SETTINGS[key].read()


def flag(key: str) -> bool:
    """A boolean setting: on for 1/true/yes/on (any case), the values triton's own knobs accept."""
    return get(key).lower() in ("1", "true", "yes", "on", "y")


def cache_dir() -> str:
    """The folder of the first-use builds: ``RNNKERNELS_CACHE_DIR``, where ``$XDG_CACHE_HOME``
    (by default ``~/.cache``) may stand for that directory, with ``~`` expanded."""
    path = get("cache_dir").replace("$XDG_CACHE_HOME", get("xdg_cache_home"))
    return os.path.abspath(os.path.expanduser(path))


@contextlib.contextmanager
def build_environment(cpus: int, ninja_dir: str | None):
    """The environment torch's ``cpp_extension`` reads during a build: ``MAX_JOBS`` (the
    ``build_jobs`` setting, ``cpus`` for its default) and, when given, ``ninja_dir`` first on
    ``PATH`` (torch runs ``ninja`` from PATH). Restored afterwards."""
    jobs = get("build_jobs")
    changes = {"MAX_JOBS": str(cpus) if jobs == "cpus" else jobs}
    if ninja_dir:
        changes["PATH"] = ninja_dir + os.pathsep + os.environ.get("PATH", "")
    saved = {k: os.environ.get(k) for k in changes}
    os.environ.update(changes)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def table() -> str:
    """The settings as a markdown table (what docs/BACKENDS.md shows)."""
    rows = ["| environment | default | values | what it does |", "|---|---|---|---|"]
    for s in SETTINGS.values():
        rows.append(f"| `{s.env}` | `{s.default}` | {', '.join(s.values) or 'any'} | {s.doc} |")
    rows += ["", "| extension option | values and effect |", "|---|---|"]
    rows += [f"| `{k}` | {v} |" for k, v in EXTENSION_OPTIONS.items()]
    return "\n".join(rows)
