"""rnnkernels.SLSTM / SLSTMCell as modules: every input form (batch_first, unbatched, packed),
inter-layer dropout, torch.nn.LSTM's parameters and initialisation, repr and pickling, the
routing (the reference only, for now), autocast, torch's errors for bad calls, the docstrings'
examples. The numerics (the oracle, xlstm, gradients): tests/test_slstm.py.
"""
from __future__ import annotations

import copy
import doctest
import io
import warnings

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

import rnnkernels
import rnnkernels.nn.slstm as slstm_modules
from tests import slstm_oracle as oracle
from tests.helpers import assert_close
from tests.test_slstm import initial_states, make


def test_input_forms_batch_first_unbatched_and_sorted_packing():
    module = make(3, 4, 2, True)
    first = make(3, 4, 2, True, batch_first=True)
    x = torch.randn(6, 2, 3, dtype=torch.float64)
    out, finals = module(x)
    out_bf, finals_bf = first(x.transpose(0, 1))
    assert_close(out_bf.transpose(0, 1), out, "batch_first output")
    out_u, finals_u = module(x[:, 1])
    assert_close(out_u, out[:, 1], "unbatched output")
    hx = initial_states((4, 2, 4), torch.float64, "carried")
    out_h, finals_h = module(x[:, 1], tuple(h[:, 1] for h in hx))
    assert_close(out_h, module(x, tuple(hx))[0][:, 1], "unbatched with hx")
    for a, b, c in zip(finals_u, finals, finals_bf):
        assert_close(a, b[:, 1], "unbatched states")
        assert_close(c, b, "batch_first states")
    packed = pack_padded_sequence(x, torch.tensor([6, 4]))            # sorted: no indices
    out_p, finals_p = module(packed)
    assert isinstance(out_p, type(packed)) and out_p.sorted_indices is None
    _, ref = module(x[:4, 1:])
    for a, b in zip(finals_p, ref):
        assert_close(a[:, 1:], b, "packed final state of the shorter sequence")


def test_dropout_between_layers_follows_the_seed_and_train_mode():
    module = make(3, 4, 3, dropout=0.5)
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    torch.manual_seed(7)
    a = module(x)[0]
    torch.manual_seed(7)
    b = module(x)[0]
    c = module(x)[0]
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.equal(a, c)
    module.eval()
    torch.testing.assert_close(module(x)[0], make(3, 4, 3)(x)[0], rtol=0, atol=0)


# ------------------------------------------------------------------------- parameters, API
def test_parameters_are_torch_lstms_and_the_head_wise_layout_its_block_diagonal():
    torch.manual_seed(0)
    ours = rnnkernels.SLSTM(5, 6, 2, bidirectional=True)
    torch.manual_seed(0)
    twin = torch.nn.LSTM(5, 6, 2, bidirectional=True)
    assert list(ours.state_dict()) == list(twin.state_dict())
    for (k, a), b in zip(ours.state_dict().items(), twin.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=k)
    torch.manual_seed(0)
    heads = rnnkernels.SLSTM(5, 6, 2, bidirectional=True, num_heads=3)
    w = heads.weight_hh_l1_reverse
    assert w.shape == (24, 2)
    dense = oracle.dense_recurrent_weight(w, 4, 3)
    mask = oracle.dense_recurrent_weight(torch.ones_like(w), 4, 3).bool()
    torch.testing.assert_close(dense, twin.weight_hh_l1_reverse.detach() * mask, rtol=0, atol=0)
    cell = rnnkernels.SLSTMCell(5, 6, bias=False, num_heads=2)
    assert [n for n, _ in cell.named_parameters()] == ["weight_ih", "weight_hh"]
    assert cell.weight_hh.shape == (24, 3) and cell.num_heads == 2
    assert not isinstance(ours, torch.nn.LSTM) and isinstance(ours, torch.nn.RNNBase)


def test_repr_pickle_and_weights_only_load():
    module = rnnkernels.SLSTM(3, 4, 2, num_heads=2, backend="reference")
    assert repr(module) == "SLSTM(3, 4, num_layers=2, num_heads=2, backend='reference')"
    assert repr(rnnkernels.SLSTMCell(3, 4)) == "SLSTMCell(3, 4)"
    buffer = io.BytesIO()
    torch.save(module, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer)                                     # weights_only=True
    x = torch.randn(5, 2, 3)
    torch.testing.assert_close(loaded(x)[0], module(x)[0], rtol=0, atol=0)
    assert loaded.num_heads == 2 and loaded.backend == "reference"
    twin = copy.deepcopy(module)
    torch.testing.assert_close(twin(x)[1][3], module(x)[1][3], rtol=0, atol=0)


def test_routing_auto_says_reference_once_and_named_backends_raise(monkeypatch):
    x = torch.randn(2, 1, 3)
    for name in ("torch",):             # (named triton runs: tests/test_slstm_triton.py)
        module = rnnkernels.SLSTM(3, 4, backend=name)
        with pytest.raises(RuntimeError, match=f"backend '{name}'.*cannot run sLSTM"):
            module(x)
        with pytest.raises(RuntimeError, match="cannot run sLSTM"):
            rnnkernels.SLSTMCell(3, 4, backend=name)(x[0])
    with pytest.raises(ValueError, match="unknown rnnkernels backend"):
        rnnkernels.SLSTM(3, 4, backend="fastest")
    from rnnkernels import backends     # auto where no fused sLSTM can run: the reference, said once
    why_not = backends.why_not
    monkeypatch.setattr(backends, "why_not",
                        lambda n, d, t: "not here" if n != "reference" else why_not(n, d, t))
    backends._warned.clear()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rnnkernels.SLSTM(3, 4)(x)
        rnnkernels.SLSTMCell(3, 4)(x[0])
    notes = [w for w in caught if "runs sLSTM on the 'reference'" in str(w.message)]
    assert len(notes) == 1 and notes[0].category is RuntimeWarning


def test_autocast_runs_in_the_autocast_dtype():
    module = rnnkernels.SLSTM(3, 4, 2, num_heads=2, backend="reference")
    x = torch.randn(5, 2, 3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, finals = module(x)
    assert out.dtype == torch.bfloat16 and all(f.dtype == torch.bfloat16 for f in finals)
    with torch.no_grad():
        assert float((out.float() - module(x)[0]).abs().max()) < 0.05


# --------------------------------------------------------------------------------- errors
def torch_error(call):
    with pytest.raises(Exception) as info:
        call()
    return info


@pytest.mark.parametrize("what", ["input size", "batch of hx", "hidden size of hx",
                                  "layers of hx", "3-D input 2-D hx", "4-D input", "dtype"])
def test_layer_errors_are_torch_lstms(what):
    """The same bad call to torch.nn.LSTM and to SLSTM raises the same type and message
    (torch's hidden-state checks name hidden[0], hidden[1]; ours hidden[0] .. hidden[3])."""
    torch.manual_seed(0)
    ours, twin = rnnkernels.SLSTM(3, 4, 2, backend="reference"), torch.nn.LSTM(3, 4, 2)
    x, h = torch.randn(5, 2, 3), torch.zeros(2, 2, 4)
    bad = {"input size": (torch.randn(5, 2, 4), h), "batch of hx": (x, torch.zeros(2, 3, 4)),
           "hidden size of hx": (x, torch.zeros(2, 2, 5)),
           "layers of hx": (x, torch.zeros(1, 2, 4)),
           "3-D input 2-D hx": (x, torch.zeros(2, 4)), "4-D input": (x[None], h),
           "dtype": (x.double(), h.double())}[what]
    theirs = torch_error(lambda: twin(bad[0], (bad[1], bad[1])))
    mine = torch_error(lambda: ours(bad[0], (bad[1],) * 4))
    assert mine.type is theirs.type
    expected = str(theirs.value).replace("LSTM", "SLSTM").replace("hx and cx",
                                                                  "h_0, c_0, n_0 and m_0")
    if what == "3-D input 2-D hx":
        expected = expected.replace("(2-D, 2-D)", "(2-D, 2-D, 2-D, 2-D)")
    assert str(mine.value) == expected


def test_hx_container_and_option_errors():
    module = rnnkernels.SLSTM(3, 4, backend="reference")
    x = torch.randn(5, 2, 3)
    for hx in (torch.zeros(1, 2, 4), (torch.zeros(1, 2, 4),) * 2, [None] * 4):
        with pytest.raises(TypeError, match=r"hx must be a tuple \(h_0, c_0, n_0, m_0\)"):
            module(x, hx)
    with pytest.raises(TypeError, match="num_heads should be of type int"):
        rnnkernels.SLSTM(3, 4, num_heads=2.0)
    with pytest.raises(ValueError, match="hidden_size must be divisible by num_heads"):
        rnnkernels.SLSTMCell(3, 4, num_heads=3)
    with pytest.raises(ValueError, match="num_heads must be greater than zero"):
        rnnkernels.SLSTM(3, 4, num_heads=0)
    with pytest.raises(TypeError):
        rnnkernels.SLSTM(3, 4, proj_size=2)


@pytest.mark.parametrize("what", ["input size", "batch", "hidden size", "3-D input"])
def test_cell_errors_are_torch_lstmcells(what):
    ours = rnnkernels.SLSTMCell(3, 4, backend="reference")
    twin = torch.nn.LSTMCell(3, 4)
    x, h = torch.randn(2, 3), torch.zeros(2, 4)
    bad = {"input size": (torch.randn(2, 5), h), "batch": (x, torch.zeros(3, 4)),
           "hidden size": (x, torch.zeros(2, 5)), "3-D input": (x[None], h)}[what]
    theirs = torch_error(lambda: twin(bad[0], (bad[1], bad[1])))
    mine = torch_error(lambda: ours(bad[0], (bad[1],) * 4))
    assert mine.type is theirs.type
    assert str(mine.value) == str(theirs.value).replace("LSTMCell", "SLSTMCell")


def test_docstring_examples_run():
    finder = doctest.DocTestFinder()
    tests = [t for t in finder.find(slstm_modules) if t.examples]
    assert {t.name.rsplit(".", 1)[-1] for t in tests} >= {"SLSTM", "SLSTMCell"}
    for test in tests:
        test.globs.update(torch=torch, rnnkernels=rnnkernels)
        runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            assert runner.run(test).failed == 0, test.name
