"""Locked (variational) dropout of the layers: ``locked_dropout``, ``input_dropout``,
``output_dropout`` (rnnkernels/dropout.py, docs/VARIANTS.md).

The oracle is written here in plain PyTorch as AWD-LSTM's user code would be: one single-layer
recurrence per layer (``tests/variants_oracle.py``'s independent per-sequence loop, which also
takes zoneout masks), masks drawn as the docs state (zoneout's first, then the input mask
``torch.empty(B, I).bernoulli_(1 - p) / (1 - p)``, the inter-layer masks in layer order, the
output mask) and multiplied into every step. With the same seed the module must give the same
outputs, states and gradients. Then: the routing (a module whose only variant is locked dropout
runs the plain fused scans; ``backend="torch"`` and the torch.func transforms run torch's RNN
with the same masks), eval, the masks' statistics, every autograd mode, the option errors.
Weight drop: tests/test_weight_drop.py.
"""
from __future__ import annotations

import warnings

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import rnnkernels
from rnnkernels import variants as V
from tests import variants_oracle as oracle
from tests.helpers import MODES, assert_close, cpu_backends, our_class

F64 = torch.float64
T, B, I, H = 5, 3, 4, 6
LENGTHS = [4, 5, 2]            # unsorted, one full length


def build(mode, backend, dtype=F64, **kwargs):
    torch.manual_seed(0)
    return our_class(mode)(I, H, **MODES[mode][1], **kwargs, backend=backend).to(dtype)


def keep_mask(batch, size, p, dtype):
    if p == 0:
        return None
    m = torch.empty(batch, size, dtype=dtype).bernoulli_(1 - p)
    return m / (1 - p) if p < 1 else m


def oracle_run(mode, module, params, x, lengths, hx, seed):
    """The module's training forward in plain PyTorch: x [T, B, I] in the length-sorted batch
    order (the order the masks are drawn for), hx per state [L·D, B, size]; ``params`` by name
    (``module`` gives only the configuration)."""
    dirs = 2 if module.bidirectional else 1
    L, P = module.num_layers, module.proj_size if mode == "LSTM" else 0
    sizes = [P or H, H][:len(hx)]
    zoneout = getattr(module, "zoneout", 0.0)
    zoneout = zoneout if isinstance(zoneout, tuple) else (zoneout,) * 2
    torch.manual_seed(seed)
    zmasks = [torch.empty(L * dirs, T, x.shape[1], s, dtype=x.dtype).bernoulli_(p) if p else None
              for p, s in zip(zoneout, sizes)]
    m_in = keep_mask(x.shape[1], I, module.input_dropout, x.dtype)
    layer_in = x if m_in is None else x * m_in
    finals = [[] for _ in hx]
    for layer in range(L):
        k = slice(layer * dirs, (layer + 1) * dirs)
        own = {n.replace(f"_l{layer}", "_l0"): p for n, p in params.items() if f"_l{layer}" in n}
        out, states = oracle.run(mode, own, layer_in, lengths, [h[k] for h in hx],
                                 bidirectional=dirs == 2, num_heads=module.num_heads,
                                 zoneout=zoneout, training=True,
                                 masks=[z if z is None else z[k] for z in zmasks])
        for acc, s in zip(finals, states):
            acc.append(s)
        if layer < L - 1 and module.dropout > 0:
            assert module.locked_dropout, "the oracle is for locked inter-layer dropout"
            out = out * keep_mask(x.shape[1], out.shape[-1], module.dropout, x.dtype)
        layer_in = out
    m_out = keep_mask(x.shape[1], layer_in.shape[-1], module.output_dropout, x.dtype)
    return layer_in if m_out is None else layer_in * m_out, [torch.cat(f) for f in finals]


def module_run(module, x, lengths, hx, seed, packed, batch_first=False):
    """The module on x [T, B, I] (packed with unsorted lengths, or padded): (out [T, B, *] zero
    beyond each length, final states), the batch in x's order."""
    inp = x.transpose(0, 1) if batch_first else x
    if packed:
        inp = pack_padded_sequence(inp, lengths, batch_first=batch_first, enforce_sorted=False)
    torch.manual_seed(seed)
    out, states = module(inp, tuple(hx) if len(hx) == 2 else hx[0])
    if packed:
        out = pad_packed_sequence(out, batch_first=batch_first, total_length=T)[0]
    out = out.transpose(0, 1) if batch_first else out
    return out, list(states) if len(hx) == 2 else [states]


CASES = [    # (id, mode, constructor options, packed, batch_first)
    ("lstm-L3-bidir-proj", "LSTM", dict(num_layers=3, bidirectional=True, proj_size=4,
                                        dropout=0.5, locked_dropout=True, input_dropout=0.3,
                                        output_dropout=0.4), False, False),
    ("gru-L2-packed", "GRU", dict(num_layers=2, dropout=0.4, locked_dropout=True,
                                  input_dropout=0.5, output_dropout=0.2), True, False),
    ("rnn-relu-L2-batch-first", "RNN_RELU", dict(num_layers=2, dropout=0.5,
                                                 locked_dropout=True), False, True),
    ("lstm-in-out-only", "LSTM", dict(input_dropout=0.5, output_dropout=1.0), True, True),
    # with recurrent variants: zoneout's masks come first, then the locked ones
    ("lstm-zoneout-L2-packed", "LSTM", dict(num_layers=2, dropout=0.5, locked_dropout=True,
                                            input_dropout=0.2, output_dropout=0.3,
                                            zoneout=(0.3, 0.2)), True, False),
    ("gru-heads-bidir", "GRU", dict(num_layers=2, bidirectional=True, num_heads=2, dropout=0.3,
                                    locked_dropout=True, output_dropout=0.5), False, False),
]


def case_params():
    """Each case on auto and on every CPU backend that runs its recurrence: all of them for
    the plain one (the locked dropouts run in the stack, on any backend), those of
    ``variants.KERNELS`` implementing the recurrent options otherwise."""
    params = []
    for case in CASES:
        module = build(case[1], "reference", **case[2])
        recurrent = module._variant.recurrent()
        names = [b for b in cpu_backends(F64) if not recurrent
                 or all(o in V.KERNELS.get(b, ("", ()))[1] for o in recurrent)]
        params += [pytest.param(case, b, id=f"{case[0]}-{b}") for b in ["auto", *names]]
    return params


@pytest.mark.filterwarnings("ignore:rnnkernels. backend='auto' runs")
@pytest.mark.parametrize("case,backend", case_params())
def test_same_masks_outputs_and_gradients_as_the_plain_pytorch_oracle(case, backend):
    _, mode, options, packed, batch_first = case
    module = build(mode, backend, batch_first=batch_first, **options).train()
    dirs = 2 if module.bidirectional else 1
    lengths = LENGTHS if packed else [T] * B
    valid = (torch.arange(T)[:, None] < torch.tensor(lengths)[None, :])[..., None]
    x = (torch.randn(T, B, I, dtype=F64) * valid).requires_grad_(True)
    sizes = [module.proj_size or H, H] if mode == "LSTM" else [H]
    hx = [torch.randn(module.num_layers * dirs, B, s, dtype=F64, requires_grad=True)
          for s in sizes]
    out, states = module_run(module, x, lengths, hx, seed=11, packed=packed,
                             batch_first=batch_first)
    # the oracle sees the length-sorted batch, the order in which the masks are drawn
    order = torch.tensor(sorted(range(B), key=lambda b: -lengths[b])) if packed \
        else torch.arange(B)
    ref_params = {n: p.detach().clone().requires_grad_(True)
                  for n, p in module.named_parameters()}
    ref_out, ref_states = oracle_run(mode, module, ref_params, x[:, order],
                                     [lengths[b] for b in order], [h[:, order] for h in hx],
                                     seed=11)
    back = torch.argsort(order)
    ref_out, ref_states = ref_out[:, back], [s[:, back] for s in ref_states]
    for a, e, what in zip([out, *states], [ref_out, *ref_states], ["output", "h_n", "c_n"]):
        assert_close(a, e, what)
    assert out.abs().sum() > 0 or options.get("output_dropout") == 1.0
    weights = [torch.randn_like(t) for t in [out, *states]]
    loss = sum((w * t).sum() for w, t in zip(weights, [out, *states]))
    ref_loss = sum((w * t).sum() for w, t in zip(weights, [ref_out, *ref_states]))
    names = list(ref_params)
    got = torch.autograd.grad(loss, [x, *hx, *module.parameters()])
    want = torch.autograd.grad(ref_loss, [x, *hx, *ref_params.values()], allow_unused=True)
    for g, w, what in zip(got, want, ["x", "h0", *(["c0"] if mode == "LSTM" else []), *names]):
        assert_close(g, torch.zeros_like(g) if w is None else w, f"grad of {what}")


def test_only_locked_dropout_runs_the_plain_fused_scans(monkeypatch):
    """No recurrent variant: auto and a named fused backend run the plain scans (the variants'
    scan entry is never reached) and no reference warning is given."""
    if "cpu" not in cpu_backends():
        pytest.skip("the compiled cpu backend is not available")

    def refuse(*args, **kwargs):
        raise AssertionError("a locked-dropout-only module reached the variants' scan")

    monkeypatch.setattr(rnnkernels.ops.variants, "scan", refuse)
    x = torch.randn(T, B, I)
    for backend in ("auto", "cpu"):
        m = rnnkernels.GRU(I, H, 2, dropout=0.5, locked_dropout=True, input_dropout=0.2,
                           output_dropout=0.1, backend=backend)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            m(x)[0].sum().backward()
            torch.manual_seed(4)
            one = m(x[:1])[0]                                # T = 1: the fused step per layer
        twin = rnnkernels.GRU(I, H, 2, dropout=0.5, locked_dropout=True, input_dropout=0.2,
                              output_dropout=0.1, backend="torch")
        twin.load_state_dict(m.state_dict())
        torch.manual_seed(4)
        assert_close(one, twin(x[:1])[0], "T = 1")


# ------------------------------------------------------------------------------------ routes
def _flat(result):
    return [result] if isinstance(result, torch.Tensor) else [t for r in result for t in _flat(r)]


@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("mode,options", [
    ("LSTM", dict(num_layers=3, bidirectional=True, proj_size=3, dropout=0.5,
                  locked_dropout=True, input_dropout=0.3, output_dropout=0.2)),
    ("GRU", dict(num_layers=2, dropout=0.5, input_dropout=0.4)),       # torch's own dropout
], ids=["lstm-locked", "gru-unlocked"])
def test_torch_route_draws_the_same_masks(mode, options, packed):
    """backend="torch" runs torch's own RNN (per layer when the inter-layer masks are locked)
    with the masks of the scans: the same results under the same seed, packed too."""
    x = torch.randn(T, B, I, dtype=F64)
    inp = pack_padded_sequence(x, LENGTHS, enforce_sorted=False) if packed else x
    results = []
    for backend in ("torch", *cpu_backends(F64)):
        module = build(mode, backend, **options)
        torch.manual_seed(3)
        results.append([t for t in _flat(module(inp)) if t.is_floating_point()])
    for other in results[1:]:
        for a, e in zip(other, results[0], strict=True):
            assert_close(a, e, "output/states")


@pytest.mark.filterwarnings("ignore:`torch.jit.:DeprecationWarning")   # torch.func's import
def test_torch_func_transforms_and_forward_ad_match_the_scans():
    """Under a torch.func transform (torch's kernels, with the same masks) the gradient is the
    one backward() gives on the fused scans; forward-mode AD's tangent is its directional
    derivative."""
    module = build("LSTM", "auto", num_layers=2, dropout=0.5, locked_dropout=True,
                   input_dropout=0.3, output_dropout=0.3)
    x = torch.randn(T, B, I, dtype=F64, requires_grad=True)

    def loss(inp):
        torch.manual_seed(5)
        return module(inp)[0].pow(2).sum()

    loss(x).backward()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)     # auto → torch's RNN, said once
        grad = torch.func.grad(loss)(x)
    assert_close(grad, x.grad, "torch.func.grad")
    tangent = torch.randn_like(x)
    _, jvp = torch.func.jvp(loss, (x.detach(),), (tangent,))
    assert_close(jvp, (x.grad * tangent).sum(), "jvp")


@pytest.mark.parametrize("backend", cpu_backends(F64))
def test_gradcheck_and_gradgradcheck(backend):
    """float64 first and second derivatives through the locked masks (the same masks at every
    evaluation: the seed is set inside), on each backend's plain scans: of the input, h0 and
    the weights on both sides of the inter-layer mask."""
    module = build("GRU", backend, num_layers=2, dropout=0.5, locked_dropout=True,
                   input_dropout=0.3, output_dropout=0.4)
    names = ["weight_hh_l0", "weight_ih_l1"]
    fixed = {n: p.detach() for n, p in module.named_parameters() if n not in names}

    def fn(x, h0, *weights):
        torch.manual_seed(1)
        params = {**fixed, **dict(zip(names, weights))}
        return torch.func.functional_call(module, params, (x, h0))

    x = torch.randn(3, 2, I, dtype=F64, requires_grad=True)
    h0 = torch.randn(2, 2, H, dtype=F64, requires_grad=True)
    weights = [getattr(module, n).detach().clone().requires_grad_(True) for n in names]
    assert torch.autograd.gradcheck(fn, (x, h0, *weights))
    assert torch.autograd.gradgradcheck(fn, (x, h0, *weights), fast_mode=True)


# ------------------------------------------------------------------------- eval, statistics
def test_eval_is_the_plain_module_and_draws_nothing():
    for backend in ("auto", "torch"):
        module = build("LSTM", backend, num_layers=2, dropout=0.5, locked_dropout=True,
                       input_dropout=0.5, output_dropout=0.5).eval()
        torch.manual_seed(0)
        twin = torch.nn.LSTM(I, H, 2, dropout=0.5).to(F64).eval()
        twin.load_state_dict(module.state_dict())
        x = torch.randn(T, B, I, dtype=F64)
        rng = torch.get_rng_state()
        for a, e in zip(_flat(module(x)), _flat(twin(x))):
            assert_close(a, e, "eval")
        assert torch.equal(torch.get_rng_state(), rng), "eval drew random numbers"


def test_output_mask_is_one_per_sequence_with_the_rate_and_scale_of_dropout():
    """Train / eval of a module with only output dropout is the mask itself: constant over
    time, 0 or 1/(1-p), and at 64·256 units (fixed seed) a dropped fraction within 0.02 of p."""
    p = 0.3
    torch.manual_seed(0)
    module = rnnkernels.GRU(8, 256, output_dropout=p)
    x = torch.randn(10, 64, 8)
    with torch.no_grad():
        torch.manual_seed(1)
        train = module(x)[0]
        ratio = train / module.eval()(x)[0]
    dropped = train == 0
    assert torch.equal(dropped, dropped[:1].expand_as(dropped)), "the mask changes over time"
    assert_close(ratio[~dropped], torch.full_like(ratio[~dropped], 1 / (1 - p)), "the scale")
    assert abs(float(dropped[0].float().mean()) - p) < 0.02


# -------------------------------------------------------------------------------------- API
def test_options_repr_attributes_and_defaults():
    m = rnnkernels.LSTM(3, 4, 2, dropout=0.2, locked_dropout=True, output_dropout=0.1)
    assert repr(m) == ("LSTM(3, 4, num_layers=2, dropout=0.2, locked_dropout=True, "
                       "output_dropout=0.1)")
    assert (m.locked_dropout, m.input_dropout, m.output_dropout) == (True, 0.0, 0.1)
    with pytest.raises(AttributeError):
        m.locked_dropout = False
    plain = rnnkernels.GRU(3, 4, locked_dropout=False, input_dropout=0, output_dropout=0.0)
    assert plain._variant is None and plain.output_dropout == 0.0
    assert not hasattr(rnnkernels.GRUCell(3, 4), "locked_dropout")
    with pytest.raises(TypeError, match="locked_dropout"):
        rnnkernels.LSTMCell(3, 4, locked_dropout=True)      # torch's unexpected keyword


@pytest.mark.parametrize("options,error,match", [
    (dict(input_dropout=1.5), ValueError, "input_dropout probability has to be between 0 and 1"),
    (dict(output_dropout=-0.1), ValueError, "output_dropout probability has to be between"),
    (dict(input_dropout=float("nan")), ValueError, "between 0 and 1"),
    (dict(output_dropout="0.5"), TypeError, "output_dropout should be a float"),
    (dict(input_dropout=True), TypeError, "input_dropout should be a float"),
    (dict(locked_dropout=1), TypeError, "locked_dropout should be of type bool"),
], ids=lambda v: str(v) if not isinstance(v, type) else v.__name__)
def test_bad_options_raise_torchs_error_types(options, error, match):
    with pytest.raises(error, match=match):
        rnnkernels.RNN(3, 4, **options)


def test_recurrent_variants_keep_their_routing_and_messages():
    """The locked dropouts are no reason to leave the plain scans, and no part of a recurrent
    variant's message; backend="torch" still refuses a recurrent variant."""
    m = rnnkernels.GRU(3, 4, zoneout=0.1, locked_dropout=True, output_dropout=0.2,
                       backend="torch")
    with pytest.raises(RuntimeError, match=r"cannot run zoneout: torch.nn has no"):
        m(torch.randn(2, 1, 3))

