"""The recurrent variants' API: defaults are torch.nn, options are checked with torch's error
types, parameters (layout, initialisation, state_dict, pickles), zoneout's randomness, and the
backend routing (reference only for now, said once under auto; a clear error elsewhere).
The numbers themselves: tests/test_variants.py.
"""
from __future__ import annotations

import copy
import io
import math
import warnings

import pytest
import torch

import rnnkernels
from tests.helpers import MODES, our_class, routing_warnings, torch_class

LAYERS = ["LSTM", "GRU", "RNN_TANH"]
CELLS = ["LSTMCell", "GRUCell", "RNNCell_TANH"]
DEFAULTS = {"LSTM": dict(peephole=False, num_heads=1, zoneout=(0.0, 0.0), layer_norm=False),
            "GRU": dict(num_heads=1, zoneout=0.0, layer_norm=False), "RNN": dict(num_heads=1)}


def make(mode, *args, **kwargs):
    return our_class(mode)(*args, **MODES[mode][1], **kwargs)


def _flat(result):
    return [result] if isinstance(result, torch.Tensor) else [t for r in result for t in _flat(r)]


# ------------------------------------------------------------------------------- defaults
@pytest.mark.parametrize("mode", LAYERS + CELLS)
def test_every_option_at_its_default_is_torch_nn_bitwise(mode):
    """Options spelled out at their defaults: no variant at all. The same parameters as
    torch.nn (same seed), the same state_dict keys, and bitwise the outputs of the plain
    module on each backend, and of torch.nn itself on backend 'torch'."""
    kind = mode.split("_")[0].removesuffix("Cell")
    layout = {} if "Cell" in mode else dict(num_layers=2, bidirectional=True)
    torch.manual_seed(0)
    twin = torch_class(mode)(5, 6, **MODES[mode][1], **layout)
    x = torch.randn(7, 3, 5) if "Cell" not in mode else torch.randn(3, 5)
    for backend in ("reference", "auto", "torch"):
        torch.manual_seed(0)
        plain = make(mode, 5, 6, **layout, backend=backend)
        torch.manual_seed(0)
        ours = make(mode, 5, 6, **layout, **DEFAULTS[kind], backend=backend)
        assert ours._variant is None and repr(ours) == repr(plain)
        state, theirs = ours.state_dict(), twin.state_dict()
        assert list(state) == list(theirs)
        assert all(torch.equal(state[k], theirs[k]) for k in state)
        for a, e in zip(_flat(ours(x)), _flat(plain(x))):
            assert torch.equal(a, e)
        if backend == "torch":
            for a, e in zip(_flat(ours(x)), _flat(twin(x))):
                assert torch.equal(a, e)


# -------------------------------------------------------------------------------- options
BAD = [
    ("LSTM", dict(num_heads=4), ValueError, "hidden_size must be divisible by num_heads"),
    ("GRUCell", dict(num_heads=5), ValueError, "divisible"),
    ("LSTM", dict(num_heads=0), ValueError, "num_heads must be greater than zero"),
    ("RNN_TANH", dict(num_heads=2.0), TypeError, "num_heads should be of type int"),
    ("GRU", dict(num_heads=True), TypeError, "num_heads should be of type int"),
    ("LSTM", dict(num_heads=2, proj_size=3), ValueError, "proj_size"),
    ("LSTM", dict(peephole="yes"), TypeError, "peephole should be of type bool"),
    ("LSTMCell", dict(peephole=1), TypeError, "peephole should be of type bool"),
    ("LSTM", dict(zoneout=1.0), ValueError, r"range \[0, 1\)"),
    ("GRU", dict(zoneout=-0.1), ValueError, r"range \[0, 1\)"),
    ("GRU", dict(zoneout=float("nan")), ValueError, r"range \[0, 1\)"),
    ("LSTM", dict(zoneout="0.1"), TypeError, "zoneout should be a float"),
    ("LSTM", dict(zoneout=True), TypeError, "zoneout should be a float"),
    ("LSTM", dict(zoneout=(0.1,)), ValueError, r"pair \(p_h, p_c\)"),
    ("LSTM", dict(zoneout=(0.1, 1.5)), ValueError, r"zoneout\[1\]"),
    ("LSTMCell", dict(zoneout=(0.1, None)), TypeError, r"zoneout\[1\] should be a float"),
    ("GRU", dict(zoneout=(0.1, 0.2)), TypeError, "one state"),
    ("GRU", dict(peephole=True), TypeError, "peephole"),           # torch's: unexpected keyword
    ("RNN_TANH", dict(zoneout=0.1), TypeError, "zoneout"),
    ("RNNCell_RELU", dict(peephole=False), TypeError, "peephole"),
]


@pytest.mark.parametrize("mode,options,error,match", BAD,
                         ids=[f"{m}-{i}" for i, (m, *_) in enumerate(BAD)])
def test_bad_options_raise_torchs_error_types(mode, options, error, match):
    with pytest.raises(error, match=match):
        make(mode, 5, 6, **options)


def test_options_are_read_only_attributes_and_in_repr():
    lstm = rnnkernels.LSTM(5, 6, peephole=True, num_heads=2, zoneout=[0.1, 0.2],
                           backend="reference")
    assert (lstm.peephole, lstm.num_heads, lstm.zoneout) == (True, 2, (0.1, 0.2))
    assert repr(lstm) == ("LSTM(5, 6, backend='reference', peephole=True, num_heads=2, "
                          "zoneout=(0.1, 0.2))")
    plain = rnnkernels.GRU(5, 6)
    assert (plain.num_heads, plain.zoneout) == (1, 0.0)
    with pytest.raises(AttributeError, match="'GRU' object has no attribute 'peephole'"):
        plain.peephole
    with pytest.raises(AttributeError):
        lstm.num_heads = 3
    cell = rnnkernels.RNNCell(5, 6, num_heads=3, nonlinearity="relu")
    assert repr(cell) == "RNNCell(5, 6, nonlinearity=relu, num_heads=3)"


# ----------------------------------------------------------------------------- parameters
def test_peephole_parameters_names_shapes_and_initialisation():
    """weight_ch_l{k}[_reverse] [3, H] after torch.nn's parameters, drawn after them from
    U(-1/√H, 1/√H) (torch.nn's parameters keep torch.nn's values under the same seed)."""
    torch.manual_seed(0)
    twin = torch.nn.LSTM(5, 6, 2, bidirectional=True)
    expected = [torch.empty(3, 6).uniform_(-1 / math.sqrt(6), 1 / math.sqrt(6))
                for _ in range(4)]
    torch.manual_seed(0)
    ours = rnnkernels.LSTM(5, 6, 2, bidirectional=True, peephole=True)
    state = ours.state_dict()
    names = ["weight_ch_l0", "weight_ch_l0_reverse", "weight_ch_l1", "weight_ch_l1_reverse"]
    assert list(state) == list(twin.state_dict()) + names
    assert all(torch.equal(state[k], v) for k, v in twin.state_dict().items())
    assert all(torch.equal(state[n], e) for n, e in zip(names, expected))
    cell = rnnkernels.LSTMCell(5, 6, peephole=True)
    assert cell.weight_ch.shape == (3, 6) and cell.weight_ch.requires_grad
    with torch.no_grad():
        ours.weight_ch_l1.fill_(7.0)
    ours.reset_parameters()                # torch.nn's, over every parameter: ours too
    assert ours.weight_ch_l1.abs().max() <= 1 / math.sqrt(6)


@pytest.mark.parametrize("mode", ["LSTM", "GRU", "RNN_TANH", "LSTMCell"])
def test_headwise_weight_keeps_its_name_with_a_head_block_per_row(mode):
    ours = make(mode, 5, 12, num_heads=3)
    gates = {"LSTM": 4, "GRU": 3, "RNN": 1}[mode.split("_")[0].removesuffix("Cell")]
    name = "weight_hh" if "Cell" in mode else "weight_hh_l0"
    assert getattr(ours, name).shape == (gates * 12, 4)
    assert list(ours.state_dict()) == list(torch_class(mode)(5, 12).state_dict())
    assert make(mode, 5, 12, num_heads=1)._variant is None    # one head: torch.nn's [G·H, H]


def test_state_dict_pickle_copy_and_dtype_round_trips():
    torch.manual_seed(0)
    lstm = rnnkernels.LSTM(5, 6, 2, peephole=True, num_heads=2, zoneout=0.2).eval()
    x = torch.randn(4, 3, 5)
    want = lstm(x)[0]
    fresh = rnnkernels.LSTM(5, 6, 2, peephole=True, num_heads=2, zoneout=0.2).eval()
    fresh.load_state_dict(lstm.state_dict())
    buffer = io.BytesIO()
    torch.save(lstm, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=True)         # allow-listed classes only
    for other in (fresh, loaded, copy.deepcopy(lstm)):
        assert torch.equal(other(x)[0], want)
    assert repr(loaded) == repr(lstm)
    double = copy.deepcopy(lstm).double()
    torch.testing.assert_close(double(x.double())[0].float(), want)
    half = copy.deepcopy(lstm).bfloat16()
    got = half(x.bfloat16())[0]
    assert got.dtype == torch.bfloat16
    assert ((got.float() - want).norm() / want.norm()) < 2e-2


@pytest.mark.filterwarnings("ignore:`torch.jit.:DeprecationWarning")
def test_torchscript_refuses_a_variant():
    with pytest.raises(RuntimeError, match="cannot compile a LSTM with peephole"):
        torch.jit.script(rnnkernels.LSTM(5, 6, peephole=True))


# -------------------------------------------------------------------------------- zoneout
def test_zoneout_is_reproducible_under_manual_seed_and_eval_draws_nothing():
    lstm = rnnkernels.LSTM(5, 6, 2, zoneout=(0.3, 0.4), backend="reference")
    x = torch.randn(7, 3, 5)
    runs = []
    for seed in (1, 1, 2):
        torch.manual_seed(seed)
        runs.append(_flat(lstm(x)))
    assert all(torch.equal(a, b) for a, b in zip(runs[0], runs[1]))
    assert not torch.equal(runs[0][0], runs[2][0])
    lstm.eval()
    state = torch.get_rng_state()
    first = lstm(x)[0]
    assert torch.equal(torch.get_rng_state(), state) and torch.equal(lstm(x)[0], first)


def test_zoneout_keeps_the_documented_fraction_of_units_exactly_as_drawn():
    """A GRU's zoned-out unit is exactly its previous value, so the masks can be read off the
    outputs: they are the documented draw (bitwise), and their mean is p on a large case."""
    T, B, H, p = 40, 32, 64, 0.3
    gru = rnnkernels.GRU(8, H, zoneout=p, backend="reference")
    x = torch.randn(T, B, 8)
    torch.manual_seed(5)
    out, _ = gru(x)
    torch.manual_seed(5)
    masks = torch.empty(1, T, B, H).bernoulli_(p)[0]
    previous = torch.cat([torch.zeros(1, B, H), out[:-1]])
    kept = out == previous
    assert torch.equal(kept, masks.bool())
    assert abs(kept.float().mean().item() - p) < 0.01


# -------------------------------------------------------------------------------- routing
def test_auto_runs_variants_on_the_reference_and_says_so_once():
    """Layer norm with a peephole has no fused kernel yet (variants.KERNELS, ALONE): auto runs
    it on the reference and says so once; a variant with a fused kernel on the CPU says
    nothing."""
    lstm = rnnkernels.LSTM(5, 6, peephole=True, layer_norm=True)
    x = torch.randn(4, 2, 5)
    with routing_warnings() as said:
        lstm(x)
        lstm(x)
        rnnkernels.LSTM(5, 6, peephole=True, layer_norm=True, backend="reference")(x)
        rnnkernels.LSTM(5, 6, peephole=True)(x)          # the cpu kernel: nothing to say
    assert said == ["rnnkernels: backend='auto' runs peephole, layer norm on the 'reference' "
                    "backend (plain PyTorch, not fused): no fused kernel for peephole, layer "
                    "norm yet"]


@pytest.mark.parametrize("backend", ["torch", "cpu", "triton", "cuda"])
def test_a_backend_without_the_variant_raises(backend):
    x = torch.randn(4, 2, 5)
    for module, what in ((rnnkernels.GRU(5, 6, num_heads=2, layer_norm=True, backend=backend),
                          "layer norm"),
                         (rnnkernels.LSTMCell(5, 6, layer_norm=True, num_heads=2,
                                              backend=backend), "layer norm")):
        match = f"backend 'torch' .* cannot run .*{what}.*torch.nn has no such variant" \
            if backend == "torch" else f"backend '{backend}' cannot run .*{what}.*no fused kernel"
        with pytest.raises(RuntimeError, match=match):
            module(x if isinstance(module, torch.nn.GRU) else x[0])


def test_a_fused_backend_runs_the_variants_it_has():
    """cpu (and triton, through its interpreter here) run peephole, head-wise and zoneout."""
    x = torch.randn(4, 2, 5)
    for backend in ("cpu", "triton"):
        if backend not in rnnkernels.available_backends("cpu"):
            continue
        torch.manual_seed(0)
        fused = rnnkernels.GRU(5, 6, num_heads=2, zoneout=0.1, backend=backend).eval()
        ref = rnnkernels.GRU(5, 6, num_heads=2, zoneout=0.1, backend="reference").eval()
        ref.load_state_dict(fused.state_dict())
        torch.testing.assert_close(fused(x)[0], ref(x)[0], rtol=1e-5, atol=1e-6)


def test_variants_differentiate_in_every_autograd_mode():
    """No torch route is needed: the variants are differentiable PyTorch, so forward-mode AD
    and torch.func transforms run them (on the reference) and agree with backward."""
    torch.manual_seed(0)
    gru = rnnkernels.GRU(3, 4, num_heads=2, backend="reference").double()
    x, v = torch.randn(5, 2, 3, dtype=torch.float64), torch.randn(5, 2, 3, dtype=torch.float64)
    _, tangent = torch.func.jvp(lambda t: gru(t)[0].sum(), (x,), (v,))
    grad = torch.func.grad(lambda t: gru(t)[0].sum())(x)
    torch.testing.assert_close(tangent, (grad * v).sum())


@pytest.mark.parametrize("cls,kw", [("LSTM", {"peephole": True}), ("GRU", {"num_heads": 2}),
                                    ("LSTMCell", {"zoneout": 0.1})])
def test_revert_refuses_a_variant(cls, kw):
    """torch.nn has no such module: reverting must not silently drop the variant's terms."""
    m = torch.nn.Sequential(getattr(rnnkernels, cls)(3, 4, **kw))
    with pytest.raises(ValueError, match="revert: this .* uses .* which torch.nn"):
        rnnkernels.revert(m)


def test_torch_compile_fullgraph_runs_the_variants():
    """The variants' backend choice is a constant of the graph (_dynamo_setup.py): fullgraph
    compiles of fused variants (cpu), a reference one (layer norm with heads) and the sLSTM
    equal eager."""
    torch.manual_seed(0)
    x = torch.randn(5, 3, 4)
    for module in (rnnkernels.LSTM(4, 6, peephole=True, num_heads=2, zoneout=0.1).eval(),
                   rnnkernels.GRU(4, 6, layer_norm=True),
                   rnnkernels.GRU(4, 6, num_heads=2, layer_norm=True),
                   rnnkernels.SLSTM(4, 6, num_heads=2)):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)   # auto's "runs ... on the reference"
            eager = module(x)
            compiled = torch.compile(module, fullgraph=True, backend="eager")(x)
        torch.testing.assert_close(compiled, eager)
