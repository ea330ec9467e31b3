"""Compile every scan kernel for a CUDA target on a machine without a GPU (ahead-of-time check).

    python -m rnnkernels.backends.triton.aot [--arch 90] [--dtypes fp16,bf16,fp32] [--quick]

Runs triton's whole GPU pipeline (frontend → TTIR → TTGIR → LLVM → PTX → ptxas) on each
kernel in each variant the launcher uses (step, persistent, persistent-grid; with and without
the LSTM projection; the recurrent variants' flags; the sLSTM; every dtype; ``resident`` at the
sizes of ``_RESIDENT_*``, the build its launcher would pick), with the constexprs of
``launch.launches`` and the tile sizes ``plan.make_plan`` picks on a GPU. Another triton (the
GPU machine's, say) is checked by putting it first on PYTHONPATH:
``pip install --no-deps --target /tmp/t triton==3.6.0`` then ``PYTHONPATH=/tmp/t python -m ...``.
The interpreter cannot find what only the compiler rejects (a type that does not lower, a
construct the GPU backend lacks) nor register spills; this can, with no device. It prints
the registers and stack bytes of each kernel when triton's bundled ``cuobjdump`` is there, and
exits non-zero if a compile fails. TRITON_INTERPRET must be unset (the kernels must be real
``JITFunction`` objects).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

from .. import config

# dtype of each pointer: the data tensors in the scan's dtype, lengths int64, the barrier
# counters int32, everything else (workspaces, states, carries, scratch) fp32
_DATA = {"xp", "w_hh", "w_hr", "b_hn", "out", "grad_out", "grad_hn", "c0", "h0", "n0", "m0",
         "dxp", "dh0"}
_TRITON_DT = {"fp32": "*fp32", "fp16": "*fp16", "bf16": "*bf16"}
_SYNC = {"step": 0, "persistent": 1, "persistent-grid": 2}
# (cell, backward, strategy, the cell's flags): every kernel in each variant its launcher uses
_CASES = [
    ("lstm", False, "step", {"PROJ": False}), ("lstm", False, "step", {"PROJ": True}),
    ("lstm", False, "persistent", {"PROJ": False}),
    ("lstm", False, "persistent-grid", {"PROJ": True}),
    ("lstm", True, "step", {"PROJ": False}), ("lstm", True, "step", {"PROJ": True}),
    ("lstm", True, "persistent", {"PROJ": False}),
    ("lstm", True, "persistent-grid", {"PROJ": True}),
    ("gru", False, "step", {"HAS_BHN": True}), ("gru", False, "persistent-grid", {"HAS_BHN": True}),
    ("gru", True, "step", {}), ("gru", True, "persistent-grid", {}),
    ("rnn", False, "step", {"RELU": False}), ("rnn", False, "persistent-grid", {"RELU": True}),
    ("rnn", True, "step", {"RELU": True}), ("rnn", True, "persistent-grid", {"RELU": False}),
    # the recurrent variants (``variants.py``: flags of the same kernels): peephole + zoneout
    # masks, head-wise W_hh (heads of 64) + eval zoneout, head-wise GRU / RNN
    ("lstm", False, "step", {"PROJ": False, "PEEP": True, "ZH": 1, "ZC": 1}),
    ("lstm", True, "step", {"PROJ": False, "PEEP": True, "ZH": 1, "ZC": 1}),
    ("lstm", False, "persistent", {"PROJ": False, "HD": 64, "ZH": 2, "ZC": 2}),
    ("lstm", True, "persistent", {"PROJ": False, "HD": 64, "ZH": 2, "ZC": 2}),
    ("gru", False, "step", {"HAS_BHN": True, "HD": 64, "ZH": 1}),
    ("gru", True, "step", {"HD": 64, "ZH": 1}),
    ("rnn", False, "step", {"RELU": False, "HD": 64}),
    ("rnn", True, "step", {"RELU": True, "HD": 64}),
    # the sLSTM (one program a head, ``slstm_kernels.py``): heads of d = 64 (DP) and 128
    ("slstm", False, "persistent", {"NH": 4, "DP": 64}),
    ("slstm", True, "persistent", {"NH": 4, "DP": 64}),
    ("slstm", False, "step", {"NH": 4, "DP": 128}), ("slstm", True, "step", {"NH": 4, "DP": 128}),
]


# The ``resident`` strategy (resident.py, resident_proj.py): (cell, backward, B, H, P) at the
# H200's 132 SMs (P: the LSTM's projection, None without); the plan
# (resident_launch.make_plan) picks the rows, units and warps of each.
_RESIDENT_SMS = 132
_RESIDENT_QUICK = [(c, bwd, 16, 512, P) for c, P in (("lstm", None), ("gru", None),
                                                     ("rnn", None), ("lstm", 256))
                   for bwd in (False, True)]
_RESIDENT_FULL = [(c, bwd, B, H, P) for c, P in (("lstm", None), ("gru", None), ("rnn", None),
                                                 ("lstm", "H/2"))
                  for bwd in (False, True) for B in (1, 16, 64) for H in (512, 1024)]


def _variants(quick: bool):
    """(label, kernels, backward, strategy, flags, phase index) of what the launcher launches;
    ``quick``: the most involved variant of each kernel (persistent-grid)."""
    out = []
    for cell, backward, strat, flags in _CASES:
        if quick and strat != "persistent-grid":      # the sLSTM has none: not in --quick
            continue
        label = f"{cell}_{'bwd' if backward else 'fwd'} {strat}"
        if flags.get("PROJ"):
            label += " proj"
        if "DP" in flags:
            label += f" d{flags['DP']}"
        label += "".join(f" {k.lower()}{'' if v is True else v}" for k, v in flags.items()
                         if k in ("PEEP", "HD", "ZH", "ZC") and v)
        out.append((label, cell, backward, strat, flags))
    return out


def _resources(cubin: bytes) -> str:
    import triton
    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    if not os.path.exists(tool):
        return ""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        res = subprocess.run([tool, "-res-usage", f.name], capture_output=True, text=True)
    for line in res.stdout.splitlines():
        if "REG:" in line:
            return " ".join(w for w in line.split() if w.startswith(("REG:", "STACK:")))
    return ""


def compile_all(arch: int = 90, dtypes=("fp16", "bf16", "fp32"), quick: bool = False) -> int:
    """Compile the variants; print one line each; return the number of failures."""
    if config.flag("triton_interpret"):
        raise SystemExit("unset TRITON_INTERPRET: the interpreter has no compiler to check")
    import torch
    from triton.backends.compiler import GPUTarget

    from . import gru, launch, lstm, plan, rnn, slstm_kernels
    tables = {"lstm": lstm.KERNELS, "gru": gru.KERNELS, "rnn": rnn.KERNELS,
              "slstm": slstm_kernels.KERNELS}
    failures = 0
    target = GPUTarget("cuda", arch, 32)
    for dt in dtypes:
        torch_dt = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[dt]
        for label, cell, backward, strat, flags in _variants(quick):
            kernels = tables[cell]
            fn = kernels.backward if backward else kernels.forward
            with plan.strategy("step" if strat == "persistent-grid" else strat):
                pl = plan.make_plan(torch.device("cpu"), torch_dt, 64, 256, 256, True)
            if kernels.head_programs:
                pl = launch._head_plan(pl, flags)
            known = dict(HAS_LEN=True, REVERSE=True, SAVE=True, G=kernels.cell.gates,
                         DOT_F32=dt == "fp32" or (dt == "bf16" and arch < 80),
                         BB=pl.BB, BH=pl.BH, BK=pl.BK, **flags)
            each = launch.launches(kernels, backward, known, _SYNC[strat])
            for k, consts in enumerate(each):
                name = label + (f"/{_phase_label(kernels, backward, consts)}"
                                if len(each) > 1 else "")
                failures += _compile_one(fn, consts, dt, pl, target, f"sm_{arch} {dt} {name}")
        for cell, backward, B, H, P in _RESIDENT_QUICK if quick else _RESIDENT_FULL:
            P = H // 2 if P == "H/2" else P
            failures += _compile_resident(cell, backward, B, H, P, dt, torch_dt, arch, target)
    return failures


def _compile_resident(cell, backward, B, H, P, dt, torch_dt, arch, target) -> int:
    """One build of a ``resident`` kernel with the constexprs its launcher passes (both phases
    of a projection's step in the one launch, as on a GPU)."""
    import dataclasses

    import torch
    from ...cells import CELLS
    from . import resident_launch as RL
    spec = CELLS[cell]
    pl = RL.make_plan(spec, torch.device("cpu"), torch_dt, B, H, {}, num_sms=_RESIDENT_SMS, P=P)
    pl = dataclasses.replace(pl, sync=2)     # the GPU's grid barrier (the CPU plan has none)
    fn, consts, phases = RL.kernel_of(spec, backward, pl, H, P, dict(
        HAS_LEN=True, REVERSE=True, SAVE=True, RELU=False, HAS_BHN=cell == "gru"))
    consts.update({f"DO_{p}": 1 for p in phases})
    KC = consts["KC"]
    # as the launcher on a GPU (resident_launch.spill_free): the plan's build, or the first of
    # its variants without a spill (here: cuobjdump's stack bytes for the driver's count)
    planned = {"num_warps": pl.num_warps, "num_stages": pl.num_stages}
    note = ""
    for c, o in RL._variants(consts, planned):
        try:
            k, secs = _build(fn, c, dt, o, target)
        except Exception as exc:  # report every failing build, not just the first
            print(f"FAIL sm_{arch} {dt} {cell} resident B={B} H={H}: {type(exc).__name__}: "
                  f"{exc}", flush=True)
            return 1
        res = _resources(k.asm["cubin"])
        if o == planned and c == consts:
            first = (c, o, secs, res)
        if "STACK:" not in res or "STACK:0" in res.split():
            break
    else:
        c, o, secs, res = first
    if (c, o) != (consts, planned):
        note = f" (the plan's KC={KC}, {pl.num_warps} warps, {pl.num_stages} stages spill: " \
               f"{first[3].split()[-1]})"
    label = (f"sm_{arch} {dt} {cell}_{'bwd' if backward else 'fwd'} resident B={B} H={H}"
             f"{f' P={P}' if P else ''} [{pl.nprog_h} programs × BB={pl.BB} U={pl.BH} "
             f"KC={c['KC']}, {o['num_warps']} warps, {o['num_stages']} stages]")
    print(f"ok   {label} ({secs:.1f}s) {res}{note}", flush=True)
    return 0


def _phase_label(kernels, backward: bool, consts: dict) -> str:
    """The phase a one-phase launch runs, for its label."""
    phases = kernels.backward_phases if backward else kernels.forward_phases
    return next(p for p in phases if consts.get(f"DO_{p}")).lower()


def _compile_one(fn, consts: dict, dt: str, pl, target, label: str) -> int:
    try:
        k, secs = _build(fn, consts, dt, {"num_warps": pl.num_warps,
                                          "num_stages": pl.num_stages}, target)
    except Exception as exc:  # report every failing variant, not just the first
        print(f"FAIL {label}: {type(exc).__name__}: {exc}", flush=True)
        return 1
    print(f"ok   {label} ({secs:.1f}s) {_resources(k.asm['cubin'])}", flush=True)
    return 0


def _build(fn, consts: dict, dt: str, options: dict, target):
    """(the compiled kernel, seconds) of ``fn`` with ``consts`` for ``target``."""
    import triton
    sig = {}
    for name in fn.arg_names:
        if name in consts:
            sig[name] = "constexpr"
        elif not name.endswith("_ptr"):
            sig[name] = "i32"
        elif name == "lens_ptr":
            sig[name] = "*i64"
        elif name == "sync_ptr":
            sig[name] = "*i32"
        else:
            sig[name] = _TRITON_DT[dt] if name[:-4] in _DATA else "*fp32"
    t0 = time.perf_counter()
    src = triton.compiler.ASTSource(fn=fn, signature=sig, constexprs=consts)
    k = triton.compile(src, target=target, options=options)
    return k, time.perf_counter() - t0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", type=int, default=90, help="compute capability ×10 (80, 90, ...)")
    ap.add_argument("--dtypes", default="fp16,bf16,fp32")
    ap.add_argument("--quick", action="store_true", help="one (the largest) variant per kernel")
    args = ap.parse_args(argv)
    failures = compile_all(args.arch, tuple(args.dtypes.split(",")), args.quick)
    print(f"{failures} failure(s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
