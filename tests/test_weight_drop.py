"""Weight drop (``rnnkernels.weight_drop``: DropConnect on W_hh, AWD-LSTM's) against torch.nn
weight-dropped the same way: the same masks under the same seed (a module evaluates the
parametrization as torch.nn does), one W_hh for every step of a forward and a new one per
forward, eval, state_dict, convert/revert, errors.
"""
from __future__ import annotations

import pytest
import torch

import rnnkernels
from tests.helpers import MODES, assert_close, cpu_backends, our_class, torch_class

F64 = torch.float64
T, B, I, H = 5, 3, 4, 6


def _flat(result):
    return [result] if isinstance(result, torch.Tensor) else [t for r in result for t in _flat(r)]


WD_CASES = [("LSTM", dict(num_layers=2, bidirectional=True, proj_size=3)),
            ("GRU", dict(num_layers=2)), ("RNN_TANH", {}), ("LSTMCell", {}), ("GRUCell", {})]


def _weight_dropped(mode, backend, **layout):
    """(torch.nn module, ours) with the same weights, each weight-dropped at p = 0.4."""
    torch.manual_seed(0)
    theirs = torch_class(mode)(I, H, **MODES[mode][1], **layout).to(F64)
    ours = our_class(mode)(I, H, **MODES[mode][1], **layout, backend=backend).to(F64)
    ours.load_state_dict(theirs.state_dict())
    return rnnkernels.weight_drop(theirs, 0.4), rnnkernels.weight_drop(ours, 0.4)


@pytest.mark.parametrize("backend", ["auto", *cpu_backends(F64)])
@pytest.mark.parametrize("mode,layout", WD_CASES, ids=[m for m, _ in WD_CASES])
def test_weight_drop_draws_torch_nns_masks_and_gradients(mode, layout, backend):
    """With the same seed, a weight-dropped module computes what the weight-dropped torch.nn
    module computes (the same masks, drawn as often), forward and backward, on every backend."""
    theirs, ours = _weight_dropped(mode, backend, **layout)
    x = torch.randn(T, B, I, dtype=F64) if "Cell" not in mode else torch.randn(B, I, dtype=F64)
    for seed in (0, 1):
        results = []
        for module in (theirs, ours):
            module.zero_grad()
            torch.manual_seed(seed)
            out = _flat(module(x))
            sum((t * (k + 1)).sum() for k, t in enumerate(out)).backward()
            results.append(out + [p.grad for p in module.parameters()])
        for a, e in zip(*results[::-1], strict=True):
            assert_close(a, e, f"seed {seed}")


def test_weight_drop_uses_one_mask_for_every_step_and_a_new_one_per_forward():
    """The module's output is torch.nn's with the weight its DropConnect returned last (one
    W_hh for all T steps); two forwards draw different masks; eval is the weight itself."""
    seen = []

    class Recording(rnnkernels.dropout.DropConnect):
        def forward(self, weight):
            seen.append(super().forward(weight))
            return seen[-1]

    torch.manual_seed(0)
    ours = rnnkernels.LSTM(I, H, backend="auto").to(F64)
    plain = torch.nn.LSTM(I, H).to(F64)
    plain.load_state_dict(ours.state_dict())
    torch.nn.utils.parametrize.register_parametrization(ours, "weight_hh_l0", Recording(0.5))
    x = torch.randn(T, B, I, dtype=F64)
    used = []
    for _ in range(2):
        out = ours(x)[0]
        with torch.no_grad():
            plain.weight_hh_l0.copy_(seen[-1])
        assert_close(out, plain(x)[0], "output with the last drawn W_hh")
        used.append(seen[-1])
    assert not torch.equal(used[0], used[1]), "two forwards used the same mask"
    zeros = used[0] == 0
    assert 0.3 < float(zeros.double().mean()) < 0.7
    ours.eval()
    with torch.no_grad():
        plain.weight_hh_l0.copy_(ours.parametrizations.weight_hh_l0.original)
    assert_close(ours(x)[0], plain(x)[0], "eval: the weight itself")


def test_weight_drop_state_dict_convert_revert_and_errors():
    torch.manual_seed(0)
    theirs = rnnkernels.weight_drop(torch.nn.GRU(I, H, 2), 0.3)
    state = theirs.state_dict()
    assert "parametrizations.weight_hh_l1.original" in state
    ours = rnnkernels.convert(theirs)
    assert isinstance(ours, rnnkernels.GRU) and ours.parametrizations is theirs.parametrizations
    fresh = rnnkernels.weight_drop(rnnkernels.GRU(I, H, 2), 0.3)
    fresh.load_state_dict(state)
    x = torch.randn(T, B, I)
    for a, e in zip(_flat(fresh.eval()(x)), _flat(theirs.eval()(x))):
        assert_close(a, e, "state_dict round trip")
    back = rnnkernels.revert(rnnkernels.convert(fresh))
    assert type(back).__bases__[0] is torch.nn.GRU
    assert list(back.parametrizations.keys()) == ["weight_hh_l0", "weight_hh_l1"]
    only = rnnkernels.weight_drop(rnnkernels.LSTM(I, H, 2), 0.1, names=["weight_hh_l1"])
    assert list(only.parametrizations.keys()) == ["weight_hh_l1"]
    with pytest.raises(ValueError, match="between 0 and 1"):
        rnnkernels.weight_drop(torch.nn.LSTM(I, H), 1.5)
    with pytest.raises(TypeError, match="should be a float"):
        rnnkernels.weight_drop(torch.nn.LSTM(I, H), "0.5")
    with pytest.raises(TypeError, match="names"):
        rnnkernels.weight_drop(torch.nn.Linear(I, H), 0.5)
    with pytest.raises(TypeError, match="list of parameter names"):
        rnnkernels.weight_drop(torch.nn.LSTM(I, H), 0.5, names="weight_hh_l0")
