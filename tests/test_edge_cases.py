"""Edge cases where a drop-in must do exactly what torch.nn does: an empty batch (forward and
backward of every module on every CPU backend) and packed input of the wrong index dtype."""
from __future__ import annotations

import pytest
import torch
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

import rnnkernels
from rnnkernels import backends
from tests.helpers import MODES, assert_close, backend_params, cpu_backends, make_twins

F32 = torch.float32


@pytest.mark.parametrize("backend", backend_params(F32, triton=True))
@pytest.mark.parametrize("mode", list(MODES))
def test_empty_batch_forward_and_backward(mode, backend):
    ref, ours = make_twins(mode, backend, F32, input_size=3, hidden_size=4)
    shape = (0, 3) if "Cell" in mode else (5, 0, 3)
    results = []
    for m in (ref, ours):
        x = torch.zeros(shape, requires_grad=True)
        y = m(x)
        outs = [t for t in torch.utils._pytree.tree_leaves(y)]
        sum(o.sum() for o in outs).backward()
        results.append(([o.shape for o in outs], x.grad,
                        [p.grad for p in m.parameters()]))
    assert results[1][0] == results[0][0]
    assert results[1][1].shape == results[0][1].shape
    for g_ours, g_ref in zip(results[1][2], results[0][2]):
        assert_close(g_ours, g_ref, "parameter grad of an empty batch (zeros)")


@pytest.mark.parametrize("cls", ["LSTM", "GRU", "RNN"])
def test_packed_batch_sizes_must_be_int64(cls):
    ref = getattr(torch.nn, cls)(3, 4)
    ours = getattr(rnnkernels, cls)(3, 4)
    p = pack_padded_sequence(torch.randn(5, 2, 3), [5, 3])
    bad = PackedSequence(p.data, p.batch_sizes.to(torch.int32))
    with pytest.raises(RuntimeError) as want:
        ref(bad)
    with pytest.raises(type(want.value), match=str(want.value)):
        ours(bad)


class _WeightDrop(torch.nn.Module):
    """DropConnect on a recurrent weight (AWD-LSTM's weight drop) as a parametrization."""

    def forward(self, w):
        return torch.nn.functional.dropout(w, 0.5, training=True)


@pytest.mark.parametrize("cls", ["LSTM", "GRU", "RNN"])
def test_weight_drop_parametrization_draws_the_same_masks(cls):
    """A random parametrization is evaluated as often, in the same order, as under torch.nn
    (which reads each weight several times per forward), so the same seed gives the same
    masks and the same outputs, call after call."""
    import torch.nn.utils.parametrize as P
    outs = []
    for mod in (torch.nn, rnnkernels):
        torch.manual_seed(0)
        m = getattr(mod, cls)(3, 4, num_layers=2)
        for name in ("weight_hh_l0", "weight_hh_l1"):
            P.register_parametrization(m, name, _WeightDrop())
        torch.manual_seed(1)
        x = torch.randn(4, 2, 3)
        outs.append([m(x)[0] for _ in range(3)])
    for ours, ref in zip(outs[1], outs[0]):
        assert_close(ours, ref, "output under weight drop")
    assert not torch.allclose(outs[0][0], outs[0][1]), "the masks must change between calls"


@pytest.mark.parametrize("grad", [False, True], ids=["no_grad", "grad"])
def test_large_outputs_are_resizable(grad):
    """Outputs of 1 MiB and more come from the CPU backend's buffer pool; like torch's own
    outputs they must accept resize_() (growing and shrinking)."""
    if "cpu" not in cpu_backends(F32):
        pytest.skip(f"the cpu backend cannot run here: {backends.why_not('cpu', 'cpu', F32)}")
    m = rnnkernels.LSTM(64, 64, backend="cpu")
    x = torch.randn(100, 64, 64)
    with torch.set_grad_enabled(grad):
        out, _ = m(x)
    assert out.numel() * out.element_size() >= 1 << 20
    out = out.detach()
    keep = out.clone()
    out.resize_(200, 64, 64)
    assert torch.equal(out[:100], keep)
    out.resize_(3, 5)
    assert out.shape == (3, 5) and out.is_contiguous()
