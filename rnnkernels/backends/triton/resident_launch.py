"""Host side of the ``resident`` strategy (kernels and design: ``resident.py``): its plan, the
[unit][gate] layout of W_hh, and the launches. ``launch._run`` hands a scan here when the plan's
strategy is ``resident``, with the buffers it built for every strategy (``launch.py``'s names).
"""
from __future__ import annotations

import torch

from ...cells import CellSpec
from . import plan as _plan

_CELL_CODE = {"lstm": 0, "gru": 1, "rnn": 2}
_MAX_W_PER_THREAD = 64          # registers a thread gives to its W_hh block and operand tile
_PARTIAL_LOAD = 2048            # elements of one load of the backward's partial sums
_MAX_RESIDENT_ELEMS = 16384     # (N + BB)·KP above which W_own is streamed (aot.py: spills)


def _pow2_at_least(n: int) -> int:
    p = 1
    while p < n:
        p *= 2
    return p


def padded_gates(spec: CellSpec) -> int:
    """G4: the gate rows a unit owns in the reordered layout (a power of two for tl.reshape)."""
    return _pow2_at_least(spec.gates)


def make_plan(spec: CellSpec, device: torch.device, dtype: torch.dtype, B: int, H: int,
              tune: dict, num_sms: int | None = None, P: int | None = None) -> _plan.Plan:
    """The resident plan of one scan:

    * BB batch rows a program: below 16 the exact power of two (a GEMV per row, no padding),
      else 16 for tl.dot, more rows being more batch groups (at BB = 64 the [BB, H] operand
      spills, aot.py);
    * U units a program (the plan's BH): N = U·G4 ≥ 16 rows, doubled until the groups ×
      programs fit the SMs;
    * KC (the plan's BK): KP, the padded K axis, when the W block [N, KP] and one [BB, KP]
      operand fit the registers (W_own loaded once before the loop), else the columns the
      streamed product reads at a time from the cache (the block stays in L1/L2 across steps);
    * the warps that keep those at ≤ 64 registers a thread, and two pipeline stages when
      streamed in chunks of 32 or more;
    * with a projection (``P``: its size; ``resident_proj.py``), K = P for W_hh, and the
      registers count both phases' blocks: forward W_own and the W_hr rows of the program's
      columns (``proj_columns``), backward W_own and its W_hr columns (both [U·4, P]);
    * the barrier: a grid barrier on a GPU, the launch boundary (one launch per step) under
      the interpreter.

    The thresholds come from the sm_90 builds' registers and spills (``aot.py``); where the
    installed triton's build of the plan still spills, the launcher runs the first variant
    that does not (``spill_free``)."""
    G4 = padded_gates(spec)
    BB = tune.get("block_b", min(16, _pow2_at_least(max(B, 1))))
    U = tune.get("block_h", max(1, 16 // G4))
    nb = max(1, _plan.triton_cdiv(B, BB))
    nsm = num_sms or _plan._num_sms(device)
    if device.type == "cuda" or num_sms:   # num_sms: a GPU's plan made without it (aot.py)
        while nb * _plan.triton_cdiv(H, U) > nsm and U < H:
            U *= 2
        if nb * _plan.triton_cdiv(H, U) > nsm:
            raise RuntimeError(f"rnnkernels triton backend: strategy 'resident' needs {nb} batch "
                               f"groups of co-resident programs but the GPU has {nsm} SMs; use "
                               "'step' or 'persistent'")
    KP = padded_k(H if P is None else P)
    N = U * G4
    elems = (N + BB) * KP
    if P is not None:
        UP = _proj_columns(BB, _plan.triton_cdiv(H, U), P)
        elems = max(elems + (UP + BB) * padded_k(H), (2 * N + BB) * KP)
    rows = _plan.triton_cdiv(elems, KP)
    # (tl.dot's operand layouts take about twice the registers of the GEMV's broadcasts)
    fits = elems <= (_MAX_RESIDENT_ELEMS if BB < 16 else _MAX_RESIDENT_ELEMS // 2)
    stream = 16
    while stream < 128 and rows * stream * 2 <= _MAX_RESIDENT_ELEMS // 2:
        stream *= 2
    KC = min(KP, tune.get("block_k", KP if fits else stream))
    warps = _pow2_at_least(max(1, rows * KC // (32 * _MAX_W_PER_THREAD)))
    # tl.dot's operand layout conversions need the registers of 8 warps (aot.py: 4 spill)
    warps = tune.get("num_warps", min(16, max(8 if BB >= 16 else 4, warps)))
    # streamed: two stages, the next chunk's loads issued while the current one multiplies
    # (aot.py: no spill at 2 but with chunks of 16, the largest blocks, which spilled 16-32
    # bytes; 3 stages spilled 8-40 bytes)
    stages = tune.get("num_stages", 2 if 32 <= KC < KP else 1)
    sync = 0 if _plan.INTERPRET or device.type != "cuda" else 2
    return _plan.Plan("resident", BB, U, KC, warps, stages, _plan.triton_cdiv(H, U), sync,
                      _plan.dot_f32(dtype, device))


def _proj_columns(BB: int, nprog: int, P: int) -> int:
    UP = _pow2_at_least(_plan.triton_cdiv(P, nprog))
    return max(16, UP) if BB >= 16 else UP        # tl.dot's minimum N


def proj_columns(pl: _plan.Plan, P: int) -> int:
    """UP: the columns of P a program owns in the projection's phase (a power of two; at least
    16 for tl.dot's batch groups), so that P/UP ≤ the programs."""
    return _proj_columns(pl.BB, pl.nprog_h, P)


def proj_chunks(pl: _plan.Plan, H: int, P: int) -> tuple[int, int]:
    """(KCR, KPR) of the forward's W_hr block (K = H): resident like W_own, else streamed."""
    KPR = padded_k(H)
    return _proj_chunk(pl.BK, padded_k(P), KPR), KPR


def _proj_chunk(KC: int, KP: int, KPR: int) -> int:
    """KCR: the W_hr block resident (KPR) when W_own's is (KC = KP), else streamed alike."""
    return KPR if KC == KP else min(KC, KPR)


def chunk(pl: _plan.Plan, K: int, backward: bool) -> int:
    """KC of one scan's products (K: their reduction length): the plan's, but a streamed fp32
    backward in tl.dot form (IEEE FMA, BB ≥ 16) reads at most 32 columns at a time: its dot
    keeps the [BB, KC] partial tile in registers beside the chunk, and at 128 columns the
    sm_90 builds spilled 64-992 bytes (``aot.py``; none at 32)."""
    if (backward and pl.BB >= 16 and pl.dot_f32 == _plan.DOT_IEEE
            and pl.BK < padded_k(K)):
        return min(pl.BK, 32)
    return pl.BK


def padded_k(H: int) -> int:
    """KP: the K axis (H) padded to a power of two ≥ 16."""
    return max(16, _pow2_at_least(H))


def partial_rows(pl: _plan.Plan, width: int | None = None) -> int:
    """RB: the programs whose partials the backward sums in one load (a power of two), each
    ``width`` columns (the program's units; with a projection its columns of P)."""
    rb = max(1, _PARTIAL_LOAD // (pl.BB * (width or pl.BH)))
    return min(_pow2_at_least(pl.nprog_h), 1 << (rb.bit_length() - 1))


def reorder(w_hh: torch.Tensor, spec: CellSpec, U: int) -> torch.Tensor:
    """W_hh [G·H, K] → [programs, U·G4, K] (K = H, or P with a projection): program c's row
    u·G4 + g is gate g of unit c·U + u (zero rows for the padding gates and for units past H)."""
    G, G4, K = spec.gates, padded_gates(spec), w_hh.shape[1]
    H = w_hh.shape[0] // G
    nprog = _plan.triton_cdiv(H, U)
    out = w_hh.new_zeros((nprog * U, G4, K))
    out[:H, :G] = w_hh.reshape(G, H, K).transpose(0, 1)
    return out.reshape(nprog, U * G4, K)


def reorder_proj(w_hr: torch.Tensor, U: int, UP: int, backward: bool) -> torch.Tensor:
    """W_hr [P, H], forward: → [P/UP, UP, H], program c's rows the columns c·UP.. of P (zero
    rows past P); backward: → [programs, U·4, P], row u·4 = W_hr[:, c·U + u] (gate slot 0 of
    unit u; the other slots and units past H zero)."""
    P, H = w_hr.shape
    if not backward:
        out = w_hr.new_zeros((_plan.triton_cdiv(P, UP) * UP, H))
        out[:P] = w_hr
        return out.reshape(-1, UP, H)
    nprog = _plan.triton_cdiv(H, U)
    out = w_hr.new_zeros((nprog * U, 4, P))
    out[:H, 0] = w_hr.t()
    return out.reshape(nprog, U * 4, P)


# ------------------------------------------------------------------------- spill-free builds
_LAUNCHED: dict = {}       # (kernel, planned constexprs and options) -> the ones launched


def _variants(consts: dict, opts: dict):
    """The planned build first, then the same scan in other shapes, the ones most like it
    first: the other warp count (4 ↔ 8), the other stage count, then half and a quarter of
    the chunk (streamed), each with both warp counts; a projection's W_hr chunk KCR follows
    KC (``_proj_chunk``)."""
    KC, KP, warps, stages = consts["KC"], consts["KP"], opts["num_warps"], opts["num_stages"]
    KPR = consts.get("KPR")
    seen = []
    for kc in (KC, KC // 2, KC // 4):
        if kc < 16:
            break
        for w in (warps, 8 if warps == 4 else 4):
            for st in ((stages, 3 - stages) if kc < KP else (1,)):
                c = {**consts, "KC": kc}
                if KPR is not None:
                    c["KCR"] = _proj_chunk(kc, KP, KPR)
                if (c, w, st) not in seen:
                    seen.append((c, w, st))
                    yield c, {**opts, "num_warps": w, "num_stages": st}


def spill_free(kernel, call_args: list, grid, consts: dict, opts: dict):
    """(constexprs, options) to launch ``kernel`` with: the plan's, unless that build spills
    registers to local memory and another of ``_variants`` does not, then the first such.
    The plan's thresholds come from sm_90 builds of one triton version; ptxas and triton's
    layouts differ between versions (triton 3.6 spills 24-440 bytes in builds that 3.9 keeps
    in registers), so the builds are compiled here (``warmup``, cached by triton on disk) and
    the driver's spill count decides, once per (kernel, plan) in a process. A triton without
    ``warmup`` or spill counts: the plan's build."""
    key = (id(kernel), tuple(sorted(consts.items())), tuple(sorted(opts.items())))
    if key not in _LAUNCHED:
        _LAUNCHED[key] = (consts, opts)
        for c, o in _variants(consts, opts):
            try:
                build = kernel.warmup(*call_args, grid=grid, **c, **o)
                build._init_handles()
                spills = int(build.n_spills)
            except Exception:  # noqa: BLE001 - no spill count on this triton: the plan's build
                break
            if spills == 0:
                _LAUNCHED[key] = (c, o)
                break
    return _LAUNCHED[key]


def kernel_of(spec: CellSpec, backward: bool, pl: _plan.Plan, H: int, P: int | None,
              known: dict):
    """(the kernel, its constexprs, its phases) of one resident scan: what ``run`` launches
    and ``aot.py`` compiles. ``known``: the launcher's flags (HAS_LEN, REVERSE, SAVE, RELU,
    HAS_BHN); ``P``: the projection's size, None without."""
    from . import resident, resident_proj  # noqa: PLC0415 - compiled on first use only
    K = H if P is None else P
    consts = dict(HAS_LEN=known["HAS_LEN"], REVERSE=known["REVERSE"], SYNC=pl.sync,
                  DOT_F32=pl.dot_f32, BB=pl.BB, U=pl.BH, KC=chunk(pl, K, backward),
                  KP=padded_k(K))
    if P is not None:
        UP = proj_columns(pl, P)
        consts["UP"] = UP
        if backward:
            consts["RB"] = partial_rows(pl, UP)
            return resident_proj._resident_proj_bwd_kernel, consts, ("A", "B")
        KCR, KPR = proj_chunks(pl, H, P)
        consts.update(SAVE=known["SAVE"], KCR=KCR, KPR=KPR)
        return resident_proj._resident_proj_fwd_kernel, consts, ("CELL", "PROJ")
    consts.update(CELL=_CELL_CODE[spec.name], RELU=bool(known.get("RELU", False)),
                  G=spec.gates, G4=padded_gates(spec))
    if backward:
        consts["RB"] = partial_rows(pl)
        return resident._resident_bwd_kernel, consts, ()
    consts.update(HAS_BHN=bool(known.get("HAS_BHN", False)), SAVE=known["SAVE"])
    return resident._resident_fwd_kernel, consts, ()


def run(spec: CellSpec, backward: bool, bufs: dict, sizes: dict, known: dict, pl: _plan.Plan,
        check_sync) -> None:
    """Every launch of one scan (forward s = 0..T-1; backward T-1..-1), ``launch``'s buffers."""
    T, B, H, P = sizes["T"], sizes["B"], sizes["H"], sizes["P"]
    proj = bool(known.get("PROJ"))
    kernel, consts, phases = kernel_of(spec, backward, pl, H, P if proj else None, known)
    args = (_proj_args if proj else _plain_args)(spec, backward, bufs, T, B, H, P, pl)
    _launch(kernel, (pl.grid_b(B), pl.nprog_h), args, list(range(T - 1, -2, -1)) if backward
            else list(range(T)), (T, B, H, P) if proj else (T, B, H), consts,
            pl.launch_options(), phases, pl, lambda: check_sync(pl, bufs["sync"]))


def _plain_args(spec: CellSpec, backward: bool, bufs: dict, T, B, H, P, pl) -> list:
    """The pointer arguments of ``resident.py``'s kernels (the carries' buffers made here)."""
    dummy = bufs["lens"]
    w = reorder(bufs["w_hh"], spec, pl.BH)
    ws = bufs.get("cs", bufs.get("hn_lin", dummy))
    if not backward:
        return [bufs["xp"], w, bufs.get("b_hn", dummy), bufs["lens"], bufs["out"],
                bufs.get("gates", dummy), ws, bufs["h"], bufs.get("c", dummy), bufs["sync"]]
    acc = bufs["dg"].dtype
    dh = bufs["grad_hn"].to(acc, copy=True)
    dc = bufs.get("dc")
    if dc is not None:    # the carry of c enters at half T % 2; the launcher returns half 0
        dc[0].copy_(dc[T % 2])
        dc = dc[0]
    loc = torch.zeros((B, H), dtype=acc, device=dh.device) if spec.name == "gru" else dummy
    part = torch.empty((2, pl.nprog_h, B, H), dtype=acc, device=dh.device)
    return [bufs["grad_out"], bufs["h0"], bufs.get("c0", dummy), w, bufs["lens"], bufs["out"],
            bufs.get("gates", dummy), ws, bufs["dxp"], bufs["dh0"], dh,
            dc if dc is not None else dummy, loc, part, bufs["sync"]]


def _proj_args(spec: CellSpec, backward: bool, bufs: dict, T, B, H, P, pl) -> list:
    """The pointer arguments of ``resident_proj.py``'s kernels."""
    w = reorder(bufs["w_hh"], spec, pl.BH)
    wr = reorder_proj(bufs["w_hr"], pl.BH, proj_columns(pl, P), backward)
    if not backward:
        dummy = bufs["lens"]
        return [bufs["xp"], w, wr, bufs["lens"], bufs["out"], bufs.get("gates", dummy),
                bufs.get("cs", dummy), bufs["h"], bufs["c"], bufs["hh"], bufs["sync"]]
    acc = bufs["dg"].dtype
    dc = bufs["dc"]
    dc[0].copy_(dc[T % 2])        # as in _plain_args
    dhc = bufs["grad_hn"].to(acc, copy=True)
    dhs = torch.empty((B, P), dtype=acc, device=dhc.device)
    part = torch.empty((2, pl.nprog_h, B, P), dtype=acc, device=dhc.device)
    return [bufs["grad_out"], bufs["c0"], w, wr, bufs["lens"], bufs["gates"], bufs["cs"],
            bufs["dxp"], bufs["dh0"], bufs["dh"], dhs, dhc, dc[0], part, bufs["sync"]]


def _launch(kernel, grid, args: list, steps: list, ints: tuple, consts: dict, opts: dict,
            phases: tuple, pl: _plan.Plan, check) -> None:
    """The launches of one scan: on a GPU one (its spill-free build), the grid barriers
    separating the steps and the ``phases`` (DO_<phase> constexprs) of a step, then ``check``;
    under the interpreter one per phase of each step (the launch boundary is the barrier),
    the s = -1 pass running the first phase only."""
    if pl.sync == 2:
        call = [*args, steps[0], len(steps), *ints]
        consts, opts = spill_free(kernel, call, grid,
                                  {**consts, **{f"DO_{p}": 1 for p in phases}}, opts)
        kernel[grid](*call, **consts, **opts)
        check()
        return
    for s in steps:
        for k, p in enumerate(phases or (None,)):
            if s >= 0 or k == 0:
                flags = {f"DO_{q}": int(q == p) for q in phases}
                kernel[grid](*args, s, 1, *ints, **consts, **flags, **opts)
