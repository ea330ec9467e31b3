"""What every example shares: the options ``--backend --device --seed --out --quiet``, building a
recurrent module for a backend, and a plain-print progress report.

The examples need nothing beyond rnnkernels and torch (matplotlib, when installed, adds the
plots). ``--backend torch`` builds the plain ``torch.nn`` modules instead of rnnkernels', for a
side-by-side comparison of the same program on torch's own kernels; every other choice is passed
to rnnkernels as ``backend=`` (``auto``: the fastest that can run on the device).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch import nn

try:
    import rnnkernels
except ImportError:  # running from a source checkout that was not pip-installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import rnnkernels

HERE = Path(__file__).resolve().parent
BACKENDS = ("auto", "torch", "cpu", "cuda", "triton", "reference")


def add_common_args(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--backend", choices=BACKENDS, default="auto",
                   help="rnnkernels backend, or 'torch' for plain torch.nn modules")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=HERE / "out", help="output directory")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    return p


def recurrent(name: str, backend: str, *args, **kwargs) -> nn.Module:
    """``rnnkernels.<name>(*args, backend=backend, **kwargs)``, or ``torch.nn.<name>(*args,
    **kwargs)`` for backend ``torch``: the same parameters and state_dict keys either way."""
    if backend == "torch":
        return getattr(nn, name)(*args, **kwargs)
    return getattr(rnnkernels, name)(*args, backend=backend, **kwargs)


def describe(backend: str, device: torch.device) -> str:
    """The backend as the run's first line shows it."""
    if backend == "torch":
        return "backend=torch (plain torch.nn)"
    return (f"backend={backend} (rnnkernels; available on {device.type}: "
            f"{', '.join(rnnkernels.available_backends(device))})")


class Progress:
    """Prints ``what  step 40/400 (10%)  loss 2.345  12.3 s`` about ten times per run (and at
    the last step): plain lines that read the same in a terminal, a log file or a notebook."""

    def __init__(self, total: int, what: str, quiet: bool = False, times: int = 10):
        self.total, self.what, self.quiet = total, what, quiet
        self.every = max(total // times, 1)
        self.t0 = time.perf_counter()

    def step(self, step: int, **metrics) -> None:
        """Report after ``step`` (0-based) when it is due; ``metrics`` are name=value pairs."""
        done = step + 1
        if self.quiet or (done % self.every and done != self.total):
            return
        shown = "  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                          for k, v in metrics.items())
        print(f"{self.what}  step {done}/{self.total} ({100 * done // self.total}%)  {shown}  "
              f"{time.perf_counter() - self.t0:.1f} s", flush=True)


def pyplot():
    """``matplotlib.pyplot`` drawing to files only (Agg), or None when matplotlib is not
    installed: the plots are an extra, the numbers are printed either way."""
    try:
        import matplotlib
    except ImportError:
        print("matplotlib is not installed: no plot is drawn (pip install matplotlib)")
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt
