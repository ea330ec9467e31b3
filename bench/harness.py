"""Measurement machinery shared by the runner (``bench/run.py``), ``--validate`` and the
pytest-benchmark tests: providers, inputs, one training/inference step and the torch.nn answer
each provider is checked against. Error metrics live in ``bench/scoring.py``; timers, peak memory
and the environment record in ``bench/measure.py``.

A *provider* is who computes the layer: ``torch`` (torch.nn itself: cuDNN on a GPU, ATen/oneDNN on
the CPU) or one of the rnnkernels backends (``cpu``, ``cuda``, ``triton``, ``reference``). Every
provider gets the same weights (one seeded torch.nn ``state_dict``), the same inputs and the same
output gradients, so errors and speedups compare like with like.
"""
from __future__ import annotations

import functools
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

from .scoring import compare

REPO = Path(__file__).resolve().parent.parent

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float64": torch.float64,
          "fp64": torch.float64, "float16": torch.float16, "fp16": torch.float16,
          "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


# ------------------------------------------------------------------------------------ providers
# Tests register fake providers here: name -> factory(class_name, ctor_kwargs) -> nn.Module.
EXTRA_PROVIDERS: dict[str, Callable[[str, dict], nn.Module]] = {}


@functools.lru_cache(maxsize=None)
def import_rnnkernels():
    """(module, None) or (None, reason). The bench must keep working, on torch.nn alone, in a
    checkout where the package or its compiled extension is broken: it says so once instead."""
    try:
        import rnnkernels  # noqa: PLC0415
    except Exception as exc:  # ImportError, or an extension that fails to load
        return None, f"{type(exc).__name__}: {exc}"
    return rnnkernels, None


def available_providers(device: torch.device, dtype: torch.dtype = torch.float32,
                        timing: bool = True) -> list[str]:
    """``torch`` first, then the rnnkernels backends that can run on ``device`` for ``dtype``.

    With ``timing=True`` the Triton backend is dropped on the CPU: there it runs under
    TRITON_INTERPRET=1, a Python interpreter of the kernel, whose timings mean nothing.
    """
    names = ["torch"]
    rk, reason = import_rnnkernels()
    if rk is None:
        _warn_once(f"bench: rnnkernels is not importable ({reason}); measuring torch.nn only")
    else:
        try:
            backends = list(rk.available_backends(device, dtype))
        except TypeError:  # an older signature without dtype
            backends = list(rk.available_backends(device))
        order = ["cuda", "cpu", "triton", "reference"]
        backends.sort(key=lambda n: order.index(n) if n in order else len(order))
        for b in backends:
            if timing and b == "triton" and device.type == "cpu":
                continue
            names.append(b)
    names += [n for n in EXTRA_PROVIDERS if n not in names]
    return names


def build_module(provider: str, cls_name: str, kwargs: dict, state: dict,
                 device: torch.device, dtype: torch.dtype) -> nn.Module:
    """A ``cls_name`` module for ``provider`` with weights ``state``, on ``device``/``dtype``."""
    if provider == "torch":
        m = getattr(nn, cls_name)(**kwargs)
    elif provider in EXTRA_PROVIDERS:
        m = EXTRA_PROVIDERS[provider](cls_name, kwargs)
    else:
        rk, reason = import_rnnkernels()
        if rk is None:
            raise RuntimeError(f"provider {provider!r} needs rnnkernels, which failed: {reason}")
        m = getattr(rk, cls_name)(**kwargs, backend=provider)
    m.load_state_dict(state)
    return m.to(device=device, dtype=dtype)


def seeded_state(cls_name: str, kwargs: dict, seed: int) -> dict:
    """torch.nn's default init under ``seed``: the one set of weights every provider loads."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        ref = getattr(nn, cls_name)(**kwargs)
    return {k: v.detach().clone() for k, v in ref.state_dict().items()}


def module_kwargs(cfg, cell: str) -> dict:
    kw = dict(input_size=cfg.I, hidden_size=cfg.H, num_layers=cfg.layers,
              bidirectional=cfg.bidirectional, bias=True)
    if cfg.proj:
        kw["proj_size"] = cfg.proj
    return kw


# --------------------------------------------------------------------------------------- inputs
@dataclass
class Inputs:
    """What one call gets: ``x`` (tensor or PackedSequence) and ``hx``. ``grads`` (the upstream
    gradients of output, h_n[, c_n]) are filled in once the output shapes are known."""

    x: Tensor | PackedSequence
    hx: Tensor | tuple | None
    grads: list[Tensor] | None = None
    lengths: Tensor | None = None

    def to(self, dtype: torch.dtype) -> "Inputs":
        def cast(t):
            if t is None:
                return None
            if isinstance(t, PackedSequence):   # a namedtuple: not to be taken apart below
                return t.to(dtype)
            if isinstance(t, tuple):
                return tuple(cast(u) for u in t)
            return t.to(dtype)
        return Inputs(cast(self.x), cast(self.hx),
                      None if self.grads is None else [g.to(dtype) for g in self.grads],
                      self.lengths)


def _randn(gen: torch.Generator, shape, device, dtype) -> Tensor:
    # Drawn in fp32 on the CPU so every device and dtype sees the same numbers (rounded once).
    return torch.randn(shape, generator=gen).to(device=device, dtype=dtype)


def make_inputs(cfg, cell: str, device: torch.device, dtype: torch.dtype, seed: int) -> Inputs:
    gen = torch.Generator().manual_seed(seed + 1)
    D = 2 if cfg.bidirectional else 1
    x = _randn(gen, (cfg.T, cfg.B, cfg.I), device, dtype)
    h0 = _randn(gen, (cfg.layers * D, cfg.B, cfg.proj or cfg.H), device, dtype)
    hx: Tensor | tuple = h0
    if cell == "LSTM":
        hx = (h0, _randn(gen, (cfg.layers * D, cfg.B, cfg.H), device, dtype))
    lengths = None
    if cfg.packed:
        lengths = torch.randint(max(1, cfg.T // 4), cfg.T + 1, (cfg.B,), generator=gen)
        lengths[torch.randint(0, cfg.B, (1,), generator=gen)] = cfg.T
        x = pack_padded_sequence(x, lengths, enforce_sorted=False)
    return Inputs(x, hx, None, lengths)


def output_dict(result, cell: bool = False) -> dict[str, Tensor]:
    """A module's result as {'output', 'h_n'[, 'c_n']}; for cells {'h'[, 'c']}."""
    if cell:
        if isinstance(result, Tensor):                   # RNNCell / GRUCell
            return {"h": result}
        return {"h": result[0], "c": result[1]}          # LSTMCell
    first, second = result
    d = {"output": first.data if isinstance(first, PackedSequence) else first}
    if isinstance(second, tuple):
        d["h_n"], d["c_n"] = second
    else:
        d["h_n"] = second
    return d


def make_grads(outputs: dict[str, Tensor], seed: int) -> list[Tensor]:
    """Random upstream gradients (fp32, CPU-drawn) so the loss touches every output element."""
    gen = torch.Generator().manual_seed(seed + 2)
    return [torch.randn(t.shape, generator=gen).to(device=t.device, dtype=t.dtype)
            for t in outputs.values()]


# ---------------------------------------------------------------------------------------- steps
def make_step(module: nn.Module, inp: Inputs, mode: str,
              cell: bool = False) -> Callable[[], object]:
    """The callable that is timed. ``fwd``: inference under no_grad. ``fwdbwd``: one training
    step: clear grads, forward, backward from (output, h_n[, c_n]) into every parameter."""
    params = [p for p in module.parameters() if p.requires_grad]
    if mode == "fwd":
        def step():
            with torch.no_grad():
                return module(inp.x, inp.hx)
    elif mode == "fwdbwd":
        assert inp.grads is not None

        def step():
            for p in params:
                p.grad = None
            res = module(inp.x, inp.hx)
            torch.autograd.backward(list(output_dict(res, cell).values()), inp.grads)
            return res
    else:
        raise ValueError(f"unknown mode {mode!r}")
    return step


def param_grads(module: nn.Module) -> dict[str, Tensor | None]:
    return {f"grad.{n}": p.grad for n, p in module.named_parameters()}



# ------------------------------------------------------------------------------ torch.nn's kernel
def torch_impl(module: nn.Module, inp: Inputs) -> str:
    """Which ATen kernel torch.nn ran, read off the autograd graph of one forward:
    ``cudnn_rnn``, ``mkldnn_rnn_layer`` (oneDNN), ``miopen_rnn``, or the generic ATen loop
    of per-step ops (``ATen cell loop``), which is what the CPU uses for GRU and RNN."""
    special = {"CudnnRnnBackward0": "cudnn_rnn", "MkldnnRnnLayerBackward0": "mkldnn_rnn_layer",
               "MiopenRnnBackward0": "miopen_rnn"}
    with torch.enable_grad():
        res = module(inp.x, inp.hx)
    out = res[0].data if isinstance(res[0], PackedSequence) else res[0]
    stack, seen = [out.grad_fn], set()
    while stack and len(seen) < 5000:
        fn = stack.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        name = type(fn).__name__
        if name in special:
            return special[name]
        stack.extend(f for f, _ in fn.next_functions)
    return "ATen cell loop"


_warned: set[str] = set()


def _warn_once(msg: str) -> None:
    if msg not in _warned:
        _warned.add(msg)
        print(msg, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------- cases
def oracle_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


@dataclass
class Case:
    """One (config, cell, dtype) on a device: the shared weights and inputs, and torch.nn's
    answer — outputs and parameter grads of one training step — computed once, in fp32 (fp64
    for fp64) on the same weights and inputs rounded to ``dtype``."""

    cfg: object
    cell: str
    device: torch.device
    dtype: torch.dtype
    kwargs: dict
    state: dict
    inputs: Inputs
    ref: dict

    def ref_for(self, mode: str) -> dict:
        if mode == "fwd":
            return {k: v for k, v in self.ref.items() if not k.startswith("grad")}
        return self.ref


def prepare_case(cfg, cell: str, device: torch.device, dtype: torch.dtype, seed: int) -> Case:
    kwargs = module_kwargs(cfg, cell)
    state = seeded_state(cell, kwargs, seed)
    inputs = make_inputs(cfg, cell, device, dtype, seed)
    odt = oracle_dtype(dtype)
    # Weights and inputs rounded to dtype first, so a half kernel is scored on its arithmetic,
    # not on the rounding of its operands.
    ostate = {k: v.to(dtype).to(odt) for k, v in state.items()}
    oracle = build_module("torch", cell, kwargs, ostate, device, odt)
    oinp = inputs.to(odt)
    with torch.no_grad():
        outs = output_dict(oracle(oinp.x, oinp.hx))
    grads = [g.to(dtype) for g in make_grads(outs, seed)]
    inputs.grads = grads
    oinp.grads = [g.to(odt) for g in grads]
    res = make_step(oracle, oinp, "fwdbwd")()
    ref = {k: v.detach().clone() for k, v in output_dict(res).items()}
    ref.update({k: (None if v is None else v.detach().clone())
                for k, v in param_grads(oracle).items()})
    del oracle, res
    return Case(cfg, cell, device, dtype, kwargs, state, inputs, ref)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def checked_step(case: Case, provider: str, mode: str) -> tuple[nn.Module, Callable, dict]:
    """Build ``provider``'s module, make the timed step, run it once and score that very call
    against torch.nn (the first call of the function that is then timed is the one checked)."""
    m = build_module(provider, case.cell, case.kwargs, case.state, case.device, case.dtype)
    step = make_step(m, case.inputs, mode)
    res = step()
    sync(case.device)
    test = dict(output_dict(res))
    if mode == "fwdbwd":
        test.update(param_grads(m))
    err = compare(test, case.ref_for(mode), case.dtype)
    del res, test
    return m, step, err
