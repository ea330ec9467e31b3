"""What was measured: the fields every JSONL record carries besides its measurement, and the loud
warnings when the rnnkernels being measured is not the one a user thinks it is.

Two ways to measure the wrong thing without noticing, both found by users:

* the imported ``rnnkernels`` lacks its compiled backends: e.g. a clone with a non-editable
  install, run from the clone's root, imports the clone's ``rnnkernels/`` (the current directory
  comes first on ``sys.path``), which has no ``_C`` library; the ``cpu`` provider then silently
  disappears from the table;
* the imported ``rnnkernels`` is not this checkout's (an installed copy of another version).

Each is printed to stderr once, as a banner, and kept in every record's ``warnings``.
"""
from __future__ import annotations

import functools
import importlib
import sys
from pathlib import Path

import torch

from . import harness as H

# Version of the record format (bench/README.md, "Output files"). 2: ``schema``, ``threads``,
# ``rnnkernels`` and ``warnings`` at the top level (``env`` lost ``torch_threads`` and
# ``rnnkernels``, now there).
SCHEMA = 2
CHECKOUT_PACKAGE = (H.REPO / "rnnkernels").resolve()


def _extension(rk) -> dict:
    """The compiled extension's build info, as ``python -m rnnkernels`` reports it (a package too
    old to have ``diagnostics`` gives only whether the cpu backend loads, and why not)."""
    try:
        return importlib.import_module(f"{rk.__name__}.diagnostics").extension_info()
    except ImportError:
        pass
    try:
        reason = rk.backends.why_not("cpu", "cpu", torch.float32)
    except Exception as exc:  # not the rnnkernels this bench knows
        reason = f"cannot ask it: {type(exc).__name__}: {exc}"
    return {"available": reason is None, "error": reason}


@functools.lru_cache(maxsize=None)
def rnnkernels_info() -> dict:
    """{version, path, extension, warnings} of the rnnkernels the benchmark imports."""
    rk, reason = H.import_rnnkernels()
    if rk is None:
        return {"version": None, "path": None, "extension": None,
                "warnings": [f"rnnkernels cannot be imported ({reason}): only torch.nn is "
                             "measured"]}
    path = Path(getattr(rk, "__file__", "") or ".").resolve().parent
    info = {"version": getattr(rk, "__version__", "unknown"), "path": str(path),
            "extension": _extension(rk), "warnings": []}
    if not info["extension"].get("available"):
        info["warnings"].append(
            f"the imported rnnkernels ({path}) has no compiled backends, so the cpu/cuda "
            f"providers are missing: {info['extension'].get('error')}. Build it in place with "
            "`pip install --no-build-isolation -e .` (a non-editable install is shadowed by "
            "the checkout's rnnkernels/ when run from the checkout's root)")
    if path != CHECKOUT_PACKAGE:
        info["warnings"].append(
            f"the imported rnnkernels is {path}, not this checkout's {CHECKOUT_PACKAGE}: the "
            "results describe that copy (version "
            f"{info['version']}), not the code next to this benchmark")
    return info


def warn() -> list[str]:
    """Print the warnings of :func:`rnnkernels_info` to stderr, loudly; returns them."""
    warnings = rnnkernels_info()["warnings"]
    if warnings:
        bar = "!" * 100
        body = "\n".join(f"WARNING: {w}" for w in warnings)
        print(f"{bar}\n{body}\n{bar}", file=sys.stderr, flush=True)
    return warnings


def stamp(rec: dict) -> dict:
    """``rec`` with the fields every record carries: ``schema``, ``threads`` (torch's intra-op
    threads when it was written), ``rnnkernels`` {version, path, extension} and ``warnings``."""
    info = rnnkernels_info()
    rec.update(schema=SCHEMA, threads=torch.get_num_threads(),
               rnnkernels={k: v for k, v in info.items() if k != "warnings"},
               warnings=info["warnings"])
    return rec
