"""``python -m bench.run --validate``: every drop-in module (cells included) against torch.nn.

Small, odd sizes (T=63, B=5, I=17, H=33; T=1; proj_size=7; packed unsorted lengths; batch_first;
no bias; relu) so that an indexing or masking mistake cannot hide behind a round shape. Each case
runs one forward+backward with the same weights, inputs and upstream grads on every backend
available on the device — Triton too on the CPU when TRITON_INTERPRET=1, since here correctness,
not speed, is the point — and prints the max abs error of the outputs (output, h_n, c_n) and of
the grads (every parameter, the input, h0, c0), the scaled error that is checked against the
tolerance, and the median time of a forward+backward next to torch.nn's.
"""
from __future__ import annotations

import math
import time
import warnings

import torch
from torch.nn.utils.rnn import pack_padded_sequence

from . import configs as C
from . import harness as H
from . import measure as M
from . import scoring as S


def _inputs(case: C.ValidateCase, device, dtype, seed):
    gen = torch.Generator().manual_seed(seed + 11)
    k = case.kwargs
    I, Hs = k["input_size"], k["hidden_size"]
    P = k.get("proj_size", 0) or Hs

    def rnd(*shape):
        return torch.randn(shape, generator=gen).to(device=device, dtype=dtype)

    lengths = None
    if case.is_cell:
        x = rnd(case.B, I)
        h = rnd(case.B, Hs)
        hx = (h, rnd(case.B, Hs)) if case.module == "LSTMCell" else h
    else:
        L = k.get("num_layers", 1) * (2 if k.get("bidirectional") else 1)
        x = rnd(case.B, case.T, I) if k.get("batch_first") else rnd(case.T, case.B, I)
        h = rnd(L, case.B, P)
        hx = (h, rnd(L, case.B, Hs)) if case.module == "LSTM" else h
        if case.packed:
            lengths = torch.randint(1, case.T + 1, (case.B,), generator=gen)
            lengths[0] = case.T
    return x, (hx if case.with_state else None), lengths


def _cast(t, dtype):
    if t is None:
        return None
    if isinstance(t, tuple):
        return tuple(u.to(dtype) for u in t)
    return t.to(dtype)


def _leaf(t):
    if t is None:
        return None
    if isinstance(t, tuple):
        return tuple(_leaf(u) for u in t)
    return t.detach().clone().requires_grad_(True)


def _input_grads(x, hx) -> dict:
    d = {"grad.input": x.grad}
    if isinstance(hx, tuple):
        d["grad.h0"], d["grad.c0"] = hx[0].grad, hx[1].grad
    elif hx is not None:
        d["grad.h0"] = hx.grad
    return d


def _call(case, module, x, hx, lengths, grads):
    """One forward+backward from fresh leaves; returns {outputs..., grad.*}."""
    x, hx = _leaf(x), _leaf(hx)
    xin = x
    if lengths is not None:
        xin = pack_padded_sequence(x, lengths, batch_first=case.kwargs.get("batch_first", False),
                                   enforce_sorted=False)
    res = module(xin, hx)
    outs = H.output_dict(res, case.is_cell)
    if grads is not None:
        torch.autograd.backward(list(outs.values()), grads)
    d = {k: v.detach() for k, v in outs.items()}
    d.update({k: (None if v is None else v.detach())
              for k, v in H.param_grads(module).items()})
    d.update(_input_grads(x, hx))
    return d


def _time(case, module, x, hx, lengths, grads, device, reps=3) -> float:
    samples = []
    for _ in range(reps):
        module.zero_grad(set_to_none=True)
        H.sync(device)
        t0 = time.perf_counter()
        _call(case, module, x, hx, lengths, grads)
        H.sync(device)
        samples.append((time.perf_counter() - t0) * 1e3)
    return float(sorted(samples)[len(samples) // 2])


def _fmt(v) -> str:
    if v is None:
        return "-"
    return "inf" if math.isinf(v) else f"{v:.1e}"


def _row(rec: dict) -> str:
    err = rec.get("error") or {}
    flag = "FAIL" if rec["status"] != "ok" else ("ok" if err.get("ok") else "TOL!")
    t, tt = rec.get("time_ms"), rec.get("torch_ms")
    return (f"{rec['case']:36s} {rec['dtype']:8s} {rec['provider']:9s} "
            f"{_fmt(err.get('outputs_max_abs')):>9s} {_fmt(err.get('grads_max_abs')):>10s} "
            f"{_fmt(err.get('worst')):>8s} {_fmt(err.get('tol')):>6s} "
            f"{'-' if t is None else f'{t:.2f}':>8s} {'-' if tt is None else f'{tt:.2f}':>8s}  "
            f"{flag}")


def validate_case(case: C.ValidateCase, backends: list[str], device: torch.device,
                  dtype: torch.dtype, seed: int) -> list[dict]:
    """Records of every backend on one case (a torch.nn failure fails them all, visibly)."""
    base = {"kind": "validate", "case": case.id(), "module": case.module, "kwargs": case.kwargs,
            "T": case.T, "B": case.B, "packed": case.packed, "dtype": H.dtype_name(dtype),
            "device": device.type, "env": M.environment(device.type)}
    odt = H.oracle_dtype(dtype)
    try:
        state = H.seeded_state(case.module, case.kwargs, seed)
        x, hx, lengths = _inputs(case, device, dtype, seed)
        ostate = {k: v.to(dtype).to(odt) for k, v in state.items()}
        oracle = H.build_module("torch", case.module, case.kwargs, ostate, device, odt)
        ox, ohx = x.to(odt), _cast(hx, odt)
        probe = _call(case, oracle, ox, ohx, lengths, None)
        grads = [g.to(dtype) for g in
                 H.make_grads({k: v for k, v in probe.items() if not k.startswith("grad")}, seed)]
        ref = _call(case, oracle, ox, ohx, lengths, [g.to(odt) for g in grads])
        torch_mod = H.build_module("torch", case.module, case.kwargs, state, device, dtype)
        t_torch = _time(case, torch_mod, x, hx, lengths, grads, device)
    except Exception as exc:
        return [dict(base, provider=b, status="failed",
                     failure=f"torch.nn reference failed: {type(exc).__name__}: {exc}")
                for b in backends]
    records = []
    for b in backends:
        rec = dict(base, provider=b, torch_ms=t_torch)
        try:
            m = H.build_module(b, case.module, case.kwargs, state, device, dtype)
            rec["error"] = S.compare(_call(case, m, x, hx, lengths, grads), ref, dtype)
            # The Python-loop reference is slow and its time only indicative: one call.
            rec["time_ms"] = _time(case, m, x, hx, lengths, grads, device,
                                   reps=1 if b == "reference" else 3)
            rec["status"] = "ok"
        except Exception as exc:
            rec["status"] = "failed"
            rec["failure"] = f"{type(exc).__name__}: {exc}"
        records.append(rec)
    return records


def run_validation(device: torch.device, dtypes, seed: int, sink, providers=None) -> list[dict]:
    env = M.environment(device.type)
    head = (f"{'case':36s} {'dtype':8s} {'backend':9s} {'max|dout|':>9s} {'max|dgrad|':>10s} "
            f"{'error':>8s} {'tol':>6s} {'ms':>8s} {'torch ms':>8s}  ")
    print(f"\n== validation vs torch.nn on {env['device_name']} (torch {env['torch']}): "
          f"one forward+backward, same weights/inputs/upstream grads")
    print(head + "\n" + "-" * len(head), flush=True)
    records = []
    with warnings.catch_warnings():
        # torch.nn's own notice that oneDNN has no LSTM projection: true, and not ours to report.
        warnings.filterwarnings("ignore", message=".*not supported with oneDNN.*")
        for dtype in dtypes:
            backends = providers or H.available_providers(device, dtype, timing=False)
            # In half precision torch.nn is scored too (against itself in fp32): the bar to meet.
            backends = [b for b in backends if b != "torch"] + \
                (["torch"] if dtype in S.HALF else [])
            if not backends:
                print(f"(no rnnkernels backend available on {device.type} for "
                      f"{H.dtype_name(dtype)}: nothing to validate)", flush=True)
                continue
            for case in C.VALIDATE:
                for rec in validate_case(case, backends, device, dtype, seed):
                    print(_row(rec), flush=True)
                    if rec["status"] != "ok":
                        print(f"      {rec['failure']}", flush=True)
                    records.append(rec)
                    sink(rec)
    return records
