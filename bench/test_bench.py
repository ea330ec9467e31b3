"""pytest-benchmark view of the same configs as ``python -m bench.run``.

    pytest bench/ --benchmark-only                       # time (quick suite on CPU, full on GPU)
    pytest bench/ --benchmark-only --benchmark-autosave  # keep a baseline in .benchmarks/
    pytest bench/ --benchmark-only --benchmark-compare   # ... and compare against the last one
    pytest bench/ --benchmark-disable                    # smoke: every case runs once, checked

One test per config × cell × mode × provider, grouped per config-cell-mode so the comparison
table puts torch.nn and the kernels side by side. Each test first runs the timed step once and
asserts it matches torch.nn (same weights, inputs and upstream grads) within the tolerance of the
dtype, so a fast wrong kernel fails instead of posting a good time. Environment knobs:
``RNNKERNELS_BENCH_SUITE`` (quick|full; default quick on CPU, full on CUDA),
``RNNKERNELS_BENCH_DTYPE`` (default float32), ``RNNKERNELS_BENCH_CONFIGS`` (comma list of
name patterns). These files are outside the default test run (testpaths = tests).
"""
from __future__ import annotations

import dataclasses
import functools
import os

import pytest
import torch

from bench import configs as C
from bench import harness as H
from bench import measure as M

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
SUITE = os.environ.get("RNNKERNELS_BENCH_SUITE") or ("full" if DEVICE.type == "cuda" else "quick")
DTYPE = H.DTYPES[os.environ.get("RNNKERNELS_BENCH_DTYPE", "float32")]
PATTERNS = [p for p in os.environ.get("RNNKERNELS_BENCH_CONFIGS", "").split(",") if p] or None

M.configure_precision(DEVICE, allow_tf32=False)
SMOKE_T = 12


def _benchmarks_disabled(config) -> bool:
    session = getattr(config, "_benchmarksession", None)   # pytest-benchmark's own verdict
    if session is not None:
        return bool(session.disabled)
    return bool(config.getoption("benchmark_disable", default=False))


def pytest_generate_tests(metafunc):
    """One case per config × cell × mode × provider. Under --benchmark-disable (the smoke run)
    every config is cut to T <= 12 steps, same batch, sizes, layers, directions and packing: the
    same code paths, checked the same way, in seconds instead of minutes."""
    if "cfg" not in metafunc.fixturenames:
        return
    smoke = _benchmarks_disabled(metafunc.config)
    params = []
    for cfg in C.select(PATTERNS, SUITE):
        if smoke and cfg.T > SMOKE_T:
            cfg = dataclasses.replace(cfg, name=f"{cfg.name}@T{SMOKE_T}", T=SMOKE_T)
        providers = [p for p in H.available_providers(DEVICE, DTYPE, timing=True)
                     if p != "reference" or (cfg.reference and DEVICE.type == "cpu")]
        for cell in C.CELLS:
            for mode in C.MODES:
                for prov in providers:
                    params.append(pytest.param(cfg, cell, mode, prov,
                                               id=f"{cfg.name}-{cell}-{mode}-{prov}"))
    metafunc.parametrize("cfg,cell,mode,provider", params)


@functools.lru_cache(maxsize=4)
def _case(cfg: C.Config, cell: str) -> H.Case:
    # Small cache: the tests of one config-cell run consecutively (parametrize order), and a
    # case holds torch.nn's reference outputs and grads, which is memory on a full GPU sweep.
    return H.prepare_case(cfg, cell, DEVICE, DTYPE, seed=0)


def test_rnn(benchmark, cfg, cell, mode, provider):
    case = _case(cfg, cell)
    module, step, err = H.checked_step(case, provider, mode)
    assert err["ok"], (f"{provider} {cell} {mode} on {cfg.name}: {err['metric']} "
                       f"{err['worst']:.3e} > {err['tol']:.0e} at {err['worst_of']}")
    benchmark.group = f"{cfg.name}-{cell}-{mode}-{H.dtype_name(DTYPE)}"
    benchmark.extra_info.update(config=cfg.to_dict(), provider=provider,
                                dtype=H.dtype_name(DTYPE), device=DEVICE.type,
                                error=err, env=M.environment(DEVICE.type))
    if DEVICE.type == "cuda":
        def fn():
            step()
            torch.cuda.synchronize()
    else:
        fn = step
    benchmark(fn)


def test_rnnkernels_is_importable():
    """Without the package only torch.nn would be 'benchmarked': make that a failure."""
    rk, reason = H.import_rnnkernels()
    assert rk is not None, reason
