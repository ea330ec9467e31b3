"""The recurrent variants (peephole, head-wise recurrence, zoneout) against an independent oracle.

``tests/variants_oracle.py`` computes each variant from the papers' equations, one sequence and
one step at a time; here every output, final state and gradient (input, h0, c0, every
parameter) of the modules is compared with it, in float32 and float64, on odd sizes, with
several layers, both directions, packed sequences of unsorted lengths, projections, and zoneout
in training (the masks re-drawn here by docs/VARIANTS.md's rule) and in eval. Plus float64
gradcheck and gradgradcheck, and two oracles that are torch.nn itself: a head-wise module equals
torch.nn with the block-diagonal W_hh, a peephole LSTM with zero peepholes equals torch.nn.
API, errors and routing: tests/test_variants_api.py.
"""
from __future__ import annotations

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import rnnkernels
from tests import variants_oracle as oracle
from tests.helpers import DTYPE_NAMES, MODES, assert_close, our_class, torch_class

I, T, B = 5, 7, 3
LENGTHS = [5, 7, 2]         # unsorted, one full length


def build(mode, hidden=6, dtype=torch.float64, seed=0, **kwargs):
    torch.manual_seed(seed)
    kwargs = {**MODES[mode][1], **kwargs}
    return our_class(mode)(I, hidden, **kwargs, backend="reference").to(dtype)


def draw_masks(module, count, dtype, seed):
    """The zoneout masks of one forward as docs/VARIANTS.md draws them: per state with p > 0,
    in state order, torch.empty(L·D, T, B, size).bernoulli_(p) from the forward's seed."""
    torch.manual_seed(seed)
    zoneout = module.zoneout if isinstance(module.zoneout, tuple) else (module.zoneout,) * 2
    sizes = [module.proj_size or module.hidden_size, module.hidden_size] \
        if isinstance(module, torch.nn.LSTM) else [module.hidden_size] * 2
    return [torch.empty(count, T, B, size, dtype=dtype).bernoulli_(p) if p else None
            for p, size in zip(zoneout, sizes)]


def layer_run(mode, layout, options, dtype, packed, training, batch_first=False):
    """(module results, oracle results, tensors to differentiate) of one layer case."""
    module = build(mode, dtype=dtype, hidden=options.pop("hidden", 6), batch_first=batch_first,
                   **layout, **options)
    module.train(training)
    lstm = mode == "LSTM"
    dirs = 2 if module.bidirectional else 1
    count = module.num_layers * dirs
    P = module.proj_size or module.hidden_size
    lengths = LENGTHS if packed else [T] * B
    x = torch.randn(T, B, I, dtype=dtype)
    x = (x * (torch.arange(T)[:, None] < torch.tensor(lengths)[None, :])[..., None])
    x.requires_grad_(True)
    hx = [torch.randn(count, B, P, dtype=dtype, requires_grad=True)]
    if lstm:
        hx.append(torch.randn(count, B, module.hidden_size, dtype=dtype, requires_grad=True))
    inp = x.transpose(0, 1) if batch_first else x
    if packed:
        inp = pack_padded_sequence(inp, lengths, batch_first=batch_first, enforce_sorted=False)
    torch.manual_seed(7)
    out, states = module(inp, tuple(hx) if lstm else hx[0])
    if packed:
        out = pad_packed_sequence(out, batch_first=batch_first, total_length=T)[0]
    out = out.transpose(0, 1) if batch_first else out
    masks = draw_masks(module, count, dtype, seed=7) if training else None
    if masks is not None and packed:       # drawn for the packed (length-sorted) batch order
        masks = [m if m is None else m[:, :, inp.unsorted_indices] for m in masks]
    params = dict(module.named_parameters())
    ref_out, ref_states = oracle.run(
        mode, params, x, lengths, hx, num_layers=module.num_layers,
        bidirectional=module.bidirectional, num_heads=module.num_heads,
        zoneout=_zoneout(module), masks=masks, training=training)
    ours = [out, *(states if lstm else (states,))]
    return ours, [ref_out, *ref_states], [x, *hx, *params.values()], list(params)


def _zoneout(module):
    z = getattr(module, "zoneout", 0.0)
    return z if isinstance(z, tuple) else (z, z)


def compare(ours, ref, inputs, names):
    labels = ["output", "h_n", "c_n"]
    for a, e, label in zip(ours, ref, labels):
        assert_close(a, e, label)
    torch.manual_seed(1)
    weights = [torch.randn_like(e) for e in ref]
    loss = lambda outs: sum((w * o).sum() for w, o in zip(weights, outs))  # noqa: E731
    got = torch.autograd.grad(loss(ours), inputs, allow_unused=True)
    want = torch.autograd.grad(loss(ref), inputs, allow_unused=True)
    for g, w, name in zip(got, want, ["input", "h0", "c0"][:len(inputs) - len(names)] + names):
        assert (g is None) == (w is None), name
        if w is not None:
            assert_close(g, w, f"grad {name}")


L2B = dict(num_layers=2, bidirectional=True)
# (id, mode, constructor layout, variant options, packed, training)
CASES = [
    ("peephole-L2-bidir", "LSTM", L2B, dict(peephole=True), False, False),
    ("peephole-proj", "LSTM", dict(proj_size=4), dict(peephole=True), False, False),
    ("peephole-L2-bidir-packed", "LSTM", L2B, dict(peephole=True), True, False),
    ("heads3-H12-L2-bidir", "LSTM", L2B, dict(num_heads=3, hidden=12), False, False),
    ("heads2-L2-bidir-packed", "GRU", L2B, dict(num_heads=2), True, False),
    ("heads4-H12", "RNN_TANH", {}, dict(num_heads=4, hidden=12), False, False),
    ("heads3-bidir-packed", "RNN_RELU", dict(bidirectional=True), dict(num_heads=3), True,
     False),
    ("zoneout-pair-L2-bidir-train", "LSTM", L2B, dict(zoneout=(0.3, 0.5)), False, True),
    ("zoneout-eval", "LSTM", {}, dict(zoneout=0.4), False, False),
    ("zoneout-L2-bidir-packed-train", "GRU", L2B, dict(zoneout=0.3), True, True),
    ("zoneout-bidir-eval", "GRU", dict(bidirectional=True), dict(zoneout=0.3), False, False),
    ("all-L2-bidir-packed-train", "LSTM", L2B,
     dict(peephole=True, num_heads=2, zoneout=(0.2, 0.4)), True, True),
    ("peephole-zoneout-proj-train", "LSTM", dict(proj_size=4), dict(peephole=True, zoneout=0.3),
     False, True),
    ("heads3-zoneout-H12-train", "GRU", dict(num_layers=2), dict(num_heads=3, zoneout=0.25,
                                                                  hidden=12), False, True),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=DTYPE_NAMES.get)
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_layers_match_the_oracle(case, dtype):
    _, mode, layout, options, packed, training = case
    ours, ref, inputs, names = layer_run(mode, layout, dict(options), dtype, packed, training)
    compare(ours, ref, inputs, names)


def test_batch_first_and_unbatched():
    ours, ref, inputs, names = layer_run("LSTM", L2B, dict(peephole=True, zoneout=0.2),
                                         torch.float64, True, True, batch_first=True)
    compare(ours, ref, inputs, names)
    module = build("GRU", num_heads=2, zoneout=0.1).eval()
    x = torch.randn(T, I, dtype=torch.float64)
    out, h = module(x)
    batched_out, batched_h = module(x[:, None])
    assert torch.equal(out, batched_out[:, 0]) and torch.equal(h, batched_h[:, 0])


CELL_CASES = [
    ("LSTMCell", dict(peephole=True, num_heads=2, zoneout=(0.3, 0.5)), True),
    ("LSTMCell", dict(peephole=True, zoneout=0.4), False),
    ("GRUCell", dict(num_heads=3, zoneout=0.3), True),
    ("RNNCell_RELU", dict(num_heads=2), False),
    ("RNNCell_TANH", dict(num_heads=3), False),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=DTYPE_NAMES.get)
@pytest.mark.parametrize("mode,options,training", CELL_CASES,
                         ids=[f"{m}-{'-'.join(o)}-{'train' if t else 'eval'}"
                              for m, o, t in CELL_CASES])
def test_cells_match_the_oracle(mode, options, training, dtype):
    cell = build(mode, dtype=dtype, **options).train(training)
    lstm = mode == "LSTMCell"
    x = torch.randn(B, I, dtype=dtype, requires_grad=True)
    hx = [torch.randn(B, 6, dtype=dtype, requires_grad=True) for _ in range(2 if lstm else 1)]
    torch.manual_seed(3)
    out = cell(x, tuple(hx) if lstm else hx[0])
    ours = list(out) if lstm else [out]
    masks = None
    if training:
        torch.manual_seed(3)
        ps = _zoneout(cell)
        masks = [torch.empty(1, 1, B, 6, dtype=dtype).bernoulli_(p) for p in ps]
    params = dict(cell.named_parameters())
    _, ref = oracle.run(mode.replace("Cell", ""), params, x[None], [1] * B,
                        [h[None] for h in hx], num_heads=cell.num_heads, zoneout=_zoneout(cell),
                        masks=masks, training=training, cell=True)
    compare(ours, [r[0] for r in ref], [x, *hx, *params.values()], list(params))
    one = cell.eval()(x[0], tuple(h[0] for h in hx) if lstm else hx[0][0])     # unbatched
    first = cell(x, tuple(hx) if lstm else hx[0])
    for a, e in zip(one if lstm else [one], first if lstm else [first]):
        assert_close(a, e[0], "unbatched")


# ----------------------------------------------------------------- torch.nn itself as oracle
@pytest.mark.parametrize("mode", ["LSTM", "GRU", "RNN_TANH", "RNN_RELU", "LSTMCell", "GRUCell",
                                  "RNNCell_TANH"])
def test_headwise_equals_torch_nn_with_the_block_diagonal_weight(mode):
    """The layout's meaning, checked by torch.nn: a head-wise module computes what torch.nn
    computes with the dense block-diagonal W_hh its [G·H, d] weight stands for; and with the
    same seed, its weights are torch.nn's, W_hh being torch.nn's block diagonal."""
    layout = {} if "Cell" in mode else dict(num_layers=2, bidirectional=True)
    ours = build(mode, hidden=12, num_heads=3, **layout)
    torch.manual_seed(0)
    theirs = torch_class(mode)(I, 12, **MODES[mode][1], **layout).double()
    gates = oracle.GATES[mode.replace("Cell", "")]
    for name, p in theirs.named_parameters():
        mine = getattr(ours, name)
        if name.startswith("weight_hh"):
            dense = oracle.dense_recurrent_weight(mine.detach(), gates, 3)
            blocks = oracle.dense_recurrent_weight(torch.ones_like(mine), gates, 3) != 0
            assert torch.equal(dense, torch.where(blocks, p.detach(), 0.0)), name
            with torch.no_grad():
                p.copy_(dense)
        else:
            assert torch.equal(mine, p), name
    x = torch.randn(T, B, I, dtype=torch.float64) if "Cell" not in mode else \
        torch.randn(B, I, dtype=torch.float64)
    for a, e in zip(_flat(ours(x)), _flat(theirs(x))):
        assert_close(a, e, mode)


def _flat(result):
    if isinstance(result, torch.Tensor):
        return [result]
    return [t for r in result for t in _flat(r)]


def test_zero_peepholes_are_torch_nn_with_its_dropout_masks():
    """Peepholes at zero: torch.nn.LSTM, inter-layer dropout in training included (a variant
    without zoneout draws no random number of its own, so torch's masks are the same)."""
    ours = build("LSTM", peephole=True, dropout=0.5, **L2B).train()
    torch.manual_seed(0)
    theirs = torch.nn.LSTM(I, 6, dropout=0.5, **L2B).double()
    with torch.no_grad():
        for name, p in ours.named_parameters():
            if name.startswith("weight_ch"):
                p.zero_()
    x = torch.randn(T, B, I, dtype=torch.float64)
    torch.manual_seed(2)
    mine = _flat(ours(x))
    torch.manual_seed(2)
    for a, e in zip(mine, _flat(theirs(x))):
        assert_close(a, e, "output/states")


# --------------------------------------------------------------------------------- gradcheck
GRAD_CASES = [
    ("LSTM", dict(peephole=True, num_heads=2, zoneout=(0.3, 0.5)), dict(bidirectional=True)),
    ("LSTM", dict(peephole=True), dict(proj_size=2)),
    ("GRU", dict(num_heads=2, zoneout=0.3), dict(num_layers=2)),
    ("RNN_TANH", dict(num_heads=2), dict(bidirectional=True)),
]


def _functional(module, names, packed):
    lstm = isinstance(module, torch.nn.LSTM)

    def fn(x, h0, c0, *params):
        torch.manual_seed(0)                 # the same zoneout masks at every evaluation
        inp = pack_padded_sequence(x, [4, 2], enforce_sorted=False) if packed else x
        out, states = torch.func.functional_call(module, dict(zip(names, params)),
                                                 (inp, (h0, c0) if lstm else h0))
        out = pad_packed_sequence(out)[0] if packed else out
        return (out, *states) if lstm else (out, states)
    return fn


@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("mode,options,layout", GRAD_CASES,
                         ids=[f"{m}-{'-'.join(o)}" for m, o, _ in GRAD_CASES])
def test_gradcheck_float64(mode, options, layout, packed):
    torch.manual_seed(0)
    module = our_class(mode)(3, 4, **MODES[mode][1], **layout, **options,
                             backend="reference").double().train()
    names = [n for n, _ in module.named_parameters()]
    count = module.num_layers * (2 if module.bidirectional else 1)
    x = torch.randn(4, 2, 3, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(count, 2, module.proj_size or 4, dtype=torch.float64, requires_grad=True)
    c0 = torch.randn(count, 2, 4, dtype=torch.float64, requires_grad=True)
    params = [p.detach().clone().requires_grad_(True) for p in module.parameters()]
    assert torch.autograd.gradcheck(_functional(module, names, packed), (x, h0, c0, *params))


def test_gradgradcheck_float64():
    """Double backward (autograd through the reference's loop), on the recurrent weights, the
    peepholes, the input and the states of an LSTM with every variant."""
    torch.manual_seed(0)
    module = rnnkernels.LSTM(2, 4, peephole=True, num_heads=2, zoneout=(0.3, 0.5),
                             backend="reference").double()
    names = ["weight_hh_l0", "weight_ch_l0"]
    fixed = {n: p.detach() for n, p in module.named_parameters() if n not in names}
    call = _functional(module, [*fixed, *names], packed=False)
    inputs = [torch.randn(3, 1, 2, dtype=torch.float64), torch.randn(1, 1, 4, dtype=torch.float64),
              torch.randn(1, 1, 4, dtype=torch.float64)]
    inputs += [getattr(module, n).detach().clone() for n in names]
    inputs = [t.requires_grad_(True) for t in inputs]
    fn = lambda x, h0, c0, *ws: call(x, h0, c0, *fixed.values(), *ws)  # noqa: E731
    assert torch.autograd.gradgradcheck(fn, tuple(inputs))
