"""The backend registry, the cell table and the settings table: the facts other layers read.

* every backend provides the ``Backend`` protocol with the reference's argument names;
* each ``CellSpec``'s fake shapes equal what every CPU backend really returns (forward and
  backward, with and without saved workspaces), so a spec that drifts from the kernels fails;
* ``docs/BACKENDS.md`` shows the settings table ``backends/config.py`` defines;
* the CI gate (``RNNKERNELS_REQUIRE_BACKENDS``) reports a backend that cannot run.
"""
from __future__ import annotations

import inspect
import pathlib

import pytest
import torch

import rnnkernels
from rnnkernels import backends
from rnnkernels.backends import config
from rnnkernels.cells import CELLS, acc_dtype
from tests.backend_cases import Case
from tests.conftest import missing_required_backends
from tests.helpers import backend_params

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCAN_FUNCTIONS = [f"{c}_{d}" for c in ("lstm", "gru", "rnn") for d in ("forward", "backward")]


@pytest.mark.parametrize("name", backends.NAMES)
def test_every_backend_has_the_protocol(name):
    """Importable everywhere (a missing triton or _C is a reason from supports(), not an
    ImportError), with the six functions under the reference's argument names (its
    keyword-only extras, the workspace gradients of a double backward, are the reference's
    alone)."""
    backend = backends.get(name)
    assert backend.NAME == name
    reason = backend.supports("cpu", torch.float32)
    assert reason is None or isinstance(reason, str)
    ref = backends.get("reference")

    def positional(fn):
        return [p.name for p in inspect.signature(fn).parameters.values()
                if p.kind != p.KEYWORD_ONLY]

    for fn in SCAN_FUNCTIONS:
        want = positional(getattr(ref, fn))
        got = positional(getattr(backend, fn))
        assert got == want, f"{name}.{fn}{got} differs from the contract {want}"


def test_get_and_resolve_errors(monkeypatch):
    with pytest.raises(ValueError, match="unknown rnnkernels backend 'nope'"):
        backends.get("nope")
    with pytest.raises(ValueError, match="nope"):
        backends.resolve("nope", "cpu", torch.float32)
    monkeypatch.setenv("RNNKERNELS_BACKEND", "reference")
    assert backends.resolve("auto", "cpu", torch.float32) == "reference"
    assert backends.resolve("cpu" if "cpu" in backends.available_backends("cpu") else "reference",
                            "cpu", torch.float32) != "auto"
    with pytest.raises(RuntimeError, match="'cuda' cannot run this case"):
        backends.resolve("cuda", "cpu", torch.float32)


@pytest.mark.parametrize("save", [True, False], ids=["save", "nosave"])
@pytest.mark.parametrize("cell", ["LSTM", "LSTM-proj", "GRU", "RNN-tanh"])
@pytest.mark.parametrize("backend", backend_params(torch.float32))
def test_cell_spec_fake_shapes_match_the_kernels(backend, cell, save):
    case = Case(cell, 5, 3, 7, "unsorted", True, torch.float32, "cpu")
    spec = CELLS[case.kind]
    impl = backends.get(backend)
    real = case.forward(impl, save=save)
    fake = spec.fake_forward(case.xp, case.h0, save)
    assert [(t.shape, t.dtype) for t in real] == [(t.shape, t.dtype) for t in fake]
    if not save and spec.workspaces:
        return
    real_b = case.backward(impl, case.forward(impl, save=True))
    fake_b = spec.fake_backward(case.gout, case.h0, case.w_hh, case.w_hr)
    assert len(real_b) == len(fake_b)
    for r, f in zip(real_b, fake_b):
        assert r.dtype == f.dtype
        assert r.shape == f.shape or (r.numel() == 0 and f.numel() == 0)


def test_cell_table_facts():
    assert {c: s.gates for c, s in CELLS.items()} == {"lstm": 4, "gru": 3, "rnn": 1}
    assert acc_dtype(torch.bfloat16) == torch.float32 and acc_dtype(torch.float64) == torch.float64
    x = torch.arange(12.0).view(1, 12)
    assert torch.equal(CELLS["lstm"].gate_block(x, "o"), x[:, 9:])
    assert torch.equal(CELLS["gru"].gate_block(x, "z"), x[:, 4:8])


def test_settings_table_is_documented():
    doc = (ROOT / "docs" / "BACKENDS.md").read_text()
    assert config.table() in doc, ("docs/BACKENDS.md must contain rnnkernels.backends.config."
                                   "table() verbatim (regenerate its Settings section)")


def test_settings_are_validated(monkeypatch):
    monkeypatch.setenv("RNNKERNELS_TRITON_STRATEGY", "fastest")
    with pytest.raises(ValueError, match="RNNKERNELS_TRITON_STRATEGY='fastest'"):
        config.get("triton_strategy")
    monkeypatch.setenv("RNNKERNELS_TRITON_STRATEGY", "")
    assert config.get("triton_strategy") == "auto"


def test_no_module_reads_the_environment_but_config():
    offenders = [str(p.relative_to(ROOT)) for p in (ROOT / "rnnkernels").rglob("*.py")
                 if p.name != "config.py" and ("os.environ" in p.read_text()
                                               or "getenv" in p.read_text())]
    assert not offenders, f"read settings through rnnkernels.backends.config: {offenders}"


def test_required_backend_gate_reports_a_missing_backend(monkeypatch):
    """The CI gate itself can fail: a required backend whose supports() says no is reported."""
    monkeypatch.setenv("RNNKERNELS_REQUIRE_BACKENDS", "reference,cpu")
    monkeypatch.setattr(backends, "why_not",
                        lambda name, dev, dt: "pretend it failed to build" if name == "cpu"
                        else None)
    assert missing_required_backends() == ["cpu (cpu): pretend it failed to build"]
    monkeypatch.setenv("RNNKERNELS_REQUIRE_BACKENDS", "reference,nope")
    assert "nope: not a backend" in missing_required_backends()[0]


def test_available_backends_lists_only_runnable():
    names = rnnkernels.available_backends("cpu")
    assert "reference" in names and "cuda" not in names
