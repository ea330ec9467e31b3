"""The Triton backend's six scan functions against the reference backend (the oracle): the
function-level cases of ``tests/triton_cases.py`` (see there for how they run and compare),
inference without workspaces, determinism and the lengths argument.

Ids: ``{cell}-T{T}-B{B}-H{H}[-proj][-rev][-lengths]-{dtype}-{strategy}[-tiles16]``.
"""
import pytest
import torch

from tests.triton_cases import (_REASON, CASES, Case, _check, _compare, _inputs, _run,
                                _run_triton, ref)
from tests.triton_cases import _tf32_off_and_poison  # noqa: F401 - autouse fixture, used here

pytestmark = pytest.mark.skipif(_REASON is not None, reason=f"triton backend: {_REASON}")


# ------------------------------------------------------------------------------------ the tests
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_scan_matches_reference(case):
    _check(case)


@pytest.mark.parametrize("cell", ["LSTM", "GRU", "RNN_TANH"])
def test_inference_without_workspaces(cell):
    """save=False: empty workspaces, the same outputs as with save=True."""
    case = Case(cell, 5, 3, 33, lengths=[5, 2, 4], rev=True, strategy="step",
                proj=17 if cell == "LSTM" else 0)
    x, lengths, grads = _inputs(case)
    fwd, _ = _run_triton(case, x, lengths, grads, save=False)
    rfwd, _ = _run(ref, case, x, lengths, grads)
    n_ws = {"LSTM": 2, "GRU": 2}.get(cell, 0)
    for got, want in zip(fwd[:len(fwd) - n_ws], rfwd):
        _compare("output", got, want, case)
    for ws in fwd[len(fwd) - n_ws:]:
        assert ws.numel() == 0 and ws.dtype == torch.float32


def test_strategies_agree_and_are_deterministic():
    """No atomics: a rerun is bitwise identical. Both strategies do the same arithmetic in the
    same order (bitwise equal in the interpreter; compiled separately on a GPU)."""
    case = Case("LSTM", 5, 3, 33, lengths=[5, 3, 1], rev=True)
    x, lengths, grads = _inputs(case, seed=3)
    runs = []
    for strat in ("persistent", "persistent", "step"):
        case.strategy = strat
        fwd, bwd = _run_triton(case, x, lengths, grads)
        runs.append(list(fwd[:3]) + list(bwd[:3]))
    for a, b, c in zip(*runs):
        assert torch.equal(a, b)
        if torch.cuda.is_available():
            torch.testing.assert_close(a, c, rtol=1e-5, atol=1e-6)
        else:
            assert torch.equal(a, c)


def test_lengths_may_be_int32_or_on_another_device():
    case = Case("RNN_TANH", 4, 3, 33, lengths=[4, 1, 3])
    x, lengths, grads = _inputs(case)
    want, _ = _run_triton(case, x, lengths, grads, save=False)
    got, _ = _run_triton(case, x, lengths.to(torch.int32).cpu(), grads, save=False)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
