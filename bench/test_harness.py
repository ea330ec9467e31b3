"""Tests of the benchmark machinery itself: that a wrong provider is caught, that the metrics,
timers and memory probe measure what they claim, and that the runner's outputs are written.
Fast (a few seconds) and CPU-only; part of ``pytest bench/ --benchmark-disable``."""
from __future__ import annotations

import json
import math
import time

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence

from bench import configs as C
from bench import harness as H
from bench import measure as M
from bench import scoring as S
from bench import run as R

CPU = torch.device("cpu")
TINY = C.Config("tiny", T=7, B=3, I=5, H=6, layers=2, bidirectional=True, packed=True,
                suite="quick", reference=True)


def _map_out(out, fn):
    return out._replace(data=fn(out.data)) if isinstance(out, PackedSequence) else fn(out)


class _ShiftedOutput(nn.RNN):
    """Right grads of the weights (shift is constant) but an output off by 1e-3."""

    def forward(self, x, hx=None):
        out, h = super().forward(x, hx)
        return _map_out(out, lambda t: t + 1e-3), h


class _ScaleGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, g):
        return g * (1 + 1e-3)


class _WrongGrad(nn.RNN):
    """Exact outputs, every gradient 0.1% too large: only fwdbwd can catch it."""

    def forward(self, x, hx=None):
        out, h = super().forward(x, hx)
        return _map_out(out, _ScaleGrad.apply), _ScaleGrad.apply(h)


@pytest.fixture
def fake_providers():
    H.EXTRA_PROVIDERS["shifted"] = lambda cls, kw: _ShiftedOutput(**kw)
    H.EXTRA_PROVIDERS["wronggrad"] = lambda cls, kw: _WrongGrad(**kw)
    H.EXTRA_PROVIDERS["clone"] = lambda cls, kw: getattr(nn, cls)(**kw)
    yield
    for k in ("shifted", "wronggrad", "clone"):
        H.EXTRA_PROVIDERS.pop(k, None)


@pytest.mark.parametrize("cell", C.CELLS)
def test_same_weights_give_zero_error(fake_providers, cell):
    case = H.prepare_case(TINY, cell, CPU, torch.float32, seed=3)
    for mode in C.MODES:
        _, _, err = H.checked_step(case, "clone", mode)
        assert err["ok"] and err["worst"] == 0.0, err
    assert "grad.weight_hh_l1_reverse" in case.ref and case.ref["grad.weight_hh_l1_reverse"] \
        .abs().sum() > 0


def test_wrong_output_is_flagged(fake_providers):
    case = H.prepare_case(TINY, "RNN", CPU, torch.float32, seed=0)
    _, _, err = H.checked_step(case, "shifted", "fwd")
    assert not err["ok"] and err["worst_of"] == "output"
    assert err["outputs_max_abs"] == pytest.approx(1e-3, rel=1e-3)


def test_wrong_grad_is_flagged_only_in_training(fake_providers):
    case = H.prepare_case(TINY, "RNN", CPU, torch.float32, seed=0)
    assert H.checked_step(case, "wronggrad", "fwd")[2]["ok"]
    err = H.checked_step(case, "wronggrad", "fwdbwd")[2]
    assert not err["ok"] and err["worst_of"].startswith("grad.")
    assert err["worst"] == pytest.approx(1e-3, rel=0.05)


def test_tensor_error_edge_cases():
    ref = torch.tensor([1.0, -2.0, 0.5])
    assert S.tensor_error(None, ref, torch.float32, False) == math.inf
    assert S.tensor_error(ref[:2], ref, torch.float32, False) == math.inf
    assert S.tensor_error(torch.tensor([1.0, float("nan"), 0.5]), ref, torch.float32, False) \
        == math.inf
    # outputs: abs error scaled by max(1, max|ref|) = 2; grads: relative to max|ref| = 2
    assert S.tensor_error(ref + 0.2, ref, torch.float32, False) == pytest.approx(0.1)
    small = ref * 1e-3
    assert S.tensor_error(small + 1e-5, small, torch.float32, False) \
        == pytest.approx(1e-5, rel=1e-4)
    assert S.tensor_error(small + 1e-5, small, torch.float32, True) == pytest.approx(5e-3, rel=1e-4)
    # half types: relative RMS
    assert S.tensor_error(ref * 1.01, ref, torch.bfloat16, True) == pytest.approx(0.01)


def test_missing_grad_is_flagged():
    ref = {"output": torch.ones(2), "grad.w": torch.ones(2)}
    err = S.compare({"output": torch.ones(2), "grad.w": None}, ref, torch.float32)
    assert not err["ok"] and err["worst_of"] == "grad.w" and err["worst"] == math.inf


def test_time_cpu_respects_budget():
    calls = []
    samples = M.time_cpu(lambda: calls.append(1), M.TimingBudget(warmup=2, min_time=0.0,
                                                                 min_reps=7, max_reps=50))
    assert len(samples) == 7 and len(calls) == 9
    stats = M.summarize([1.0, 2.0, 3.0, 4.0, 5.0])
    assert stats["median"] == 3.0 and stats["p20"] == pytest.approx(1.8) \
        and stats["p80"] == pytest.approx(4.2) and stats["n"] == 5


def test_providers_calls_are_interleaved_in_rotating_order():
    calls = []
    steps = [lambda n=n: calls.append(n) for n in "abc"]
    samples, timer = M.time_steps(steps, torch.device("cpu"),
                                  M.TimingBudget(warmup=1, min_time=0.0, min_reps=3, max_reps=9))
    assert calls == list("abc") + list("abc" "bca" "cab")    # warm-up, then rotating rounds
    assert [len(s) for s in samples] == [3, 3, 3] and "interleaved" in timer
    slow = M.interleaved([lambda: time.sleep(0.002), lambda: None], M.one_call_ms, 2, 2)
    assert min(slow[0]) >= 2.0 > max(slow[1])          # each step's samples are its own


def test_cpu_peak_memory_sees_a_transient_allocation():
    m = nn.Linear(2, 2)

    def fn():
        t = torch.ones(10 * 2**20)   # 40 MiB touched, then freed before returning
        return float(t[-1])

    mem, kind = M.peak_memory(fn, CPU, m)
    if mem is None:
        pytest.skip("this kernel does not allow resetting the peak RSS")
    assert kind == M.CPU_MEMORY_KIND
    assert 36 * 2**20 <= mem <= 80 * 2**20, mem / 2**20


def test_packed_inputs_cover_full_length():
    inp = H.make_inputs(TINY, "LSTM", CPU, torch.float32, seed=5)
    assert int(inp.lengths.max()) == TINY.T and int(inp.lengths.min()) >= 1
    assert inp.x.data.shape == (int(inp.lengths.sum()), TINY.I)
    assert isinstance(inp.hx, tuple) and inp.hx[0].shape == (4, TINY.B, TINY.H)


def test_runner_strict_exit_code_and_outputs(fake_providers, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(C.REGISTRY, "tiny", TINY)
    monkeypatch.setattr(C, "_ALL", C._ALL + [TINY])
    monkeypatch.setattr(H, "import_rnnkernels", lambda: (torch, None))   # any module will do
    base = ["--configs", "tiny", "--cells", "RNN", "--no-validate", "--min-time", "0",
            "--min-reps", "2", "--warmup", "0", "--out", str(tmp_path), "--strict"]
    assert R.main(base + ["--providers", "torch,clone", "--tag", "good"]) == 0
    assert R.main(base + ["--providers", "torch,shifted", "--tag", "bad", "--no-plot"]) == 1
    out = capsys.readouterr().out
    assert "TOL!" in out and "FAILED or are above tolerance" in out
    good = next(tmp_path.glob("cpu-quick-*-good.jsonl"))
    recs = [json.loads(line) for line in good.read_text().splitlines()]
    assert len(recs) == 4   # 2 modes x 2 providers
    r = next(r for r in recs if r["provider"] == "clone" and r["mode"] == "fwdbwd")
    assert r["status"] == "ok" and r["error"]["ok"] and r["time_ms"]["n"] >= 2
    assert r["speedup"] > 0 and r["env"]["torch"] == torch.__version__ and r["env"]["git_sha"]
    assert r["config"]["name"] == "tiny" and r["mem_kind"] == M.CPU_MEMORY_KIND
    assert good.with_suffix(".png").stat().st_size > 1000
