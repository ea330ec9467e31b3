"""Layer-normalised LSTM and GRU (``layer_norm=True``) against an independent oracle and haste.

``tests/variants_oracle_ln.py`` computes the layer-norm cells from docs/VARIANTS.md's equations,
one sequence and one step at a time, with the norm written out; here outputs, final states and
every gradient (input, h0, c0, every parameter, the norms' gains and biases included) are
compared with it in float32 and float64 on odd sizes: layers, both directions, packed unsorted
lengths, batch_first, unbatched, proj_size, no bias, combined with peephole, num_heads and
zoneout (train and eval), and the cells. A transcription of haste's own CPU path (its layout,
gate orders and zoneout masks) checks that the form is haste's. Plus float64 gradcheck and
gradgradcheck, forward-mode AD, autocast, invariances of a norm, and the API: parameter names,
shapes, initial values and ``reset_parameters``, ``state_dict``, ``repr``, errors, routing.
"""
from __future__ import annotations

import math

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import rnnkernels
from tests import test_variants as TV
from tests import variants_oracle_ln as oracle
from tests.helpers import DTYPE_NAMES, assert_close, routing_warnings

I, T, B = TV.I, TV.T, TV.B
L2B = dict(num_layers=2, bidirectional=True)
LN = dict(layer_norm=True)


def _perturbed(module, seed=11):
    """Norm gains and biases away from 1 and 0 (as after training), so a mix-up of gains,
    biases, layers or directions shows in the results."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if "_ln_" in name:
                p.add_(torch.randn_like(p) * 0.3)
    return module


def _close(actual, expected, what):
    """float32: layer norm's backward divides by each row's standard deviation, which
    amplifies the rounding of two summation orders (ours and the oracle's) past the helpers'
    float32 tolerance; a wrong term is off by far more than this."""
    if expected.dtype != torch.float32:
        return assert_close(actual, expected, what)
    scale = max(1.0, float(expected.detach().abs().max()))
    torch.testing.assert_close(actual, expected, rtol=2e-4, atol=2e-5 * scale,
                               msg=lambda m: f"{what}: {m}")


@pytest.fixture
def ln_oracle(monkeypatch):
    """tests/test_variants.py's runs and comparisons, with this file's oracle in place of its
    own, the norms' parameters perturbed and float32's tolerance (``_close``)."""
    monkeypatch.setattr(TV, "oracle", oracle)
    monkeypatch.setattr(TV, "assert_close", _close)
    build = TV.build
    monkeypatch.setattr(TV, "build", lambda *a, **kw: _perturbed(build(*a, **kw)))


# (id, mode, constructor layout, variant options, packed, training)
CASES = [
    ("L2-bidir", "LSTM", L2B, dict(hidden=7), False, False),
    ("L2-bidir-packed", "LSTM", L2B, {}, True, False),
    ("proj-peephole", "LSTM", dict(proj_size=4), dict(peephole=True, hidden=7), False, False),
    ("nobias-bidir-packed", "LSTM", dict(bidirectional=True, bias=False), {}, True, False),
    ("heads2-zoneout-L2-bidir-packed-train", "LSTM", L2B,
     dict(num_heads=2, zoneout=(0.3, 0.4)), True, True),
    ("all-proj-zoneout-train", "LSTM", dict(proj_size=3, num_layers=2),
     dict(peephole=True, zoneout=0.25, hidden=5), False, True),
    ("L2-bidir-packed", "GRU", L2B, dict(hidden=7), True, False),
    ("nobias", "GRU", dict(bias=False), {}, False, False),
    ("heads3-zoneout-L2-bidir-train", "GRU", L2B, dict(num_heads=3, zoneout=0.3), False, True),
    ("zoneout-packed-eval", "GRU", dict(bidirectional=True), dict(zoneout=0.4), True, False),
]


# Every case in float64; in float32 (the oracle's own cost is per step in Python) a few.
RUNS = [(c, torch.float64) for c in CASES] + [(CASES[i], torch.float32) for i in (0, 4, 6, 8)]


@pytest.mark.parametrize("case,dtype", RUNS,
                         ids=[f"{c[1]}-{c[0]}-{DTYPE_NAMES[d]}" for c, d in RUNS])
def test_layers_match_the_oracle(case, dtype, ln_oracle):
    _, mode, layout, options, packed, training = case
    ours, ref, inputs, names = TV.layer_run(mode, layout, {**options, **LN}, dtype, packed,
                                            training)
    assert any("_ln_" in n for n in names)
    TV.compare(ours, ref, inputs, names)


def test_batch_first_and_unbatched(ln_oracle):
    ours, ref, inputs, names = TV.layer_run("LSTM", L2B, dict(zoneout=0.2, **LN), torch.float64,
                                            True, True, batch_first=True)
    TV.compare(ours, ref, inputs, names)
    module = TV.build("GRU", num_heads=2, **LN).eval()
    x = torch.randn(T, I, dtype=torch.float64)
    out, h = module(x)
    batched_out, batched_h = module(x[:, None])
    assert torch.equal(out, batched_out[:, 0]) and torch.equal(h, batched_h[:, 0])


CELL_CASES = [("LSTMCell", {}, False), ("LSTMCell", dict(peephole=True, zoneout=(0.3, 0.5)), True),
              ("LSTMCell", dict(num_heads=3, bias=False), False),
              ("GRUCell", {}, False), ("GRUCell", dict(num_heads=2, zoneout=0.3), True)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=DTYPE_NAMES.get)
@pytest.mark.parametrize("mode,options,training", CELL_CASES,
                         ids=[f"{m}-{'-'.join(o) or 'plain'}-{'train' if t else 'eval'}"
                              for m, o, t in CELL_CASES])
def test_cells_match_the_oracle(mode, options, training, dtype, ln_oracle):
    cell = TV.build(mode, dtype=dtype, **options, **LN).train(training)
    lstm = mode == "LSTMCell"
    x = torch.randn(B, I, dtype=dtype, requires_grad=True)
    hx = [torch.randn(B, 6, dtype=dtype, requires_grad=True) for _ in range(2 if lstm else 1)]
    torch.manual_seed(3)
    out = cell(x, tuple(hx) if lstm else hx[0])
    masks = None
    if training:
        torch.manual_seed(3)
        masks = [torch.empty(1, 1, B, 6, dtype=dtype).bernoulli_(p) for p in TV._zoneout(cell)]
    params = dict(cell.named_parameters())
    _, ref = oracle.run(mode.removesuffix("Cell"), params, x[None], [1] * B,
                        [h[None] for h in hx], num_heads=cell.num_heads,
                        zoneout=TV._zoneout(cell), masks=masks, training=training, cell=True)
    TV.compare(list(out) if lstm else [out], [r[0] for r in ref], [x, *hx, *params.values()],
               list(params))
    one = cell.eval()(x[0], tuple(h[0] for h in hx) if lstm else hx[0][0])     # unbatched
    first = cell(x, tuple(hx) if lstm else hx[0])
    for a, e in zip(one if lstm else [one], first if lstm else [first]):
        _close(a, e[0], "unbatched")


# --------------------------------------------------------------------------- haste's form
@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("mode", ["LSTM", "GRU"])
def test_matches_haste_cpu_path(mode, training):
    """The layer as haste's LayerNormLSTM / LayerNormGRU computes it (their CPU path,
    transcribed in the oracle file, on our weights in haste's layout; zoneout on h only, as
    haste's, with haste's mask = 1 - ours)."""
    p = 0.3
    zoneout = (p, 0.0) if mode == "LSTM" else p
    module = _perturbed(TV.build(mode, hidden=7, zoneout=zoneout, **LN)).train(training)
    params = dict(module.named_parameters())
    x = torch.randn(T, B, I, dtype=torch.float64)
    h0 = torch.randn(1, B, 7, dtype=torch.float64)
    c0 = torch.randn(1, B, 7, dtype=torch.float64)
    torch.manual_seed(5)
    result = module(x, (h0, c0) if mode == "LSTM" else h0)
    torch.manual_seed(5)
    mask = 1 - torch.empty(T, B, 7, dtype=torch.float64).bernoulli_(p) if training else None
    theirs = oracle.haste_parameters(mode, params)
    with torch.no_grad():
        if mode == "LSTM":
            out, (h_n, c_n) = result
            h, c = oracle.haste_lstm(training, p, x, h0[0], c0[0], theirs, mask)
            assert_close(c_n[0], c[-1], "c_n")
        else:
            out, h_n = result
            h = oracle.haste_gru(training, p, x, h0[0], theirs, mask)
    assert_close(out.detach(), h[1:], "output")
    assert_close(h_n[0].detach(), h[-1], "h_n")


@pytest.mark.parametrize("mode", ["LSTM", "GRU"])
def test_each_norm_spans_all_gates_of_its_product(mode):
    """LN(v + s·1) = LN(v): adding one row u to every gate row of W_ih (and v to W_hh) shifts
    all G·H pre-activations of a step by the same x·u (h·v), which a norm over all of them
    removes exactly; a norm per gate, or none, would not."""
    torch.manual_seed(0)
    layer = _perturbed(getattr(rnnkernels, mode)(I, 5, 2, bidirectional=True, **LN,
                                                 backend="reference").double())
    x = torch.randn(T, B, I, dtype=torch.float64)
    want = TV._flat(layer(x))
    with torch.no_grad():
        for name, w in layer.named_parameters():
            if name.startswith(("weight_ih", "weight_hh")):
                w.add_(torch.randn(w.shape[1], dtype=torch.float64))
    for got, expected in zip(TV._flat(layer(x)), want):
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)


# --------------------------------------------------------------------------------- gradcheck
GRAD_CASES = [
    ("LSTM", dict(peephole=True, zoneout=(0.3, 0.5)), dict(bidirectional=True)),
    ("LSTM", dict(num_heads=2), dict(num_layers=2)),
    ("LSTM", {}, dict(proj_size=2)),
    ("GRU", dict(num_heads=2, zoneout=0.3), dict(num_layers=2)),
    ("GRU", {}, dict(bidirectional=True, bias=False)),
]


@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("mode,options,layout", GRAD_CASES,
                         ids=[f"{m}-{'-'.join(o) or 'plain'}-{'-'.join(l)}"
                              for m, o, l in GRAD_CASES])
def test_gradcheck_float64(mode, options, layout, packed):
    torch.manual_seed(0)
    module = _perturbed(getattr(rnnkernels, mode)(3, 4, **layout, **options, **LN,
                                                  backend="reference").double().train())
    names = [n for n, _ in module.named_parameters()]
    count = module.num_layers * (2 if module.bidirectional else 1)
    x = torch.randn(4, 2, 3, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(count, 2, getattr(module, "proj_size", 0) or 4, dtype=torch.float64,
                     requires_grad=True)
    c0 = torch.randn(count, 2, 4, dtype=torch.float64, requires_grad=True)
    params = [p.detach().clone().requires_grad_(True) for p in module.parameters()]
    assert torch.autograd.gradcheck(TV._functional(module, names, packed), (x, h0, c0, *params),
                                    fast_mode=True)


def test_gradgradcheck_float64():
    """Double backward through the norms: every norm parameter, W_hh, the input and states."""
    torch.manual_seed(0)
    lstm = _perturbed(rnnkernels.LSTM(2, 4, peephole=True, zoneout=(0.3, 0.5), **LN,
                                      backend="reference").double())
    chosen = {n: p.detach().clone() for n, p in lstm.named_parameters()
              if "_ln_" in n or n == "weight_hh_l0"}

    def fn(x, h0, c0, *weights):
        torch.manual_seed(0)                   # the same zoneout masks at every evaluation
        out, (h, c) = torch.func.functional_call(lstm, dict(zip(chosen, weights)), (x, (h0, c0)))
        return out, h, c
    states = [torch.randn(1, 1, 4, dtype=torch.float64) for _ in range(2)]
    inputs = [torch.randn(3, 1, 2, dtype=torch.float64), *states, *chosen.values()]
    assert torch.autograd.gradgradcheck(fn, tuple(t.requires_grad_(True) for t in inputs),
                                        fast_mode=True)


def test_forward_mode_ad_and_torch_func_agree_with_backward():
    torch.manual_seed(0)
    for module in (rnnkernels.GRU(3, 4, num_heads=2, **LN, backend="reference"),
                   rnnkernels.LSTM(3, 4, proj_size=2, **LN, backend="reference")):
        module = _perturbed(module.double())
        x, v = (torch.randn(5, 2, 3, dtype=torch.float64) for _ in range(2))
        _, tangent = torch.func.jvp(lambda t: module(t)[0].sum(), (x,), (v,))
        grad = torch.func.grad(lambda t: module(t)[0].sum())(x)
        torch.testing.assert_close(tangent, (grad * v).sum())


def test_autocast_bfloat16_is_close_to_float32_in_torch_nns_dtypes():
    """CPU autocast: the GEMMs in bfloat16, the norms and state in float32 (the accumulation
    dtype); the outputs in the dtypes torch.nn's op-by-op cells give a plain module."""
    torch.manual_seed(0)
    for ours, plain in ((rnnkernels.LSTM(I, 16, 2, **LN), rnnkernels.LSTM(I, 16, 2)),
                        (rnnkernels.GRU(I, 16, **LN), rnnkernels.GRU(I, 16))):
        x = torch.randn(T, B, I)
        want = TV._flat(ours(x))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got, dtypes = TV._flat(ours(x)), [t.dtype for t in TV._flat(plain(x))]
        assert [t.dtype for t in got] == dtypes
        for g, w in zip(got, want):
            assert ((g.float() - w).norm() / w.norm()) < 3e-2


# -------------------------------------------------------------------------------------- API
def test_parameters_names_shapes_initial_values_and_reset():
    """weight_ln_ih/hh [G·H] (gains 1), LSTM weight_ln_c (1) / bias_ln_c (0) [H], per layer and
    direction after torch.nn's parameters; torch.nn's parameters keep torch.nn's values; and
    reset_parameters() puts the norm's back at 1 and 0."""
    torch.manual_seed(0)
    twin = torch.nn.LSTM(5, 6, 2, bidirectional=True)
    torch.manual_seed(0)
    ours = rnnkernels.LSTM(5, 6, 2, bidirectional=True, **LN)
    state = ours.state_dict()
    added = [f"{n}{sfx}" for sfx in ("_l0", "_l0_reverse", "_l1", "_l1_reverse")
             for n in ("weight_ln_ih", "weight_ln_hh", "weight_ln_c", "bias_ln_c")]
    assert list(state) == list(twin.state_dict()) + added
    assert all(torch.equal(state[k], v) for k, v in twin.state_dict().items())
    for name in added:
        size = 24 if "_c" not in name else 6
        assert state[name].shape == (size,), name
        initial = 0.0 if name.startswith("bias") else 1.0
        assert torch.equal(state[name], torch.full((size,), initial)), name
    with torch.no_grad():
        ours.weight_ln_hh_l1.fill_(7.0)
        ours.bias_ln_c_l0.fill_(7.0)
    ours.reset_parameters()
    assert torch.equal(ours.weight_ln_hh_l1, torch.ones(24))
    assert torch.equal(ours.bias_ln_c_l0, torch.zeros(6))
    assert ours.weight_ih_l0.abs().max() <= 1 / math.sqrt(6)
    cell = rnnkernels.GRUCell(5, 6, num_heads=2, **LN)
    assert [n for n, _ in cell.named_parameters()] == [
        "weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_ln_ih", "weight_ln_hh"]
    assert cell.weight_ln_hh.shape == (18,) and cell.weight_ln_hh.requires_grad


def test_option_attribute_repr_and_round_trip():
    lstm = rnnkernels.LSTM(5, 6, peephole=True, **LN)
    assert lstm.layer_norm is True and rnnkernels.GRU(5, 6).layer_norm is False
    assert repr(lstm) == "LSTM(5, 6, peephole=True, layer_norm=True)"
    assert repr(rnnkernels.GRUCell(5, 6, **LN)) == "GRUCell(5, 6, layer_norm=True)"
    with pytest.raises(AttributeError):
        lstm.layer_norm = False
    with pytest.raises(AttributeError, match="'RNN' object has no attribute 'layer_norm'"):
        rnnkernels.RNN(5, 6).layer_norm
    fresh = _perturbed(rnnkernels.LSTM(5, 6, peephole=True, **LN)).eval()
    lstm.eval().load_state_dict(fresh.state_dict())
    x = torch.randn(4, 3, 5)
    assert torch.equal(lstm(x)[0], fresh(x)[0])
    assert rnnkernels.LSTM(5, 6, layer_norm=False)._variant is None


@pytest.mark.parametrize("mode,value,error", [
    ("LSTM", 1, TypeError), ("GRU", "yes", TypeError), ("LSTMCell", None, TypeError),
    ("GRUCell", 1.0, TypeError), ("RNN", True, TypeError), ("RNNCell", False, TypeError)])
def test_bad_option_raises_torchs_error_type(mode, value, error):
    match = "unexpected keyword argument 'layer_norm'" if mode.startswith("RNN") else \
        f"layer_norm should be of type bool, got: {type(value).__name__}"
    with pytest.raises(error, match=match):
        getattr(rnnkernels, mode)(5, 6, layer_norm=value)


def test_auto_runs_a_combination_on_the_reference_and_named_backends_refuse():
    """Layer norm alone runs on cpu (tests/test_variants_ln_cpu.py); combined with another
    option no fused kernel has it yet."""
    x = torch.randn(4, 2, 5)
    with routing_warnings() as said:
        rnnkernels.GRU(5, 6, num_heads=2, **LN)(x)
    assert said == ["rnnkernels: backend='auto' runs head-wise recurrence, layer norm on the "
                    "'reference' backend (plain PyTorch, not fused): no fused kernel for "
                    "head-wise recurrence, layer norm yet"]
    for backend in ("cpu", "triton", "cuda", "torch"):
        with pytest.raises(RuntimeError, match="cannot run .*layer norm"):
            rnnkernels.LSTM(5, 6, peephole=True, **LN, backend=backend)(x)


def test_packed_output_is_the_padded_run_per_sequence():
    """Each sequence of a packed batch is what it is alone (the norms are per row: no
    statistic crosses batch entries or padding)."""
    torch.manual_seed(0)
    lstm = _perturbed(rnnkernels.LSTM(I, 5, bidirectional=True, **LN,
                                      backend="reference").double())
    x = torch.randn(T, B, I, dtype=torch.float64)
    packed = pack_padded_sequence(x, TV.LENGTHS, enforce_sorted=False)
    out = pad_packed_sequence(lstm(packed)[0], total_length=T)[0]
    for b, n in enumerate(TV.LENGTHS):
        alone = lstm(x[:n, b:b + 1])[0]
        assert_close(out[:n, b:b + 1], alone, f"sequence {b}")
        assert not out[n:, b].any()
