"""The custom ops themselves: ``torch.library.opcheck`` and float64 ``gradcheck``.

``torch.ops.rnnkernels.{lstm,gru,rnn}_scan`` and their ``*_scan_backward`` ops are what
``torch.compile`` and ``torch.export`` see. opcheck verifies, for each op, that the schema tells
the truth (no hidden mutation or aliasing), that the fake (meta) impl returns the shapes, dtypes
and strides of the real one, that autograd is registered where inputs need grad, and that the op
survives AOT dispatch with dynamic shapes. gradcheck verifies the registered backward formula
(the backend's reverse scan plus the op's weight-gradient GEMMs) against finite differences.

Variants: LSTM with and without projection, GRU with and without ``b_hn``, RNN tanh and relu;
each crossed with a covering set of (dtype, lengths, reverse) that holds every pair of values
(an orthogonal array of 4 rows over the three binary axes), on every CPU backend except the
Triton interpreter (slow; its kernels are covered by their own tests).
"""
from __future__ import annotations

import dataclasses

import pytest
import torch

from tests.helpers import DTYPE_NAMES, backend_params, cpu_backends

OPS = torch.ops.rnnkernels

# (T, B, H, P): odd sizes, P != H so a projection that mixes up P and H changes a shape.
DIMS = (4, 3, 5, 3)
# gradcheck differentiates every element: smaller, still P != H and B = 3 for unsorted lengths.
GRAD_DIMS = (3, 3, 3, 2)

# Orthogonal array over (dtype, lengths, reverse): every pair of values of any two axes occurs.
COVER = [
    (torch.float32, False, False),
    (torch.float32, True, True),
    (torch.float64, False, True),
    (torch.float64, True, False),
]


@dataclasses.dataclass(frozen=True)
class Variant:
    cell: str          # "lstm", "gru", "rnn"
    flag: bool         # lstm: has projection; gru: has b_hn; rnn: relu

    @property
    def id(self) -> str:
        return {("lstm", False): "lstm", ("lstm", True): "lstm_proj",
                ("gru", True): "gru", ("gru", False): "gru_nobias",
                ("rnn", False): "rnn_tanh", ("rnn", True): "rnn_relu"}[(self.cell, self.flag)]

    @property
    def gates(self) -> int:
        return {"lstm": 4, "gru": 3, "rnn": 1}[self.cell]

    def out_size(self, H: int, P: int) -> int:
        return P if (self.cell == "lstm" and self.flag) else H


VARIANTS = [Variant("lstm", False), Variant("lstm", True), Variant("gru", True),
            Variant("gru", False), Variant("rnn", False), Variant("rnn", True)]


def _rand(shape, dtype, seed, scale=1.0, grad=False, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    t = (torch.randn(shape, generator=g, dtype=torch.float64) * scale).to(dtype=dtype,
                                                                           device=device)
    return t.requires_grad_(grad)


def seq_lengths(T: int, B: int) -> list[int]:
    """Unsorted, containing T and 1, so reverse-within-length and frozen states both occur."""
    assert B == 3
    return [T, 1, T - 1]


def forward_args(v: Variant, dtype, lengths: bool, reverse: bool, save: bool, backend: str,
                 grad: bool = False, dims=DIMS, device="cpu") -> tuple:
    """Arguments of ``<cell>_scan`` in schema order. Weights are scaled by 1/sqrt(fan-in) like a
    default init so activations stay off saturation (a saturated gate hides a wrong derivative)."""
    T, B, H, P = dims
    G, Po = v.gates * H, v.out_size(H, P)
    kw = dict(grad=grad, device=device)
    xp = _rand((T, B, G), dtype, 1, **kw)
    h0 = _rand((B, Po), dtype, 2, 0.5, **kw)
    w_hh = _rand((G, Po), dtype, 3, Po ** -0.5, **kw)
    lens = torch.tensor(seq_lengths(T, B), dtype=torch.long, device=device) if lengths else None
    if v.cell == "lstm":
        c0 = _rand((B, H), dtype, 4, 0.5, **kw)
        w_hr = _rand((P, H), dtype, 5, H ** -0.5, **kw) if v.flag else None
        return (xp, h0, c0, w_hh, w_hr, lens, reverse, save, backend)
    if v.cell == "gru":
        b_hn = _rand((H,), dtype, 6, 0.5, **kw) if v.flag else None
        return (xp, h0, w_hh, b_hn, lens, reverse, save, backend)
    return (xp, h0, w_hh, lens, reverse, v.flag, save, backend)


def backward_args(v: Variant, dtype, lengths: bool, reverse: bool, backend: str,
                  device="cpu") -> tuple:
    """Arguments of ``<cell>_scan_backward``: workspaces from a real forward, random grads."""
    fwd = forward_args(v, dtype, lengths, reverse, True, backend, device=device)
    res = getattr(OPS, f"{v.cell}_scan")(*fwd)
    out = res[0]
    g_out = _rand(out.shape, dtype, 11, device=device)
    g_hn = _rand(res[1].shape, dtype, 12, device=device)
    if v.cell == "lstm":
        xp, h0, c0, w_hh, w_hr, lens, rev, _save, be = fwd
        g_cn = _rand(c0.shape, dtype, 13, device=device)
        return (g_out, g_hn, g_cn, h0, c0, w_hh, w_hr, lens, rev, be, out, res[3], res[4])
    if v.cell == "gru":
        xp, h0, w_hh, b_hn, lens, rev, _save, be = fwd
        return (g_out, g_hn, h0, w_hh, b_hn, lens, rev, be, out, res[2], res[3])
    xp, h0, w_hh, lens, rev, relu, _save, be = fwd
    return (g_out, g_hn, h0, w_hh, lens, rev, relu, be, out)


def _cover_params(rows=COVER):
    params = []
    for v in VARIANTS:
        for dtype, lengths, reverse in rows:
            for bp in backend_params(dtype):
                backend = bp.values[0]
                cid = (f"{v.id}-{DTYPE_NAMES[dtype]}-{'len' if lengths else 'nolen'}-"
                       f"{'rev' if reverse else 'fwd'}-{backend}")
                params.append(pytest.param(v, dtype, lengths, reverse, backend, id=cid))
    return params


# ------------------------------------------------------------------------------------- opcheck
# opcheck's slow part is test_aot_dispatch_dynamic (~1-2 s a call here: symbolic tracing of the
# op and its backward). It runs on two complementary rows of COVER (every value of each axis,
# lengths included, which is where a backend's output could depend on uninitialised memory);
# the other two rows get the cheap checks (schema, autograd registration, fake impl vs real).
FULL_ROWS = (COVER[1], COVER[2])
CHEAP_UTILS = ("test_schema", "test_autograd_registration", "test_faketensor")


@pytest.mark.parametrize("v,dtype,lengths,reverse,backend", _cover_params())
def test_opcheck_scan(v, dtype, lengths, reverse, backend):
    """The forward op with inputs that need grad (so the autograd registration and the AOT
    dispatch of its backward are part of the check)."""
    op = getattr(OPS, f"{v.cell}_scan")
    args = forward_args(v, dtype, lengths, reverse, True, backend, grad=True)
    if (dtype, lengths, reverse) in FULL_ROWS:
        torch.library.opcheck(op, args)         # the default: all four checks
    else:
        torch.library.opcheck(op, args, test_utils=CHEAP_UTILS)


@pytest.mark.parametrize("v", [pytest.param(v, id=v.id) for v in VARIANTS])
@pytest.mark.parametrize("backend", backend_params(torch.float32))
def test_opcheck_scan_inference(v, backend):
    """save=False: the workspaces are empty, and the fake impl must say exactly that (shape (0,),
    the accumulation dtype), or a compiled inference graph gets wrong metadata."""
    op = getattr(OPS, f"{v.cell}_scan")
    args = forward_args(v, torch.float32, True, False, False, backend)
    torch.library.opcheck(op, args)


# The forward opcheck above already traces the backward op through AOT autograd (its fake impl
# included); here two complementary rows (every value of every axis) keep the runtime down.
@pytest.mark.parametrize("v,dtype,lengths,reverse,backend", _cover_params(FULL_ROWS))
def test_opcheck_scan_backward(v, dtype, lengths, reverse, backend):
    """The backward op (no autograd of its own: a double backward runs the reference's
    differentiable backward instead, so its inputs do not require grad)."""
    op = getattr(OPS, f"{v.cell}_scan_backward")
    torch.library.opcheck(op, backward_args(v, dtype, lengths, reverse, backend))


@pytest.mark.triton_subset
@pytest.mark.parametrize("v", [pytest.param(Variant("lstm", True), id="lstm_proj"),
                               pytest.param(Variant("gru", True), id="gru"),
                               pytest.param(Variant("rnn", True), id="rnn_relu")])
def test_opcheck_scan_triton_interpreter(v):
    """One case per cell through the Triton kernels (under the CPU interpreter here: slow), with
    lengths (workspaces past a sequence's end must be deterministic) and odd T (the final state
    must not be a view into a ping-pong buffer: the fake impl promises a fresh tensor)."""
    if "triton" not in cpu_backends(torch.float32):
        pytest.skip("triton backend is not available on the CPU (TRITON_INTERPRET unset)")
    args = forward_args(v, torch.float32, True, True, True, "triton", grad=True,
                        dims=GRAD_DIMS)
    torch.library.opcheck(getattr(OPS, f"{v.cell}_scan"), args)


CUDA_BACKENDS = ("triton", "cuda", "reference")


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("backend", CUDA_BACKENDS)
@pytest.mark.parametrize("v,dtype,lengths,reverse",
                         [pytest.param(v, dt, ln, rv, id=f"{v.id}-{DTYPE_NAMES[dt]}-"
                                       f"{'len' if ln else 'nolen'}-{'rev' if rv else 'fwd'}")
                          for v in VARIANTS for dt, ln, rv in COVER])
def test_opcheck_scan_cuda(v, dtype, lengths, reverse, backend):
    import rnnkernels
    if backend not in rnnkernels.available_backends("cuda", dtype):
        pytest.skip(f"backend {backend!r} is not available for cuda/{dtype}")
    fwd = forward_args(v, dtype, lengths, reverse, True, backend, grad=True, device="cuda")
    torch.library.opcheck(getattr(OPS, f"{v.cell}_scan"), fwd)
    bwd = backward_args(v, dtype, lengths, reverse, backend, device="cuda")
    torch.library.opcheck(getattr(OPS, f"{v.cell}_scan_backward"), bwd)


def test_all_six_ops_are_registered_with_fake_impls():
    """The six ops exist in the rnnkernels namespace and each has a Meta/fake kernel, so a model
    using them can be traced without data."""
    names = [f"{c}_scan{s}" for c in ("lstm", "gru", "rnn") for s in ("", "_backward")]
    for name in names:
        packet = getattr(OPS, name)
        assert torch._C._dispatch_has_kernel_for_dispatch_key(packet.default.name(), "Meta"), \
            f"rnnkernels::{name} has no Meta (fake) kernel"


@pytest.mark.parametrize("v", [pytest.param(v, id=v.id) for v in VARIANTS])
def test_fake_impl_shapes_without_data(v):
    """Run each forward op and its backward under FakeTensorMode: shapes and dtypes come from the
    fake impls alone and equal the real results' (checked on a real run of the reference)."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    real_f = getattr(OPS, f"{v.cell}_scan")(
        *forward_args(v, torch.float32, True, True, True, "reference"))
    real_b = getattr(OPS, f"{v.cell}_scan_backward")(
        *backward_args(v, torch.float32, True, True, "reference"))
    with FakeTensorMode() as mode:
        fwd = tuple(mode.from_tensor(a) if isinstance(a, torch.Tensor) else a
                    for a in forward_args(v, torch.float32, True, True, True, "reference"))
        fake_f = getattr(OPS, f"{v.cell}_scan")(*fwd)
        bwd = tuple(mode.from_tensor(a) if isinstance(a, torch.Tensor) else a
                    for a in backward_args(v, torch.float32, True, True, "reference"))
        fake_b = getattr(OPS, f"{v.cell}_scan_backward")(*bwd)
    for what, reals, fakes in (("forward", real_f, fake_f), ("backward", real_b, fake_b)):
        assert len(reals) == len(fakes)
        for k, (r, f) in enumerate(zip(reals, fakes)):
            assert tuple(f.shape) == tuple(r.shape), f"{what} output {k}: {f.shape} vs {r.shape}"
            assert f.dtype == r.dtype, f"{what} output {k}: {f.dtype} vs {r.dtype}"


# ----------------------------------------------------------------------------------- gradcheck
def _gradcheck_fn(v: Variant, nondiff: dict):
    """The op as a function of its differentiable inputs, returning only the real outputs (the
    workspaces are saved for backward, not differentiable results)."""
    op = getattr(OPS, f"{v.cell}_scan")
    lens, reverse, backend = nondiff["lengths"], nondiff["reverse"], nondiff["backend"]
    if v.cell == "lstm":
        def f(xp, h0, c0, w_hh, *w_hr):
            out, h_n, c_n, _, _ = op(xp, h0, c0, w_hh, w_hr[0] if w_hr else None, lens, reverse,
                                     True, backend)
            return out, h_n, c_n
    elif v.cell == "gru":
        def f(xp, h0, w_hh, *b_hn):
            out, h_n, _, _ = op(xp, h0, w_hh, b_hn[0] if b_hn else None, lens, reverse, True,
                                backend)
            return out, h_n
    else:
        def f(xp, h0, w_hh):
            return tuple(op(xp, h0, w_hh, lens, reverse, v.flag, True, backend))
    return f


def _relu_preactivations(xp, h0, w_hh, lengths, reverse) -> torch.Tensor:
    """Every active pre-activation of an Elman relu scan, written out per sequence."""
    pres = []
    for b in range(xp.shape[1]):
        L = xp.shape[0] if lengths is None else int(lengths[b])
        h = h0[b]
        for s in range(L):
            t = L - 1 - s if reverse else s
            pre = xp[t, b] + w_hh @ h
            h = torch.relu(pre)
            pres.append(pre)
    return torch.stack(pres)


def _gradcheck_params():
    params = []
    for v in VARIANTS:
        for lengths, reverse in ((False, False), (True, True), (True, False)):
            for bp in backend_params(torch.float64):
                backend = bp.values[0]
                cid = f"{v.id}-{'len' if lengths else 'nolen'}-{'rev' if reverse else 'fwd'}-" \
                      f"{backend}"
                params.append(pytest.param(v, lengths, reverse, backend, id=cid))
    return params


@pytest.mark.parametrize("v,lengths,reverse,backend", _gradcheck_params())
def test_gradcheck_scan(v, lengths, reverse, backend):
    args = forward_args(v, torch.float64, lengths, reverse, True, backend, grad=True,
                        dims=GRAD_DIMS)
    if v.cell == "lstm":
        diff = [a for a in args[:5] if a is not None]
        lens = args[5]
    elif v.cell == "gru":
        diff = [a for a in args[:4] if a is not None]
        lens = args[4]
    else:
        diff = list(args[:3])
        lens = args[3]
    if v.cell == "rnn" and v.flag:
        # relu's kink: finite differences across it are meaningless. The seeds keep every
        # pre-activation away from 0 by far more than eps, and both signs occur (so the zero
        # branch of the derivative is exercised); asserted so a change of seeds is caught.
        pre = _relu_preactivations(*[a.detach() if isinstance(a, torch.Tensor) else a
                                     for a in args[:5]])
        assert pre.abs().min() > 1e-3, "a relu pre-activation sits at the kink"
        assert (pre > 0).any() and (pre < 0).any(), "relu case should have both signs"
    f = _gradcheck_fn(v, dict(lengths=lens, reverse=reverse, backend=backend))
    assert torch.autograd.gradcheck(f, tuple(diff), eps=1e-6, atol=1e-7, rtol=1e-5)


def test_cpu_ops_cover_the_expected_backends():
    """The opcheck/gradcheck matrices above run on every CPU backend (the reference at least):
    a backend that reports itself available for fp32 but not fp64 would silently shrink them."""
    assert "reference" in cpu_backends(torch.float32)
    assert "reference" in cpu_backends(torch.float64)
    fp32 = {b for b in cpu_backends(torch.float32) if b != "triton"}
    fp64 = {b for b in cpu_backends(torch.float64) if b != "triton"}
    assert fp32 == fp64, f"CPU backends differ by dtype: fp32 {fp32}, fp64 {fp64}"
