"""The sLSTM (xLSTM, Beck et al. 2024): its step, its reference scan and the layer stack.

One step (gates in the order i, f, z, o, as xlstm's; z takes the place of the LSTM's g), from
pre-activations ĩ, f̃, z̃, õ = W_ih x_t + b_ih + W_hh h_{t-1} + b_hh (W_hh head-wise: block
diagonal in ``num_heads`` [d, d] blocks per gate, rnnkernels' layout, docs/VARIANTS.md)::

    m_t = ĩ                             where n_{t-1} == 0 (the first step from zero states)
    m_t = max(ĩ, m_{t-1} + log σ(f̃))    elsewhere
    i_t = min(exp(ĩ - m_t), 1)           exponential input gate, stabilized
    f_t = min(exp(m_{t-1} + log σ(f̃) - m_t), 1)    sigmoid forget gate, stabilized
    c_t = f_t ⊙ c_{t-1} + i_t ⊙ tanh(z̃)
    n_t = f_t ⊙ n_{t-1} + i_t
    h_t = σ(õ) ⊙ c_t / n_t

exactly the pointwise function of xlstm's "vanilla" PyTorch backend
(``xlstm/blocks/slstm/src/vanilla/slstm.py``, xlstm 2.0.5), gradients included: autograd
differentiates the same function there (through m too). Two details differ, neither in a value:
the clips are computed as exp(min(·, 0)), which equals min(exp(·), 1) but whose gradient stays
finite where exp(·) overflows (xlstm's backward of min(exp(a), 1) is 0·∞ = NaN there, as at the
first step from zero states when ĩ < log σ(f̃) - 88 in float32); and the first-step rule is
decided per element (below). The stabilizer m keeps exp(ĩ) from overflowing: c and n are the
unstabilized C_t = σ(f̃) C_{t-1} + exp(ĩ) tanh(z̃), N_t = σ(f̃) N_{t-1} + exp(ĩ) scaled by
exp(-m_t), so h_t = σ(õ) C_t / N_t whatever m is. One of i_t, f_t is 1 at every step, so
n_t ≥ min(n_{t-1}, 1): from zero states n_t ≥ 1 after the first step, and h stays finite
(|h_t| ≤ 1 while |c_0| ≤ n_0) for any finite pre-activation.

The first-step rule, decided per element. xlstm's vanilla code takes m_t = ĩ when n_{t-1} is
zero *everywhere* (``torch.all(n == 0)``, one decision for the whole batch); its CUDA kernel
(``slstm_pointwise.cu``) and FlashRNN's Triton kernel decide per element (``n == 0`` at that
unit). We decide per element: a batch entry's result must not depend on the other entries (a
batch mixing fresh zero states with carried ones would otherwise get m = max(ĩ, log σ(f̃)) on
its fresh entries, where exp(ĩ - m) can underflow to 0 and h = 0/0). Both rules agree whenever
n_{t-1} is zero everywhere or nowhere, which is every step after the first (n_t > 0) and the
first step from the default zero states; the tests compare with xlstm in those cases. The
min(·, 1) clips are xlstm's: they only act on f_t at an element where n_{t-1} == 0 (elsewhere
m_t ≥ both exponents' arguments).

``scan`` is the reference implementation: a plain PyTorch loop on any device and dtype (state
and arithmetic in float32 for half inputs, as every reference scan), differentiated by autograd,
so every autograd mode works; it reuses the variants' reference helpers (the schedule of packed
and reversed sequences, the step-order gathers, the head-wise product). Two backends have a
fused sLSTM with a hand-written reverse scan giving the same gradients as autograd through
``step``: ``cpu`` (``backends/cpu_slstm.py``: the head-wise LSTM scan with the sLSTM's pointwise
unit) and ``triton`` (``backends/triton/slstm.py``: one program per batch tile and head, the
head's W_hh blocks and states in registers for the whole sequence). ``KERNELS`` lists the
backends with an sLSTM, fastest first, and ``resolve`` says which one runs a call.
"""
from __future__ import annotations

import importlib
from contextlib import nullcontext

import torch
import torch.nn.functional as F
from torch import Tensor

from . import backends
from . import functional as RF
from .backends.reference import _Schedule
from .backends.reference_variants import _in_step_order, _recurrent
from .cells import SLSTM, acc_dtype
from .projection import input_projection

__all__ = ["slstm", "slstm_cell", "step", "scan", "resolve"]

# The backends with an sLSTM scan (``scan``'s signature), fastest first: name → module. A module
# may define ``supports(device_type, dtype)`` (None or why not), which then replaces the
# backend's general answer (``backends.why_not``) for the sLSTM.
KERNELS = {
    "triton": "rnnkernels.backends.triton.slstm",
    "cpu": "rnnkernels.backends.cpu_slstm",
    "reference": "rnnkernels.slstm",
}
_LOADED: dict = {}


def step(xp: Tensor, rec: Tensor, h: Tensor, c: Tensor, n: Tensor, m: Tensor
         ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """One sLSTM step (the module docstring's equations): xp = x·W_ihᵀ + biases and
    rec = h·W_hhᵀ, both [B, 4H] in gate order i, f, z, o; the states [B, H] → (h, c, n, m)."""
    i_raw, f_raw, z_raw, o_raw = (xp + rec).chunk(4, dim=1)
    log_f_plus_m = m + F.logsigmoid(f_raw)
    m_new = torch.where(n == 0, i_raw, torch.maximum(i_raw, log_f_plus_m))
    i = torch.exp((i_raw - m_new).clamp(max=0))      # min(exp(·), 1), finite gradient
    f = torch.exp((log_f_plus_m - m_new).clamp(max=0))
    c_new = f * c + i * torch.tanh(z_raw)
    n_new = f * n + i
    return torch.sigmoid(o_raw) * c_new / n_new, c_new, n_new, m_new


def scan(xp: Tensor, states: tuple[Tensor, ...], w_hh: Tensor, lengths: Tensor | None,
         reverse: bool, num_heads: int) -> tuple[Tensor, tuple[Tensor, ...]]:
    """One layer and direction: xp [T, B, 4H] (x·W_ihᵀ + biases), states (h0, c0, n0, m0)
    [B, H], w_hh [4H, H / num_heads] → (out [T, B, H] in time order, zero beyond each length;
    the final states, frozen after each sequence's end). ``reverse`` runs each sequence from its
    own last step (backend contract, docs/BACKENDS.md)."""
    T, B = xp.shape[:2]
    dt, acc = xp.dtype, acc_dtype(xp.dtype)
    sched = _Schedule(T, B, lengths, reverse, xp.device)
    inputs = _in_step_order(xp.to(acc), sched.time).unbind(0)
    product = _recurrent(w_hh.to(acc), num_heads, SLSTM.gates)
    state = [s.to(acc) for s in states]
    outs = []
    for s in range(T):
        new = step(inputs[s], product(state[0]), *state)
        outs.append(new[0])
        state = [sched.keep(s, n, old) for n, old in zip(new, state)]
    out = _in_step_order(torch.stack(outs), sched.time)
    out = torch.where(sched.active[..., None], out, 0.0)
    return out.to(dt), tuple(s.to(dt) for s in state)


def resolve(backend: str, device_type: str, dtype: torch.dtype) -> str:
    """The backend that runs an sLSTM call: ``auto`` (or ``RNNKERNELS_BACKEND`` in its place)
    takes the first of ``KERNELS`` that it would auto-pick on this device and that can run here
    (``triton`` on a CUDA device, the fused ``cpu`` one where the extension is built; the
    reference, said once, elsewhere); a
    named backend without an sLSTM raises ``RuntimeError``, as ``"torch"`` does (torch.nn has
    none), and so does a named one that cannot run here. A constant of torch.compile's graphs
    (``_dynamo_setup.py``), as ``functional._resolve``: it also imports the chosen module
    (``_why_not``), so the traced code never does."""
    name = backends.requested(backend)
    if name == backends.TORCH:
        raise RuntimeError("rnnkernels: backend 'torch' (torch's own RNN kernels) cannot run "
                           "sLSTM: torch.nn has no such cell; use backend='auto' or 'reference'")
    if name != "auto" and name not in KERNELS:
        raise RuntimeError(f"rnnkernels: backend {name!r} cannot run sLSTM: no fused kernel for "
                           f"sLSTM on it yet; use backend='auto' or one of {list(KERNELS)}")
    auto = backends._PREFERENCE.get(device_type, ("reference",))
    candidates = [name] if name != "auto" else [n for n in KERNELS if n in auto]
    reasons = []
    for candidate in candidates:
        reason = _why_not(candidate, device_type, dtype)
        if reason is None:
            if name == "auto" and candidate == "reference":
                backends._warn_once("rnnkernels: backend='auto' runs sLSTM on the 'reference' "
                                    "backend (plain PyTorch, not fused): no fused kernel for "
                                    f"sLSTM can run here ({device_type}, {dtype})")
            return candidate
        reasons.append(f"{candidate}: {reason}")
    raise RuntimeError(f"rnnkernels: no backend can run sLSTM here ({device_type}, {dtype}): "
                       + "; ".join(reasons))


def _why_not(name: str, device_type: str, dtype: torch.dtype) -> str | None:
    """None if backend ``name`` runs an sLSTM of this device and dtype, else why not."""
    try:
        supports = getattr(implementation(name), "supports", None)
    except Exception as exc:  # noqa: BLE001 - ImportError, or a dependency too old
        return f"{type(exc).__name__}: {exc}"
    return (backends.why_not(name, device_type, dtype) if supports is None
            else supports(device_type, dtype))


def implementation(backend: str):
    """The module with the sLSTM scan of ``backend`` (a name ``resolve`` returned; that imported
    it, outside of any graph torch.compile traces: Dynamo cannot trace an import)."""
    module = _LOADED.get(backend)
    if module is None:
        module = _LOADED[backend] = importlib.import_module(KERNELS[backend])
    return module


def _layers(x: Tensor, hx: list[Tensor], params: list[Tensor], per: int, has_biases: bool,
            num_layers: int, dirs: int, dropout: float, train: bool, mask: Tensor | None,
            lengths: Tensor | None, num_heads: int, backend: str):
    """Layers × directions, as ``functional``'s: per scan the input projection of all steps
    (one GEMM), then the recurrence on ``backend``'s scan (a name ``resolve`` returned);
    inter-layer dropout on torch's layout. Returns the last layer's output [T, B, D·H] and the
    final states, one list per state over L·D."""
    run = implementation(backend).scan
    finals: list[list[Tensor]] = [[] for _ in SLSTM.states]
    layer_in = x
    for layer in range(num_layers):
        outs = []
        for d in range(dirs):
            k = layer * dirs + d
            w_ih, w_hh, bias, _, _ = RF._layer_weights(SLSTM, params[k * per:(k + 1) * per],
                                                       has_biases)
            out, states = run(input_projection(layer_in, w_ih, bias),
                              tuple(h[k] for h in hx), w_hh, lengths, d == 1, num_heads)
            outs.append(out)
            for acc, state in zip(finals, states):
                acc.append(state)
        layer_in = outs[0] if dirs == 1 else torch.cat(outs, dim=-1)
        if dropout > 0 and train and layer < num_layers - 1:
            layer_in = RF._dropout(layer_in, dropout, mask)
    return layer_in, finals


def slstm(input: Tensor, hx: tuple[Tensor, Tensor, Tensor, Tensor], params: list[Tensor],
          has_biases: bool, num_layers: int, dropout: float, train: bool, bidirectional: bool,
          batch_first: bool, *, num_heads: int = 1, batch_sizes: Tensor | None = None,
          backend: str = "auto", name: str = "SLSTM") -> tuple[Tensor, ...]:
    """Multi-layer sLSTM, arguments as ``rnnkernels.functional.lstm``'s: input [T,B,I]
    ([B,T,I] if batch_first; packed data [N,I] with ``batch_sizes``), hx = (h0, c0, n0, m0)
    each [L*D,B,H], params per layer and direction w_ih [4H,I], w_hh [4H,H/num_heads]
    [, b_ih, b_hh [4H]] → (output [T,B,D*H], h_n, c_n, n_n, m_n [L*D,B,H]).

    Under autocast the whole stack runs in the autocast dtype (state in float32 inside), as
    ``functional``'s stacks do; the outputs come out in it."""
    params = list(params)
    dirs = 2 if bidirectional else 1
    per = RF._params_per_direction(name, params, num_layers, dirs)
    cast, _ = RF._autocast_dtype(input)
    hx = list(hx)
    if cast is not None:
        input, hx, params = input.to(cast), [h.to(cast) for h in hx], [p.to(cast) for p in params]
    RF._check_consistent(name, input, hx, params)
    x, mask, lengths = RF._to_time_major(input, batch_sizes, batch_first)
    chosen = resolve(backend, x.device.type, x.dtype)
    with torch.autocast(x.device.type, enabled=False) if cast is not None else nullcontext():
        output, finals = _layers(x, hx, params, per, has_biases, num_layers, dirs, dropout,
                                 train, mask, lengths, num_heads, chosen)
    output = RF._from_time_major(output, mask, batch_first)
    return (output, *(torch.stack(f, 0) for f in finals))


def slstm_cell(input: Tensor, hx: tuple[Tensor, Tensor, Tensor, Tensor], w_ih: Tensor,
               w_hh: Tensor, b_ih: Tensor | None = None, b_hh: Tensor | None = None, *,
               num_heads: int = 1, backend: str = "auto",
               name: str = "SLSTMCell") -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """One sLSTM step: input [B,I], hx = (h, c, n, m) each [B,H], w_ih [4H,I],
    w_hh [4H,H/num_heads], b_ih, b_hh [4H] or None → (h', c', n', m') each [B,H]: a one-layer
    stack of one step."""
    params = [w_ih, w_hh] + ([b_ih, b_hh] if b_ih is not None else [])
    _, *finals = slstm(input.unsqueeze(0), [h[None] for h in hx], params, b_ih is not None, 1,
                       0.0, False, False, False, num_heads=num_heads, backend=backend, name=name)
    h, c, n, m = (f[0] for f in finals)
    return h, c, n, m
