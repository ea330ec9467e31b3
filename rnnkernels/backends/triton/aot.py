"""Compile every scan kernel for a CUDA target on a machine without a GPU (ahead-of-time check).

    python -m rnnkernels.backends.triton.aot [--arch 90] [--dtypes fp16,bf16,fp32] [--quick]

Runs triton's whole GPU pipeline (frontend → TTIR → TTGIR → LLVM → PTX → ptxas) on each
kernel in each variant its launcher uses (step, persistent, persistent-grid; with and without
the LSTM projection; every dtype), with the tile sizes ``plan.make_plan`` picks on a GPU.
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

_INTS = {"s_first", "n_steps", "T", "B", "H", "P"}
_DATA = {"xp_ptr", "w_hh_ptr", "w_hr_ptr", "bhn_ptr", "out_ptr", "gout_ptr", "ghn_ptr",
         "c0_ptr", "h0_ptr", "dxp_ptr", "dh0_ptr"}
_TRITON_DT = {"fp32": "*fp32", "fp16": "*fp16", "bf16": "*bf16"}


def _variants(quick: bool):
    """(label, kernel, strategy, constexprs) of what the launchers launch."""
    from . import gru, lstm, rnn
    common = {"HAS_LEN": True, "REVERSE": True}
    v = [
        ("lstm_fwd step", lstm._lstm_fwd_kernel, "step",
         dict(SAVE=True, PROJ=False, DO_CELL=1, DO_PROJ=0, NPH=1, SYNC=0)),
        ("lstm_fwd step proj/cell", lstm._lstm_fwd_kernel, "step",
         dict(SAVE=True, PROJ=True, DO_CELL=1, DO_PROJ=0, NPH=1, SYNC=0)),
        ("lstm_fwd step proj/proj", lstm._lstm_fwd_kernel, "step",
         dict(SAVE=True, PROJ=True, DO_CELL=0, DO_PROJ=1, NPH=1, SYNC=0)),
        ("lstm_fwd persistent", lstm._lstm_fwd_kernel, "persistent",
         dict(SAVE=True, PROJ=False, DO_CELL=1, DO_PROJ=0, NPH=1, SYNC=1)),
        ("lstm_fwd persistent-grid proj", lstm._lstm_fwd_kernel, "persistent-grid",
         dict(SAVE=True, PROJ=True, DO_CELL=1, DO_PROJ=1, NPH=2, SYNC=2)),
        ("lstm_bwd step", lstm._lstm_bwd_kernel, "step",
         dict(PROJ=False, DO_A=1, DO_B=0, NPH=1, SYNC=0)),
        ("lstm_bwd step proj/A", lstm._lstm_bwd_kernel, "step",
         dict(PROJ=True, DO_A=1, DO_B=0, NPH=1, SYNC=0)),
        ("lstm_bwd step proj/B", lstm._lstm_bwd_kernel, "step",
         dict(PROJ=True, DO_A=0, DO_B=1, NPH=1, SYNC=0)),
        ("lstm_bwd persistent", lstm._lstm_bwd_kernel, "persistent",
         dict(PROJ=False, DO_A=1, DO_B=1, NPH=1, SYNC=1)),
        ("lstm_bwd persistent-grid proj", lstm._lstm_bwd_kernel, "persistent-grid",
         dict(PROJ=True, DO_A=1, DO_B=1, NPH=2, SYNC=2)),
        ("gru_fwd step", gru._gru_fwd_kernel, "step", dict(SAVE=True, HAS_BHN=True, SYNC=0)),
        ("gru_fwd persistent-grid", gru._gru_fwd_kernel, "persistent-grid",
         dict(SAVE=True, HAS_BHN=True, SYNC=2)),
        ("gru_bwd step", gru._gru_bwd_kernel, "step", dict(SYNC=0)),
        ("gru_bwd persistent-grid", gru._gru_bwd_kernel, "persistent-grid", dict(SYNC=2)),
        ("rnn_fwd step", rnn._rnn_fwd_kernel, "step", dict(RELU=False, SYNC=0)),
        ("rnn_fwd persistent-grid", rnn._rnn_fwd_kernel, "persistent-grid",
         dict(RELU=True, SYNC=2)),
        ("rnn_bwd step", rnn._rnn_bwd_kernel, "step", dict(RELU=True, SYNC=0)),
        ("rnn_bwd persistent-grid", rnn._rnn_bwd_kernel, "persistent-grid",
         dict(RELU=False, SYNC=2)),
    ]
    if quick:  # the most involved variant of each kernel
        keep = {"lstm_fwd persistent-grid proj", "lstm_bwd persistent-grid proj",
                "gru_fwd persistent-grid", "gru_bwd persistent-grid", "rnn_fwd persistent-grid",
                "rnn_bwd persistent-grid"}
        v = [x for x in v if x[0] in keep]
    return [(label, fn, strat, {**common, **c}) for label, fn, strat, c in v]


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
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        raise SystemExit("unset TRITON_INTERPRET: the interpreter has no compiler to check")
    import torch
    import triton
    from triton.backends.compiler import GPUTarget

    from . import plan
    failures = 0
    target = GPUTarget("cuda", arch, 32)
    for dt in dtypes:
        torch_dt = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[dt]
        for label, fn, strat, consts in _variants(quick):
            with plan.strategy("step" if strat == "persistent-grid" else strat):
                pl = plan.make_plan(torch.device("cpu"), torch_dt, 64, 256, 256, 4, True)
            consts = {**consts, "DOT_F32": dt == "fp32" or (dt == "bf16" and arch < 80),
                      "BB": pl.BB, "BH": pl.BH, "BK": pl.BK}
            sig = {}
            for name in fn.arg_names:
                if name in consts:
                    sig[name] = "constexpr"
                elif name in _INTS:
                    sig[name] = "i32"
                elif name == "len_ptr":
                    sig[name] = "*i64"
                elif name == "sync_ptr":
                    sig[name] = "*i32"
                else:
                    sig[name] = _TRITON_DT[dt] if name in _DATA else "*fp32"
            t0 = time.perf_counter()
            try:
                src = triton.compiler.ASTSource(fn=fn, signature=sig, constexprs=consts)
                k = triton.compile(src, target=target, options={"num_warps": pl.num_warps,
                                                                "num_stages": pl.num_stages})
            except Exception as exc:  # report every failing variant, not just the first
                failures += 1
                print(f"FAIL sm_{arch} {dt} {label}: {type(exc).__name__}: {exc}", flush=True)
                continue
            print(f"ok   sm_{arch} {dt} {label} ({time.perf_counter() - t0:.1f}s) "
                  f"{_resources(k.asm['cubin'])}", flush=True)
    return failures


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
