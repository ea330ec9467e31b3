"""Test-wide settings. Runs before any test module imports triton or rnnkernels.

``RNNKERNELS_REQUIRE_BACKENDS`` (comma separated; ``.ci/run`` sets ``cpu,reference,triton``) names
backends that MUST be able to run here: the session stops with an error before any test runs when
one cannot, so a failed extension build or a broken triton import can never turn into a green run
of skipped tests.
"""
import os

import pytest
import torch

# Without a GPU, the Triton kernels run (exactly, slowly) in Triton's CPU interpreter. The flag
# must be set before triton decorates any kernel.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# `auto` in the tests runs our kernels: the measured plan (rnnkernels/backends/plan.py) hands some
# shapes to torch's own RNN on some machines, and a test of `auto` would then check torch.nn
# against itself. tests/test_plan.py turns the plan on where it tests it.
os.environ.setdefault("RNNKERNELS_PLAN", "off")

# fp32 comparisons against cuDNN / cuBLAS are made with TF32 off (convention 7).
torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False


def required_backends() -> list[str]:
    raw = os.environ.get("RNNKERNELS_REQUIRE_BACKENDS", "")
    return [n.strip() for n in raw.split(",") if n.strip()]


def missing_required_backends() -> list[str]:
    """'name: reason' for every required backend that cannot run float32 on its device here."""
    from rnnkernels import backends
    missing = []
    for name in required_backends():
        if name not in backends.NAMES:
            missing.append(f"{name}: not a backend (known: {', '.join(backends.NAMES)})")
            continue
        device = "cuda" if name == "cuda" or (name == "triton" and torch.cuda.is_available()) \
            else "cpu"
        why = backends.why_not(name, device, torch.float32)
        if why is not None:
            missing.append(f"{name} ({device}): {why}")
    return missing


def pytest_sessionstart(session):
    missing = missing_required_backends()
    if missing:
        raise pytest.UsageError("RNNKERNELS_REQUIRE_BACKENDS names backends that cannot run "
                                "here:\n  " + "\n  ".join(missing))
