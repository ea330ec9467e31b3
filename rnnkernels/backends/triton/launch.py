"""The one launcher of the scan kernels: every cell, forward and backward.

A cell module (``lstm.py``, ``gru.py``, ``rnn.py``) holds its two kernels (the cell math and the
loads and stores around it) and a ``Kernels`` table of their phases and scratch buffers;
``rnnkernels.cells`` gives the cell's gate count, states and workspaces. Everything else about
running a scan is here, once:

* plan: the strategy and tiles of the scan (``plan.make_plan``);
* buffers: the outputs, the workspaces, the fp32 ping-pong buffers [2, B, width] that carry a
  value from step s to step s+1 (forward: the states h [B, P] and c [B, H]; backward: ``dg``,
  the gate gradients [B, G·H], and the gradient of every state after h, e.g. ``dc``), the
  cell's scratch, the grid-barrier counters, and one dummy for every pointer a variant does not
  use (never dereferenced);
* step order: forward s = 0..T-1; backward s = T-1..0, then a pass at s = -1 that only forms
  dh0 (the carry out of step 0), which is why that pass runs only the first phase;
* phases: a step of an LSTM with a projection has two dependent phases (``Kernels``); ``step``
  launches each alone (the launch boundary is the barrier), the persistent strategies run them
  all in one launch with ``phase_sync`` between them;
* ``step`` scans go through ``graphs.run`` (CUDA-graph replay from a signature's second call);
  a persistent scan is one launch, then ``check_sync`` reads the grid barrier's timeout flag;
* the device guard: triton launches on the current CUDA device.

Kernel calling convention (checked when a table is built): pointers first, each ``X_ptr``
receiving the launcher's buffer ``X`` (names below); then ``s_first, n_steps`` (this launch
runs steps s_first, s_first ± 1, ...) and the sizes it uses of T, B, H, P; then constexprs,
each taken by name from HAS_LEN, REVERSE, SAVE, the cell's flags (PROJ, HAS_BHN, RELU; the
variants' ``VARIANT_FLAGS``, off unless given), G,
DOT_F32, BB, BH, BK, SYNC and, for a kernel with phases, DO_<phase> and NPH.

Buffers: forward ``xp, w_hh, lens, out``, the workspaces and the states (``h``, ``c``) by their
``cells`` names, the cell's inputs (``w_hr``, ``b_hn``; the variants' ``VARIANT_INPUTS``, the
dummy unless given), its scratch, ``sync``; backward
``grad_out``, ``grad_<state>n``, ``<state>0``, ``w_hh``, the inputs, ``lens``, ``out``, the
workspaces, ``dxp, dh0``, ``dh`` (projection), ``dg``, ``d<state>`` for the states after h, the
scratch, ``sync``.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from ...cells import CellSpec, acc_dtype
from . import graphs as _graphs
from . import plan as _plan
from . import resident_launch as _resident

PROJ_PHASE = "PROJ"             # the phase (and flag) of a projection cell that needs W_hr
# The recurrent variants (docs/VARIANTS.md; ``variants.py``) are options of the cells' kernels:
# these flags and inputs are off / the dummy unless a variant scan passes them.
VARIANT_FLAGS = {"PEEP": False, "HD": 0, "ZH": 0, "ZC": 0}
VARIANT_INPUTS = ("w_ch", "keep_h", "keep_c")
_STEPS = ("s_first", "n_steps")
_SIZES = ("T", "B", "H", "P")


@dataclass(frozen=True)
class Scratch:
    """An fp32 buffer [copies, B, H] (or [copies, B, P]) that only the kernel itself reads back."""
    name: str
    copies: int = 1
    proj_only: bool = False     # needed only by the PROJ phase: the dummy without W_hr
    only_if: str = ""           # needed only when this constexpr flag is set: else the dummy
    width: str = "H"            # the size of its last axis: "H" or "P"


@dataclass(frozen=True)
class _Signature:
    ptrs: tuple[str, ...]       # buffer names, in the kernel's order
    sizes: tuple[str, ...]
    consts: tuple[str, ...]

    @staticmethod
    def of(fn) -> "_Signature":
        names = list(fn.arg_names)
        ptrs = [n for n in names if n.endswith("_ptr")]
        sizes = [n for n in names if n in _SIZES]
        consts = [n for n in names if n not in ptrs and n not in sizes and n not in _STEPS]
        if names != [*ptrs, *_STEPS, *sizes, *consts]:
            raise TypeError(f"{fn.__name__}: expected pointers *_ptr, then s_first, n_steps and "
                            f"sizes of {_SIZES}, then constexprs; got {names}")
        return _Signature(tuple(n[:-4] for n in ptrs), tuple(sizes), tuple(consts))


@dataclass(frozen=True)
class Kernels:
    """A cell's two kernels and what the launcher cannot read from their signatures.

    Phases are listed in step order; the phase named ``PROJ_PHASE`` runs only when the PROJ
    flag is set (W_hr given), and the first phase is the one the backward's s = -1 pass runs.
    """
    cell: CellSpec
    forward: Any
    backward: Any
    forward_phases: tuple[str, ...] = ()   # DO_<phase> constexprs, in step order; () = one phase
    backward_phases: tuple[str, ...] = ()
    forward_scratch: tuple[Scratch, ...] = ()
    backward_scratch: tuple[Scratch, ...] = ()
    # True: a program owns whole heads of a head-wise recurrence (constexpr NH, the flag of the
    # heads), which never exchange data: grid axis 1 is the NH heads, no barrier ever, and every
    # strategy but ``step`` is one launch for the whole sequence (the sLSTM, ``slstm.py``).
    head_programs: bool = False
    signatures: tuple[_Signature, _Signature] = field(init=False, repr=False)

    def __post_init__(self):
        object.__setattr__(self, "signatures",
                           (_Signature.of(self.forward), _Signature.of(self.backward)))


# ------------------------------------------------------------------------------------ buffers
def empty(shape, dtype, device) -> torch.Tensor:
    """Every buffer the backend allocates comes from here (tests poison it with NaN)."""
    return torch.empty(shape, dtype=dtype, device=device)


def workspace(shape, dtype, device, lengths) -> torch.Tensor:
    """A saved workspace. The kernels write active steps only; with lengths the rest is zeroed,
    so the op's outputs are a function of its inputs (opcheck, AOT autograd recomputation)."""
    t = empty(shape, dtype, device)
    if lengths is not None and t.numel():
        t.zero_()
    return t


def _ping_pong(B: int, width: int, device, first=None, index: int = 0,
               dtype=torch.float32) -> torch.Tensor:
    """[2, B, width] in ``dtype`` (the accumulation dtype: fp32 but for a float64 scan),
    indexed by step parity; ``first`` goes into half ``index``."""
    buf = empty((2, B, width), dtype, device)
    if first is not None:
        buf[index].copy_(first)
    return buf


def sync_counters(pl: _plan.Plan, nb: int, device, dummy: torch.Tensor) -> torch.Tensor:
    """Zeroed grid-barrier counters (one per batch tile, then the timeout flag) when the plan
    uses them (see ``tiles.phase_sync``), else ``dummy`` (never dereferenced)."""
    if pl.sync == 2:
        return torch.zeros((nb + 1,), dtype=torch.int32, device=device)
    return dummy


def check_sync(pl: _plan.Plan, counters: torch.Tensor) -> None:
    """After a grid-barrier launch: raise if a barrier timed out (costs one host sync). Not
    after a cooperative launch (co-residency is guaranteed, the barrier cannot starve: no host
    sync per call then) nor while a CUDA graph is being captured (no host sync is allowed)."""
    if (pl.sync != 2 or "launch_cooperative_grid" in pl.launch_options()
            or torch.cuda.is_current_stream_capturing()):
        return
    if int(counters[-1].item()) != 0:
        raise RuntimeError("rnnkernels triton backend: a grid barrier of 'persistent-grid' timed "
                           "out (its programs were not all resident on the GPU); the results are "
                           "invalid. Use strategy 'persistent' or 'step'.")


def device_guard(t: torch.Tensor):
    """Triton launches on the current CUDA device: make it the tensors' device."""
    if t.device.type == "cuda":
        return torch.cuda.device(t.device)
    return contextlib.nullcontext()


def _with_variants(inputs: dict | None) -> dict:
    """The cell's optional inputs with every variant input (absent unless given)."""
    return {**dict.fromkeys(VARIANT_INPUTS), **(inputs or {})}


def _optional(bufs: dict, dummy: torch.Tensor, **tensors) -> None:
    """Absent (None) inputs point at the dummy: their kernels' flags keep them unread."""
    for name, t in tensors.items():
        bufs[name] = t if t is not None else dummy


def _scratch(bufs: dict, items, sizes: dict, proj: bool, known: dict, dev, dummy) -> None:
    for sc in items:
        needed = (proj or not sc.proj_only) and (not sc.only_if or known.get(sc.only_if))
        shape = (sc.copies, sizes["B"], sizes[sc.width])
        bufs[sc.name] = empty(shape, torch.float32, dev) if needed else dummy


# ----------------------------------------------------------------------------------- the scan
def _phase_flags(phases: tuple[str, ...], these) -> dict:
    """DO_<phase> for every phase the kernel has (1 for those this launch runs) and NPH, the
    number it runs (which numbers its barriers)."""
    flags = {f"DO_{p}": int(p in these) for p in phases}
    if phases:
        flags["NPH"] = len(these)
    return flags


def launches(kernels: Kernels, backward: bool, known: dict, sync: int) -> list[dict]:
    """The constexprs of the distinct launches of one scan: with ``sync`` 0 (``step``) one per
    phase, in step order; else the one persistent launch that runs every phase."""
    fn = kernels.backward if backward else kernels.forward
    sig = kernels.signatures[backward]
    phases = kernels.backward_phases if backward else kernels.forward_phases
    known = {**VARIANT_FLAGS, **known}
    missing = [n for n in sig.consts if n not in known and n not in ("SYNC", "NPH")
               and not (n.startswith("DO_") and n[3:] in phases)]
    if missing:
        raise TypeError(f"{fn.__name__}: the launcher has no value for {missing}")
    consts = {n: known[n] for n in sig.consts if n in known}
    run = tuple(p for p in phases if p != PROJ_PHASE or known.get(PROJ_PHASE))
    if sync == 0:
        return [{**consts, **_phase_flags(phases, (p,)), "SYNC": 0} for p in run or (None,)]
    return [{**consts, **_phase_flags(phases, run), "SYNC": sync}]


def _run(kernels: Kernels, backward: bool, bufs: dict, writes: tuple, sizes: dict,
         known: dict, pl: _plan.Plan, ref: torch.Tensor) -> None:
    """Launch every step of one scan, in order, with the plan's strategy."""
    T, B = sizes["T"], sizes["B"]
    if B == 0:
        return
    if pl.strategy == "resident":
        with device_guard(ref):
            _resident.run(kernels.cell, backward, bufs, sizes, known, pl, check_sync)
        return
    fn = kernels.backward if backward else kernels.forward
    sig = kernels.signatures[backward]
    each = launches(kernels, backward, known, pl.sync)
    ints = [sizes[n] for n in sig.sizes]
    grid = (pl.grid_b(B), pl.nprog_h)
    opts = pl.launch_options()
    bufs = {n: bufs[n] for n in sig.ptrs}  # graphs copies every buffer it is given

    def launch(b, s_first, n_steps, consts):
        fn[grid](*[b[n] for n in sig.ptrs], s_first, n_steps, *ints, **consts, **opts)

    with device_guard(ref):
        if pl.strategy == "step":
            def steps(b):
                for s in (range(T - 1, -2, -1) if backward else range(T)):
                    for k, consts in enumerate(each):
                        if s >= 0 or k == 0:  # the s = -1 pass only forms dh0
                            launch(b, s, 1, consts)
            key = tuple(sorted(each[0].items()))
            _graphs.run(f"{kernels.cell.name}_{'bwd' if backward else 'fwd'}", bufs, writes,
                        (T, B, sizes["H"], sizes["P"], pl, key), steps)
        else:
            launch(bufs, T - 1 if backward else 0, T + 1 if backward else T, each[0])
            check_sync(pl, bufs["sync"])


def _head_plan(pl: _plan.Plan, flags: dict) -> _plan.Plan:
    """The plan of a ``head_programs`` kernel: grid axis 1 the NH heads, no barrier, one launch
    unless ``step``; the warps grow with the padded head width DP so that the resident
    [DP, DP] blocks fit the registers (compiled for sm_90, ``aot``: 4 warps spill from DP = 32,
    8 at DP = 128, where 16 barely spill), unless ``tuning(num_warps=...)`` says otherwise."""
    warps = _plan._tuning.get().get("num_warps", {16: 4, 32: 8, 64: 8}.get(flags["DP"], 16))
    return replace(pl, strategy="step" if pl.strategy == "step" else "persistent",
                   nprog_h=flags["NH"], sync=0, num_warps=warps)


def _common(kernels: Kernels, ref: torch.Tensor, w_hh, h0, lengths, reverse, flags,
            training: bool):
    """Sizes, plan and the constexprs every launch of the scan shares; ``ref`` gives the
    scan's device and dtype (xp forward, h0 backward); ``training``: the scan is part of a
    differentiated call (the plan's mode)."""
    spec = kernels.cell
    B, P = h0.shape
    H = spec.hidden_size(w_hh)
    proj = bool(flags.get(PROJ_PHASE, False))
    # ``resident`` runs the plain cells ± projection (resident.py, resident_proj.py); the
    # variants take auto's strategy there
    plain = not kernels.head_programs and not any(flags.get(k) for k in VARIANT_FLAGS)
    pl = _plan.make_plan(ref.device, ref.dtype, B, H, P, proj, cell=spec if plain else None,
                         training=training)
    if kernels.head_programs:
        pl = _head_plan(pl, flags)
    known = dict(HAS_LEN=lengths is not None, REVERSE=bool(reverse), G=spec.gates,
                 DOT_F32=pl.dot_f32, BB=pl.BB, BH=pl.BH, BK=pl.BK, **flags)
    return spec, B, H, P, proj, pl, known


def forward(kernels: Kernels, xp, states, w_hh, lengths, reverse, save, inputs=None, flags=None):
    """One forward scan -> (out [T,B,P], the final states, the workspaces): the contract's
    tuple for the cell. ``states``: the initial states in ``cells`` order (h0, c0);
    ``inputs``: the cell's optional tensors (None = absent); ``flags``: its constexprs."""
    flags = dict(flags or {})
    spec, B, H, P, proj, pl, known = _common(kernels, xp, w_hh, states[0], lengths, reverse,
                                             flags, training=bool(save))
    known["SAVE"] = bool(save)
    T, dt, dev = xp.shape[0], xp.dtype, xp.device
    acc = acc_dtype(dt)
    out = empty((T, B, P), dt, dev)
    ws = {name: workspace((T, B, width * H) if save else (0,), acc, dev, lengths)
          for name, width in spec.workspaces}
    pp = {name: _ping_pong(B, P if k == 0 else H, dev, first=x, dtype=acc)
          for k, (name, x) in enumerate(zip(spec.states, states))}
    dummy = pp[spec.states[0]]
    bufs = dict(xp=xp, w_hh=w_hh, out=out, **pp)
    _optional(bufs, dummy, lens=lengths, **_with_variants(inputs))
    _optional(bufs, dummy, **{n: w if save else None for n, w in ws.items()})
    sizes = dict(T=T, B=B, H=H, P=P)
    _scratch(bufs, kernels.forward_scratch, sizes, proj, known, dev, dummy)
    bufs["sync"] = sync_counters(pl, pl.grid_b(B), dev, dummy)
    _run(kernels, False, bufs, ("out", *ws, *pp), sizes, known, pl, xp)
    # copies: a view into the ping-pong buffers would alias them and carry a storage offset
    # that the op's fake impl (a fresh tensor) does not have
    return (out, *[pp[n][T % 2].to(dt, copy=True) for n in spec.states], *ws.values())


def backward(kernels: Kernels, grad_out, grad_finals, states, w_hh, lengths, reverse, out,
             workspaces, inputs=None, flags=None):
    """One backward scan -> (dxp [T,B,G·H], dh0, the gradients of the other initial states,
    and for a projection cell dh [T,B,P] acc): the contract's tuple for the cell.
    ``grad_finals`` and ``states`` follow the cell's states (grad_hn, grad_cn; h0, c0)."""
    flags = dict(flags or {})
    h0 = states[0]
    spec, B, H, P, proj, pl, known = _common(kernels, h0, w_hh, h0, lengths, reverse, flags,
                                             training=True)
    T, dt, dev = grad_out.shape[0], h0.dtype, h0.device
    dxp = empty((T, B, spec.gates * H), dt, dev)
    dh0 = empty((B, P), dt, dev)
    dg = _ping_pong(B, spec.gates * H, dev, dtype=acc_dtype(dt))
    # the gradient of a state after h enters step T-1 from the scan's output: half T % 2
    carry = {f"d{n}": _ping_pong(B, H, dev, first=g, index=T % 2, dtype=acc_dtype(dt))
             for n, g in zip(spec.states[1:], grad_finals[1:])}
    dh = (empty((T, B, P) if proj else (0,), acc_dtype(dt), dev),) if spec.projection else ()
    bufs = dict(grad_out=grad_out, w_hh=w_hh, out=out, dxp=dxp, dh0=dh0, dg=dg, **carry)
    bufs.update({f"grad_{n}n": g for n, g in zip(spec.states, grad_finals)})
    bufs.update({f"{n}0": x for n, x in zip(spec.states, states)})
    bufs.update({name: w for (name, _), w in zip(spec.workspaces, workspaces)})
    _optional(bufs, dg, lens=lengths, **_with_variants(inputs))
    _optional(bufs, dg, dh=dh[0] if proj else None)
    sizes = dict(T=T, B=B, H=H, P=P)
    _scratch(bufs, kernels.backward_scratch, sizes, proj, known, dev, dg)
    bufs["sync"] = sync_counters(pl, pl.grid_b(B), dev, dg)
    writes = ("dxp", "dh0", *carry, *(("dh",) if dh else ()))
    _run(kernels, True, bufs, writes, sizes, known, pl, h0)
    return (dxp, dh0, *[c[0].to(dt, copy=True) for c in carry.values()], *dh)
