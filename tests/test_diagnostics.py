"""``python -m rnnkernels`` (rnnkernels/diagnostics.py): the report a user pastes into a bug.

The real command runs once in a subprocess (the way a user meets it) and must describe this
installation truthfully and pass its self-check; in-process cases check that an unavailable
backend shows its reason and that a wrong kernel makes the self-check fail with exit status 1.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import rnnkernels
from rnnkernels import __main__ as cli
from rnnkernels import backends, diagnostics
from rnnkernels.backends import config, reference

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def json_report():
    proc = subprocess.run([sys.executable, "-m", "rnnkernels", "--json"], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    return proc.returncode, proc.stdout, proc.stderr


def test_json_report_describes_this_installation(json_report):
    code, out, err = json_report
    assert code == 0, err
    rep = json.loads(out)   # the whole of stdout is one JSON object
    assert rep["rnnkernels"] == {"version": rnnkernels.__version__,
                                 "path": str(ROOT / "rnnkernels")}
    assert rep["torch"]["version"] == torch.__version__
    assert rep["torch"]["threads"] >= 1 and rep["python"]["version"] == sys.version.split()[0]
    assert rep["triton"]["version"] or rep["triton"]["error"]
    assert set(rep["machine"]["cpu"]) >= {"model", "count", "isa"}
    assert [s["env"] for s in rep["settings"]] == [s.env for s in config.SETTINGS.values()]
    cpu = rep["backends"]["cpu"]
    assert cpu["present"] and set(cpu["backends"]) == set(backends.NAMES)
    assert [n for n, b in cpu["backends"].items() if b["available"]] == \
        rnnkernels.available_backends("cpu")
    for b in cpu["backends"].values():
        assert b["available"] == (b["reason"] is None) and (b["reason"] or b["dtypes"])
    assert rep["backends"]["cuda"]["present"] == torch.cuda.is_available()
    ext = rep["extension"]
    assert ext["available"] == (backends.why_not("cpu", "cpu", torch.float32) is None)
    if ext["available"]:
        assert Path(ext["path"]).exists() and set(ext["options"]) == set(config.EXTENSION_OPTIONS)


def test_json_report_self_check_passed(json_report):
    rep = json.loads(json_report[1])
    sc = rep["self_check"]
    assert rep["ok"] and sc["passed"]
    checked = {c["backend"] for c in sc["cases"] if c["device"] == "cpu"}
    skipped = {s["backend"] for s in sc["skipped"] if s["device"] == "cpu"}
    # every available CPU backend is checked, except Triton's interpreter (skipped, said so)
    assert checked | skipped == set(rnnkernels.available_backends("cpu"))
    assert skipped <= {"triton"} and "reference" in checked
    for c in sc["cases"]:
        assert c["status"] == "PASS" and 0 <= c["max_abs_diff"] <= sc["tolerance"], c
    modules = {c["module"] for c in sc["cases"]}
    assert {"LSTM", "GRU", "RNN"} <= modules and any(m.endswith("Cell") for m in modules)


def test_import_rnnkernels_does_not_import_diagnostics():
    code = ("import sys, rnnkernels; "
            "assert 'rnnkernels.diagnostics' not in sys.modules, 'diagnostics imported'")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr


def _only_reference(monkeypatch, reason="pretend it failed to build"):
    real = backends.why_not
    monkeypatch.setattr(backends, "why_not", lambda name, dev, dt: real(name, dev, dt)
                        if name == "reference" else reason)


def test_unavailable_backend_shows_its_reason(monkeypatch):
    _only_reference(monkeypatch)
    rep = diagnostics.report(check=True)
    cpu = rep["backends"]["cpu"]
    assert cpu["backends"]["cpu"] == {"available": False, "reason": "pretend it failed to build",
                                      "dtypes": []}
    assert cpu["auto"] == "reference"
    assert {c["backend"] for c in rep["self_check"]["cases"]} == {"reference"}
    text = diagnostics.format_report(rep)
    assert "    cpu        no   pretend it failed to build" in text


def test_wrong_kernel_fails_the_self_check(monkeypatch, capsys):
    """A reference RNN forward that is off by 1e-3 must turn into FAIL and exit status 1."""
    _only_reference(monkeypatch)
    real = reference.rnn_forward

    def off(*args, **kwargs):
        out, h_n = real(*args, **kwargs)
        return out + 1e-3, h_n

    monkeypatch.setattr(reference, "rnn_forward", off)
    assert cli.main([]) == 1
    text = capsys.readouterr().out
    rnn = [line for line in text.splitlines() if line.strip().startswith("RNN-relu")]
    assert len(rnn) == 1 and "FAIL" in rnn[0] and "out0" in rnn[0]
    assert "3 passed, 1 failed" in text


def test_no_check(capsys):
    assert cli.main(["--no-check", "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["self_check"] is None and rep["ok"]


def test_invalid_setting_is_reported_not_raised(monkeypatch):
    monkeypatch.setenv("RNNKERNELS_BACKEND", "fastest")
    rows = {s["env"]: s for s in diagnostics.settings()}
    assert rows["RNNKERNELS_BACKEND"]["value"] is None
    assert "RNNKERNELS_BACKEND='fastest' is not one of" in rows["RNNKERNELS_BACKEND"]["error"]
    assert "is not one of" in diagnostics.backend_table()["cpu"]["auto"]
