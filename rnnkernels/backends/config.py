"""Every environment variable and process-wide option of the backends, in one table.

Nothing else in ``rnnkernels`` reads ``os.environ`` (the build switches of ``setup.py`` and the
test/benchmark variables of ``tests/`` and ``bench/`` are documented where they are read). The
table is rendered into ``docs/BACKENDS.md`` ("Settings"); a test checks the two agree.
"""
from __future__ import annotations

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
        raw = os.environ.get(self.env, "").strip() or self.default
        if self.values and raw not in self.values:
            raise ValueError(f"{self.env}={raw!r} is not one of {self.values}")
        return raw


BACKEND_NAMES = ("triton", "cuda", "cpu", "reference")   # the registry's order (backends/)
TORCH_ROUTE = "torch"     # not a scan backend: functional hands the whole call to torch's own RNN

SETTINGS: dict[str, Setting] = {s.key: s for s in (
    Setting("backend", "RNNKERNELS_BACKEND", "auto", ("auto",) + BACKEND_NAMES + (TORCH_ROUTE,),
            "replaces a module's backend='auto' (never an explicit backend=...)"),
    Setting("triton_strategy", "RNNKERNELS_TRITON_STRATEGY", "auto",
            ("auto", "step", "persistent", "persistent-grid"),
            "the Triton launch strategy (the context manager backends.triton.strategy wins)"),
    Setting("triton_graphs", "RNNKERNELS_TRITON_GRAPHS", "1", ("0", "1", "false", "true"),
            "CUDA-graph replay of the Triton 'step' strategy from a signature's second call"),
    Setting("triton_interpret", "TRITON_INTERPRET", "0", (),
            "Triton's own switch, 1 = run Triton kernels in its CPU interpreter (read once, at "
            "the first import of triton; tests only)"),
    Setting("cpu_isa", "RNNKERNELS_CPU_ISA", "auto", ("auto", "avx2", "generic"),
            "the CPU kernels' instruction set (read by the compiled extension at load; "
            "compiled.option('cpu_isa', ...) changes it later)"),
)}

# Process-wide options of the compiled extension, set with compiled.set_option / compiled.option
# (tests and benchmarks force each path with them). Checked by the extension itself.
EXTENSION_OPTIONS: dict[str, str] = {
    "cpu_path": "auto, gemm, fused: the CPU scan's path (GEMM per step, or the fused kernels)",
    "cuda_path": "auto, step, persistent: the CUDA scan's kernel",
    "cpu_isa": "auto, avx2, generic: the CPU kernels' instruction set",
    "cpu_pool_mb": "integer >= 0: MiB of large CPU outputs kept for reuse (default 512)",
    "poison": "0, 1: fill every buffer the extension allocates with NaN (tests)",
}


def get(key: str) -> str:
    """The current value of setting ``key`` (read from the environment each call)."""
    return SETTINGS[key].read()


def flag(key: str) -> bool:
    """A boolean setting: on for 1/true/yes/on (any case), the values triton's own knobs accept."""
    return get(key).lower() in ("1", "true", "yes", "on", "y")


def table() -> str:
    """The settings as a markdown table (what docs/BACKENDS.md shows)."""
    rows = ["| environment | default | values | what it does |", "|---|---|---|---|"]
    for s in SETTINGS.values():
        rows.append(f"| `{s.env}` | `{s.default}` | {', '.join(s.values) or 'any'} | {s.doc} |")
    rows += ["", "| extension option | values and effect |", "|---|---|"]
    rows += [f"| `{k}` | {v} |" for k, v in EXTENSION_OPTIONS.items()]
    return "\n".join(rows)
