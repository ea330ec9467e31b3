"""Smoke tests of the programs in examples/: each trains a tiny model for a few dozen steps on the
CPU and must (a) run end to end through rnnkernels modules, (b) lower its training loss by a
clear margin, and (c) write its outputs. ``--help`` of every script is checked in a subprocess,
the way a user first meets it.

Each runs with ``--backend auto`` (what a user gets) and ``--backend torch`` (plain torch.nn
modules, the comparison every example offers), plus each non-Triton backend named in
``RNNKERNELS_TEST_BACKENDS`` that can run on the CPU. Triton is left out: training loops under its
CPU interpreter would take minutes, and the kernels themselves are covered by the kernel tests.
The examples need nothing beyond rnnkernels and torch: their imports are checked, and the
plotting ones run with matplotlib made unimportable.
"""
from __future__ import annotations

import ast
import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import rnnkernels

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
SCRIPTS = ["char_lm", "classify_packed", "forecast", "seq2seq_reverse", "vanishing_gradients"]


def _backends() -> list[str]:
    raw = os.environ.get("RNNKERNELS_TEST_BACKENDS", "").strip()
    available = rnnkernels.available_backends("cpu")
    named = [n.strip() for n in raw.split(",") if n.strip() in available and n.strip() != "triton"]
    return ["auto", "torch"] + named


BACKENDS = _backends()


def _load(name: str):
    """Import examples/<name>.py as a module (examples/ is a folder of scripts, not a package).
    Its folder goes on sys.path, as it does for ``python examples/<name>.py``: the scripts share
    ``examples/_common.py``."""
    if str(EXAMPLES) not in sys.path:
        sys.path.insert(0, str(EXAMPLES))
    spec = importlib.util.spec_from_file_location(f"rnnkernels_example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True)
def _one_thread():
    # The models are tiny: a second intra-op thread only adds synchronisation, and on a loaded
    # 2-core CI machine spinning OpenMP workers slow every step down several times.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _assert_learns(losses, k: int, min_drop: float, what: str) -> None:
    """Mean of the last k losses is below the mean of the first k by at least min_drop (relative)."""
    assert all(math.isfinite(v) for v in losses), f"{what}: non-finite loss in {losses}"
    first = sum(losses[:k]) / k
    last = sum(losses[-k:]) / k
    assert last < (1 - min_drop) * first, (
        f"{what}: loss did not go down enough: first {k} mean {first:.4f}, last {k} mean "
        f"{last:.4f} (needed < {(1 - min_drop) * first:.4f})")


def _common(tmp_path, backend: str) -> list[str]:
    return ["--device", "cpu", "--backend", backend, "--seed", "0", "--out", str(tmp_path), "--quiet"]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_char_lm(tmp_path, backend, cell):
    result = _load("char_lm").main([
        "--cell", cell, "--embed", "16", "--hidden", "32", "--layers", "2", "--seq-len", "32",
        "--batch", "16", "--steps", "40", "--gen-len", "30", "--prime", "The ",
        *_common(tmp_path, backend)])
    _assert_learns(result["losses"], 5, 0.2, f"char_lm {cell}")
    assert math.isfinite(result["val_loss"])
    sample = (tmp_path / f"char_lm_{cell}_sample.txt").read_text(encoding="utf-8")
    assert sample.startswith("The ") and len(sample.rstrip("\n")) == len("The ") + 30
    state = torch.load(tmp_path / f"char_lm_{cell}.pt", weights_only=False)["state_dict"]
    # the checkpoint uses torch.nn's parameter names, so a plain torch model can load it
    assert "rnn.weight_hh_l1" in state and "rnn.weight_ih_l0" in state


@pytest.mark.parametrize("backend", BACKENDS)
def test_classify_packed(tmp_path, backend):
    mod = _load("classify_packed")
    result = mod.main([
        "--train-size", "1024", "--test-size", "128", "--max-len", "16", "--embed", "16",
        "--hidden", "24", "--batch", "32", "--epochs", "4", "--lr", "1e-2",
        *_common(tmp_path, backend)])
    _assert_learns(result["losses"], 8, 0.4, "classify_packed")
    assert (tmp_path / "classify_packed.txt").exists()
    assert 0.0 <= result["test_accuracy"][-1] <= 1.0


def test_classify_packed_labels_are_exact():
    """The synthetic labels follow the stated rule (sum of polarities, 'not' flips the next word)."""
    import random

    mod = _load("classify_packed")
    tokens, lengths, labels = mod.make_dataset(300, 4, 12, random.Random(1))
    assert int(lengths.min()) >= 4 and int(lengths.max()) <= 12
    assert bool((tokens[torch.arange(12)[None, :] >= lengths[:, None]] == 0).all()), "padding is 0"
    for row, L, label in zip(tokens.tolist(), lengths.tolist(), labels.tolist()):
        words = [mod.VOCAB[t] for t in row[:L]]
        score = 0
        for t, w in enumerate(words):
            pol = (w in mod.POSITIVE) - (w in mod.NEGATIVE)
            score += -pol if t > 0 and words[t - 1] == mod.NEGATOR else pol
        assert score != 0 and label == int(score > 0), words


@pytest.mark.parametrize("backend", BACKENDS)
def test_forecast(tmp_path, backend):
    result = _load("forecast").main([
        "--length", "3000", "--context", "32", "--horizon", "8", "--hidden", "24", "--batch", "32",
        "--steps", "60", "--lr", "1e-2", *_common(tmp_path, backend)])
    _assert_learns(result["losses"], 5, 0.4, "forecast")
    assert result["test_mse"] < result["persistence_mse"]
    if importlib.util.find_spec("matplotlib") is not None:
        assert (tmp_path / "forecast.png").stat().st_size > 10_000


def test_forecast_without_matplotlib(tmp_path, monkeypatch, capsys):
    """The plot is an extra: with matplotlib unimportable the example still runs to the end."""
    for name in ("matplotlib", "matplotlib.pyplot", "tqdm"):
        monkeypatch.setitem(sys.modules, name, None)   # `import name` now raises ImportError
    result = _load("forecast").main([
        "--length", "600", "--context", "16", "--horizon", "4", "--hidden", "8", "--batch", "8",
        "--steps", "3", *_common(tmp_path, "auto")])
    assert len(result["losses"]) == 3 and math.isfinite(result["test_mse"])
    assert not (tmp_path / "forecast.png").exists()
    assert "matplotlib is not installed" in capsys.readouterr().out


def _top_level_imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.skipif(not hasattr(sys, "stdlib_module_names"), reason="Python >= 3.10")
def test_examples_need_nothing_beyond_the_package():
    """Only the standard library, torch, rnnkernels and the shared helper; matplotlib only in
    the helper's optional pyplot()."""
    allowed = set(sys.stdlib_module_names) | {"torch", "rnnkernels", "_common"}
    for path in sorted(EXAMPLES.glob("*.py")):
        extra = _top_level_imports(path) - allowed - ({"matplotlib"} if path.stem == "_common"
                                                      else set())
        assert not extra, f"{path.name} imports {sorted(extra)}, which rnnkernels does not declare"


def test_backend_torch_builds_plain_torch_nn_modules():
    common = _load("_common")
    for name in ("LSTM", "GRU", "RNN", "LSTMCell", "GRUCell", "RNNCell"):
        plain = common.recurrent(name, "torch", 3, 4)
        ours = common.recurrent(name, "auto", 3, 4)
        assert type(plain) is getattr(torch.nn, name)
        assert type(ours) is getattr(rnnkernels, name) and ours.backend == "auto"
        assert plain.state_dict().keys() == ours.state_dict().keys()
    model = _load("seq2seq_reverse").Seq2Seq(8, 4, 6, "gru", "torch")
    assert type(model.encoder) is torch.nn.GRU and type(model.decoder) is torch.nn.GRUCell


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_seq2seq_reverse(tmp_path, backend, cell):
    mod = _load("seq2seq_reverse")
    result = mod.main([
        "--cell", cell, "--symbols", "5", "--min-len", "2", "--max-len", "5", "--embed", "16",
        "--hidden", "32", "--batch", "32", "--steps", "60", "--test-size", "64",
        *_common(tmp_path, backend)])
    _assert_learns(result["losses"], 5, 0.2, f"seq2seq {cell}")
    assert 0.0 <= result["exact_match"] <= 1.0
    assert (tmp_path / f"seq2seq_reverse_{cell}.txt").exists()


def test_seq2seq_reverse_data():
    mod = _load("seq2seq_reverse")
    src, tgt, lengths = mod.make_batch(50, 7, 1, 6, torch.Generator().manual_seed(3))
    for s, t, L in zip(src.tolist(), tgt.tolist(), lengths.tolist()):
        assert s[:L] == t[:L][::-1] and t[L] == mod.EOS
        assert all(v == mod.PAD for v in s[L:] + t[L + 1:])


@pytest.mark.parametrize("backend", BACKENDS)
def test_vanishing_gradients(tmp_path, backend):
    result = _load("vanishing_gradients").main([
        "--seq-len", "6", "--hidden", "16", "--batch", "32", "--steps", "40", "--lr", "1e-2",
        *_common(tmp_path, backend)])
    assert set(result["losses"]) == {"rnn", "lstm", "gru"}
    for kind, losses in result["losses"].items():
        _assert_learns(losses, 5, 0.2, f"vanishing_gradients {kind}")
        grads = result["results"][kind]["grad_init"]
        assert grads.shape == (6,) and bool(torch.isfinite(grads).all()) and bool((grads > 0).all())
    if importlib.util.find_spec("matplotlib") is not None:
        assert (tmp_path / "vanishing_gradients.png").stat().st_size > 10_000


# One fresh interpreter runs every script as __main__ with --help (runpy), so the ~5 s import of
# torch + rnnkernels is paid once, not five times. It starts outside the repository, so a script
# also has to find rnnkernels the way a user's run would (installed, or the checkout fallback).
_HELP_DRIVER = """
import contextlib, io, json, os, runpy, sys
paths, results = sys.argv[1:], {}
for path in paths:
    buf = io.StringIO()
    sys.argv = [path, "--help"]
    sys.path.insert(0, os.path.dirname(path))   # what `python path` does
    code = "returned without exiting"
    with contextlib.redirect_stdout(buf):
        try:
            runpy.run_path(path, run_name="__main__")
        except SystemExit as exc:
            code = exc.code
    results[path] = [code, buf.getvalue()]
print(json.dumps(results))
"""


@pytest.fixture(scope="module")
def help_texts(tmp_path_factory):
    paths = [str(EXAMPLES / f"{name}.py") for name in SCRIPTS]
    proc = subprocess.run([sys.executable, "-c", _HELP_DRIVER, *paths], capture_output=True,
                          text=True, timeout=600, cwd=tmp_path_factory.mktemp("help"))
    assert proc.returncode == 0, proc.stderr
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    return {Path(p).stem: (code, text) for p, (code, text) in results.items()}


@pytest.mark.parametrize("name", SCRIPTS)
def test_help(help_texts, name):
    code, text = help_texts[name]
    assert code in (0, None), f"{name} --help exited with {code!r}"
    assert text.startswith("usage:"), text[:200]
    for flag in ("--backend", "--device", "--seed", "--out", "--quiet"):
        assert flag in text, f"{name} --help lacks {flag}"
    assert "{auto,torch,cpu,cuda,triton,reference}" in text
    assert "--steps" in text or "--epochs" in text
