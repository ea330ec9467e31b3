"""NaN and Inf propagate exactly as in torch.nn: a diverged model must not look healthy.

The matrix: every module × CPU backend × where the non-finite value sits (the input, h0, each
weight and bias), outputs, final states and every gradient compared with torch.nn on the same
weights, NaN positions included (``equal_nan``), finite values to fp32 tolerance.
"""
from __future__ import annotations

import pytest
import torch

from tests.helpers import MODES, backend_params, make_twins

F32 = torch.float32
PLACES = ["input", "h0", "weight_ih", "weight_hh", "bias_ih", "bias_hh"]


def _param(module: torch.nn.Module, place: str) -> torch.nn.Parameter:
    name = place if "Cell" in type(module).__name__ else f"{place}_l0"
    return getattr(module, name)


def _run(module, mode: str, x: torch.Tensor, h0: torch.Tensor):
    x = x.clone().requires_grad_()
    h0 = h0.clone().requires_grad_()
    if "Cell" in mode:
        hx = (h0, torch.zeros_like(h0)) if mode.startswith("LSTM") else h0
        y = module(x[0], hx)
    else:
        hx = (h0[None], torch.zeros_like(h0)[None]) if mode.startswith("LSTM") else h0[None]
        y = module(x, hx)
    outs = torch.utils._pytree.tree_leaves(y)
    g = torch.Generator().manual_seed(3)
    loss = sum((o * torch.randn(o.shape, generator=g)).sum() for o in outs)
    loss.backward()
    return outs + [x.grad, h0.grad] + [p.grad for p in module.parameters()]


@pytest.mark.parametrize("value", [float("nan"), float("inf")], ids=["nan", "inf"])
@pytest.mark.parametrize("place", PLACES)
@pytest.mark.parametrize("backend", backend_params(F32, triton=True))
@pytest.mark.parametrize("mode", list(MODES))
def test_non_finite_propagates_like_torch(mode, backend, place, value):
    ref, ours = make_twins(mode, backend, F32, input_size=3, hidden_size=4)
    g = torch.Generator().manual_seed(1)
    x, h0 = torch.randn(4, 2, 3, generator=g), torch.randn(2, 4, generator=g) * 0.5
    if place == "input":
        x[1, 0, 0] = value
    elif place == "h0":
        h0[1, 2] = value
    else:
        with torch.no_grad():
            for m in (ref, ours):
                w = _param(m, place).view(-1)
                w[min(5, w.numel() - 1)] = value
    want, got = _run(ref, mode, x, h0), _run(ours, mode, x, h0)
    assert len(got) == len(want)
    for k, (a, b) in enumerate(zip(got, want)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, equal_nan=True,
                                   msg=lambda m: f"tensor {k} ({mode}, {place}): {m}")
