"""Recurrent variants torch.nn lacks: peephole LSTM, head-wise recurrence, zoneout (issue 16).

The modules take them as keyword-only options (``peephole=True``, ``num_heads=4``,
``zoneout=0.1``; which cell takes which: ``CellSpec.variants`` in ``cells.py``). With every
option at its default there is no variant at all (``parse`` returns None): the module is its
torch.nn twin, bitwise, on its usual path. docs/VARIANTS.md states the semantics; this file holds
what the layers above the scans need, once:

* ``parse``: the options' checks (torch's error types: ``TypeError`` for a wrong type,
  ``ValueError`` for a wrong value) → a ``VariantSpec``;
* ``install``: the parameters a variant changes or adds, on a constructed torch.nn module;
* ``resolve``: which backend runs a variant call (the fused ones first; see ``KERNELS``);
* ``Call`` / ``ScanVariant``: what one forward, and one scan of it, hands to the scan functions
  (``ops/variants.py``), zoneout masks included.

Parameter layout (decided here, documented in docs/VARIANTS.md):

* head-wise: ``weight_hh_l{k}`` keeps its name and becomes [G·H, d], d = H / num_heads: row
  g·H + j·d + u (torch's row of gate g, unit j·d + u) holds that unit's weights from the d units
  of its own head j. At ``num_heads=1`` that is torch's [G·H, H] exactly. Initialised as the
  block diagonal of the weight torch.nn draws (so with a seed, every other parameter is
  torch.nn's and this one is torch.nn's block diagonal), hence U(-1/√H, 1/√H) like the rest;
* peephole: ``weight_ch_l{k}`` (``weight_ch`` for a cell) [3, H], rows i, f, o, one per layer and
  direction (``_reverse``), registered after torch's parameters and drawn from U(-1/√H, 1/√H),
  torch.nn's rule for every RNN weight, which ``reset_parameters()`` applies again. Keras'
  PeepholeLSTMCell and TF1's LSTMCell(use_peepholes=True) also start them random (glorot
  uniform), not at zero;
* layer norm (``layer_norm=True``, haste's LayerNormLSTM / LayerNormGRU): ``weight_ln_ih_l{k}``,
  ``weight_ln_hh_l{k}`` [G·H] and (LSTM) ``weight_ln_c_l{k}``, ``bias_ln_c_l{k}`` [H], after
  the rest, gains 1 and biases 0 (``layer_norm_parameters``).
"""
from __future__ import annotations

import importlib
import math
import numbers
from dataclasses import dataclass

import torch
from torch import Tensor

from . import backends
from . import dropout as D
from .cells import CellSpec, acc_dtype

# What the messages call each option.
NAMES = {"peephole": "peephole", "num_heads": "head-wise recurrence", "zoneout": "zoneout",
         "layer_norm": "layer norm", "locked_dropout": "locked dropout",
         "input_dropout": "input dropout", "output_dropout": "output dropout"}
# Backends with an implementation of the variants: name -> (module, the options it implements).
# Fastest first; `auto` takes the first that implements a call's variants and can run it.
KERNELS = {
    "cpu": ("rnnkernels.backends.cpu_variants",
            ("peephole", "num_heads", "zoneout", "layer_norm")),
    "triton": ("rnnkernels.backends.triton.variants", ("peephole", "num_heads", "zoneout")),
    "reference": ("rnnkernels.backends.reference_variants",
                  ("peephole", "num_heads", "zoneout", "layer_norm")),
}


@dataclass(frozen=True)
class VariantSpec:
    """The variant options of one module (only non-default ones make a spec).

    peephole   LSTM: i and f see c_{t-1}, o sees c_t, through ``weight_ch`` [3, H]
    num_heads  W_hh block diagonal in num_heads blocks: [G·H, H / num_heads]
    zoneout    per state (h[, c]) the probability of keeping its previous value; ``given`` is
               the option as the user wrote it (a float, or an LSTM's (p_h, p_c)), for repr
    layer_norm LSTM, GRU: layer norm of x·W_ihᵀ and of h·W_hhᵀ (and LSTM: of c_t before the
               output tanh), haste's LayerNormLSTM / LayerNormGRU (``LayerNormScan``)
    """

    peephole: bool = False
    num_heads: int = 1
    zoneout: tuple[float, ...] = (0.0,)
    given: float | tuple[float, float] = 0.0
    layer_norm: bool = False
    # The layers' locked dropout (rnnkernels/dropout.py): not in the recurrence (``recurrent``).
    locked_dropout: bool = False
    input_dropout: float = 0.0
    output_dropout: float = 0.0

    def options(self) -> tuple[str, ...]:
        """The options in use, in signature order."""
        used = {"peephole": self.peephole, "num_heads": self.num_heads > 1,
                "zoneout": any(p > 0 for p in self.zoneout), "layer_norm": self.layer_norm,
                "locked_dropout": self.locked_dropout, "input_dropout": self.input_dropout > 0,
                "output_dropout": self.output_dropout > 0}
        return tuple(name for name, on in used.items() if on)

    def recurrent(self) -> tuple[str, ...]:
        """The options in use that change the recurrence (what a scan backend must implement);
        the locked dropouts act between the scans, so every backend runs them."""
        return tuple(o for o in self.options() if o not in D.OPTIONS)

    def value(self, option: str):
        """An option's value as the constructor took it (repr, the modules' attributes)."""
        return self.given if option == "zoneout" else getattr(self, option)

    def describe(self, options=None) -> str:
        return _describe(self.options() if options is None else options)


# The modules (their classes and whole pickles) hold a spec: allowed by torch.load's
# weights_only unpickler, as the module classes are (nn/__init__.py).
torch.serialization.add_safe_globals([VariantSpec])


# ------------------------------------------------------------------------------------ options
def _probability(value, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{what} should be a float, got: {type(value).__name__}")
    if not 0 <= value < 1:
        raise ValueError(f"{what} should be a number in range [0, 1) (the probability of keeping "
                         f"a unit's previous state at a step), but got {what}={value}")
    return float(value)


def _zoneout(cell: CellSpec, zoneout) -> tuple[float, ...]:
    """One probability per state of the cell: a float for all of them, or (LSTM) (p_h, p_c)."""
    if isinstance(zoneout, (tuple, list)):
        if len(cell.states) == 1:
            raise TypeError(f"zoneout of a {cell.module} should be a float (its one state h), "
                            f"got: {type(zoneout).__name__}")
        if len(zoneout) != len(cell.states):
            raise ValueError(f"zoneout should be a float or a pair (p_h, p_c), got "
                             f"{len(zoneout)} values")
        return tuple(_probability(p, f"zoneout[{i}]") for i, p in enumerate(zoneout))
    return (_probability(zoneout, "zoneout"),) * len(cell.states)


def parse(cell: CellSpec, hidden_size: int, proj_size: int, options: dict) -> VariantSpec | None:
    """The checked options (keys: some of ``cell.variants``) of a module whose torch.nn
    constructor has run; None when every one is at its default (no variant)."""
    peephole = options.get("peephole", False)
    num_heads = options.get("num_heads", 1)
    given = options.get("zoneout", 0.0)
    layer_norm = options.get("layer_norm", False)
    for name, flag in (("peephole", peephole), ("layer_norm", layer_norm)):
        if not isinstance(flag, bool):
            raise TypeError(f"{name} should be of type bool, got: {type(flag).__name__}")
    if isinstance(num_heads, bool) or not isinstance(num_heads, int):
        raise TypeError(f"num_heads should be of type int, got: {type(num_heads).__name__}")
    if num_heads <= 0:
        raise ValueError("num_heads must be greater than zero")
    if hidden_size % num_heads:
        raise ValueError(f"hidden_size must be divisible by num_heads, got hidden_size="
                         f"{hidden_size} and num_heads={num_heads}")
    if num_heads > 1 and proj_size > 0:
        raise ValueError("num_heads > 1 cannot be combined with proj_size > 0 (the state fed back "
                         "would be the projection's, which mixes every head)")
    zoneout = _zoneout(cell, given)
    spec = VariantSpec(peephole, num_heads, zoneout, tuple(given) if isinstance(given, list)
                       else given, layer_norm, **D.parse(options))
    return spec if spec.options() else None


# --------------------------------------------------------------------------------- parameters
def install(module: torch.nn.Module, cell: CellSpec, spec: VariantSpec,
            suffixes: list[str]) -> None:
    """Reshape / add the parameters of ``spec`` on ``module`` (torch.nn's constructor has run).
    ``suffixes``: the parameter-name suffixes of its layers and directions (``_l0``,
    ``_l0_reverse``, ...; ``""`` for a cell). Draws from torch's generator only for peepholes."""
    H, k = module.hidden_size, spec.num_heads
    for sfx in suffixes:
        w = getattr(module, f"weight_hh{sfx}")
        if k > 1:
            d = H // k
            # [G, head, out unit, head', in unit] → the blocks of head == head'.
            blocks = w.detach().view(cell.gates, k, d, k, d).diagonal(dim1=1, dim2=3)
            blocks = blocks.permute(0, 3, 1, 2).reshape(cell.gates * H, d).clone()
            setattr(module, f"weight_hh{sfx}",
                    torch.nn.Parameter(blocks, requires_grad=w.requires_grad))
        if spec.peephole:
            p = torch.nn.Parameter(w.new_empty((len(cell.peephole_gates), H)))
            stdv = 1.0 / math.sqrt(H) if H > 0 else 0.0
            torch.nn.init.uniform_(p, -stdv, stdv)
            module.register_parameter(f"weight_ch{sfx}", p)
        if spec.layer_norm:
            for name, width, _ in layer_norm_parameters(cell):
                module.register_parameter(f"{name}{sfx}",
                                          torch.nn.Parameter(w.new_empty(width * H)))
    if spec.layer_norm:
        reset_layer_norm(module, cell, suffixes)


# Layer norm's parameters per layer and direction: (name, size in units of H, initial value).
# Gains start at 1 and biases at 0, as haste's (and torch.nn.LayerNorm's), so a new module
# normalises plainly; ``reset_layer_norm`` puts them back after torch.nn's reset_parameters()
# (which draws every parameter from U(-1/√H, 1/√H)).
def layer_norm_parameters(cell: CellSpec) -> list[tuple[str, int, float]]:
    """weight_ln_ih, weight_ln_hh [G·H] (gains of the two products' norms); LSTM also
    weight_ln_c, bias_ln_c [H] (the norm of c_t before the output tanh)."""
    names = [("weight_ln_ih", cell.gates, 1.0), ("weight_ln_hh", cell.gates, 1.0)]
    if "c" in cell.states:
        names += [("weight_ln_c", 1, 1.0), ("bias_ln_c", 1, 0.0)]
    return names


def reset_layer_norm(module: torch.nn.Module, cell: CellSpec, suffixes: list[str]) -> None:
    """Layer norm's parameters of ``module`` at their initial values (gains 1, biases 0)."""
    with torch.no_grad():
        for sfx in suffixes:
            for name, _, value in layer_norm_parameters(cell):
                getattr(module, f"{name}{sfx}").fill_(value)


# --------------------------------------------------------------------------------- resolution
_LOADED: dict = {}     # backend name -> its module of KERNELS, once ``_resolve`` chose it


def implementation(backend: str):
    """The module implementing the variants on ``backend`` (a name ``resolve`` returned; that
    imported it, outside of any graph torch.compile traces: Dynamo cannot trace an import)."""
    module = _LOADED.get(backend)
    if module is None:
        module = _LOADED[backend] = importlib.import_module(KERNELS[backend][0])
    return module


# Backends of KERNELS without a kernel for an LSTM with a projection (proj_size > 0): ``auto``
# passes them over for such a call, a named one raises.
NO_PROJECTION = ("cpu",)
# Options a backend of KERNELS combines only with some others: option -> those. ``auto`` passes
# the backend over for another combination, a named one raises.
COMBINES = {"cpu": {"layer_norm": ("zoneout",)}}


def _lacks(name: str, used: tuple[str, ...]) -> list[str]:
    """The options of ``used`` that backend ``name`` cannot run together: those it has no
    kernel for, or all of them when it has no kernel for their combination."""
    missing = [o for o in used if o not in KERNELS.get(name, ("", ()))[1]]
    for option, partners in COMBINES.get(name, {}).items():
        if not missing and option in used and any(o not in (option, *partners) for o in used):
            return list(used)
    return missing


def resolve(backend: str, spec: VariantSpec, device_type: str, dtype: torch.dtype,
            projected: bool = False) -> str:
    """The backend that runs a call with variants: ``auto`` (or ``RNNKERNELS_BACKEND``'s
    replacement of it) takes the first of ``KERNELS`` that implements them and can run, and says
    once when that is the reference; a named backend without them raises ``RuntimeError``, as
    ``"torch"`` does (torch.nn has none of them). ``projected``: an LSTM with proj_size > 0,
    which the backends of ``NO_PROJECTION`` cannot run."""
    return _resolve(backend, spec.recurrent(), projected, device_type, dtype)


def _resolve(backend: str, used: tuple[str, ...], projected: bool, device_type: str,
             dtype: torch.dtype) -> str:
    """``resolve`` on plain arguments. Marked ``assume_constant_result`` once Dynamo is loaded
    (``_dynamo_setup.py``), as ``functional._resolve``: under torch.compile it runs at trace
    time (it imports the chosen implementation and may warn) and its answer is a constant."""
    name = backends.requested(backend)
    what = _describe(used)
    chosen = _choose(name, used, what, projected, device_type, dtype)
    implementation(chosen)
    return chosen


def _describe(options) -> str:
    return ", ".join(NAMES[o] for o in options)


def _choose(name: str, used: tuple[str, ...], what: str, projected: bool, device_type: str,
            dtype: torch.dtype) -> str:
    if name == backends.TORCH:
        raise RuntimeError(f"rnnkernels: backend 'torch' (torch's own RNN kernels) cannot run "
                           f"{what}: torch.nn has no such variant; use backend='auto' or "
                           "'reference'")
    if name != "auto":
        missing = _lacks(name, used)
        if missing:
            raise RuntimeError(f"rnnkernels: backend {name!r} cannot run "
                               f"{_describe(missing)}: no fused kernel for "
                               f"{_describe(missing)} yet; use backend='auto' or 'reference' "
                               "(plain PyTorch)")
        if projected and name in NO_PROJECTION:
            raise RuntimeError(f"rnnkernels: backend {name!r} cannot run {what} with "
                               "proj_size > 0: no fused kernel for it yet; use backend='auto' "
                               "or 'reference' (plain PyTorch)")
        candidates = [name]
    else:
        # auto considers only the backends ``backends`` would auto-pick on this device (never
        # triton on the CPU, where it is an interpreter for tests).
        auto = backends._PREFERENCE.get(device_type, ("reference",))
        candidates = [n for n in KERNELS
                      if n in auto and not _lacks(n, used)
                      and not (projected and n in NO_PROJECTION)]
    reasons = []
    for candidate in candidates:
        reason = backends.why_not(candidate, device_type, dtype)
        if reason is None:
            if name == "auto" and candidate == "reference":
                case = what + (" with proj_size > 0" if projected else "")
                backends._warn_once(f"rnnkernels: backend='auto' runs {case} on the 'reference' "
                                    f"backend (plain PyTorch, not fused): no fused kernel for "
                                    f"{case} yet")
            return candidate
        reasons.append(f"{candidate}: {reason}")
    raise RuntimeError(f"rnnkernels: no backend can run {what} here ({device_type}, {dtype}): "
                       + "; ".join(reasons))


# ---------------------------------------------------------------------------- per-call objects
LAYER_NORM_EPS = 1e-5       # haste's (its kernels' rsqrt(var + 1e-5)) and torch.nn.LayerNorm's


@dataclass(frozen=True)
class LayerNormScan:
    """Layer norm in one scan (docs/VARIANTS.md), haste's LayerNormLSTM / LayerNormGRU: the
    scan's ``xp`` is then x·W_ihᵀ alone, normalised (all steps at once) before the biases.

    ih, hh  [G·H] gains of the norms of x·W_ihᵀ and of h·W_hhᵀ (no bias of their own)
    c       LSTM: (gain, bias) [H] of the norm of c_t before the output tanh; GRU: None
    bias    [G·H] the biases after the norms (b_ih + b_hh; GRU: b_hn kept apart) or None
    b_hn    GRU: [H], inside r ⊙ (LN(h·W_hhᵀ)_n + b_hn); else None
    """

    ih: Tensor
    hh: Tensor
    c: tuple[Tensor, Tensor] | None
    bias: Tensor | None
    b_hn: Tensor | None


@dataclass(frozen=True)
class ScanVariant:
    """What one scan (one layer and direction) of a variant call needs.

    peephole   [3, H] (rows i, f, o) or None
    num_heads  blocks of W_hh ([G·H, H / num_heads])
    keep       per state (h[, c]): None (no zoneout), the probability p (eval: the expectation
               h_t = p·h_{t-1} + (1-p)·h̃_t) or, in training, the 0/1 mask [T, B, size] in time
               order (h_t = m·h_{t-1} + (1-m)·h̃_t), in the accumulation dtype
    """

    peephole: Tensor | None
    num_heads: int
    keep: tuple[Tensor | float | None, ...]
    layer_norm: LayerNormScan | None = None     # None: no layer norm (xp has the biases)


@dataclass(frozen=True)
class Call:
    """One forward of a module with variants: its spec, the peephole weights of each layer and
    direction (or None), whether it trains (zoneout draws masks) and each state's size."""

    spec: VariantSpec
    peephole: list[Tensor] | None
    training: bool
    sizes: tuple[int, ...]
    # Layer norm: per layer and direction its parameters (``layer_norm_parameters`` order), and
    # the (projection bias, b_hn) that variant_mixins.stack takes out of functional's
    # projection to add after the norm (None: no biases).
    layer_norm: list[tuple[Tensor, ...]] | None = None
    biases: list[tuple[Tensor | None, Tensor | None]] | None = None

    def parameters(self) -> list[Tensor]:
        """The variants' own parameters (checked for dtype and device as torch.nn's are)."""
        return [*(self.peephole or []), *(t for ts in self.layer_norm or [] for t in ts)]

    def _layer_norm(self, k: int) -> LayerNormScan | None:
        if self.layer_norm is None:
            return None
        ih, hh, *c = self.layer_norm[k]
        return LayerNormScan(ih, hh, tuple(c) or None,
                             *(self.biases[k] if self.biases else (None, None)))

    def resolve(self, backend: str, device_type: str, dtype: torch.dtype) -> str:
        # An LSTM's state sizes are (P, H): they differ exactly when proj_size > 0.
        return resolve(backend, self.spec, device_type, dtype,
                       projected=self.sizes[0] != self.sizes[-1])

    def per_scan(self, x: Tensor, count: int) -> list[ScanVariant]:
        """One ``ScanVariant`` per layer and direction (k = layer·D + direction) of a run over
        ``x`` [T, B, *]. In training, the zoneout masks are drawn here, before anything else of
        the forward (so before the locked and the inter-layer dropout masks, ``dropout.py``):
        per state with p > 0, in state order (h, then c),
        ``torch.empty(count, T, B, size).bernoulli_(p)`` in the accumulation dtype on x's device
        (torch's default generator there). All None when the recurrence is plain (only locked
        dropout): the plain scans run it."""
        if not self.spec.recurrent():
            return [None] * count
        T, B = x.shape[:2]
        keep: list = []
        for p, size in zip(self.spec.zoneout, self.sizes):
            if p == 0:
                keep.append([None] * count)
            elif not self.training:
                keep.append([p] * count)
            else:
                masks = torch.empty((count, T, B, size), dtype=acc_dtype(x.dtype),
                                    device=x.device).bernoulli_(p)
                keep.append(list(masks.unbind(0)))
        return [ScanVariant(None if self.peephole is None else self.peephole[k],
                            self.spec.num_heads, tuple(per_state[k] for per_state in keep),
                            self._layer_norm(k))
                for k in range(count)]
