"""How a scan is launched: strategy, tile sizes, device guard, allocation.

Strategies (see the kernel docstrings in ``lstm.py`` for the step structure):

``step``
    One launch per step (two for phases that need every hidden unit of the step before, i.e.
    the LSTM projection), grid = batch tiles × hidden tiles. The launch boundary is the barrier.
    Many programs per step, so it suits large H·B; costs one launch (~10 µs of Python and driver
    time) per step.
``persistent``
    One launch for the whole sequence. A program owns a batch tile and ALL hidden units, loops
    over the T steps and, inside a step, over the hidden tiles; the recurrence of batch row b
    depends only on row b, so the only barrier needed is ``__syncthreads`` between phases
    (W_hh is re-read from L2 every step). No launch overhead per step; suits small W_hh.
    This is the form that also runs under ``TRITON_INTERPRET=1`` (programs run one after another
    there, which is harmless because they are independent).
``persistent-grid`` (CUDA only, opt-in, never chosen by ``auto``)
    As ``persistent``, but the hidden tiles of a batch tile are shared by ``nprog_h`` programs
    that meet at a grid barrier (atomic counter) between phases, so every SM streams only its
    slice of W_hh. Needs all programs resident: the launcher never asks for more programs than
    SMs. It would deadlock under the interpreter (programs run sequentially), so it refuses to run
    there; its test is CUDA-only.

``auto`` picks ``persistent`` when all recurrent weights take at most 1 MiB (each program then
re-reads little per step), else ``step``. The 1 MiB threshold and the tile sizes below are
untuned guesses (no GPU was available when they were written); ``triton.autotune`` is not used
because the kernels write their state buffers in place and the tuner would re-run them.

Override with ``RNNKERNELS_TRITON_STRATEGY=step|persistent|persistent-grid`` or the
``strategy(...)`` context manager (the context manager wins); tile sizes with ``tuning(...)``
(tests use it to force several hidden/K tiles at small sizes).
"""
from __future__ import annotations

import contextlib
import contextvars
import os
from dataclasses import dataclass

import torch

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
STRATEGIES = ("auto", "step", "persistent", "persistent-grid")
_PERSISTENT_MAX_WEIGHT_BYTES = 1 << 20

_strategy: contextvars.ContextVar[str | None] = contextvars.ContextVar("rnnkernels_triton_strategy",
                                                                       default=None)
_tuning: contextvars.ContextVar[dict] = contextvars.ContextVar("rnnkernels_triton_tuning", default={})


def _check_strategy(name: str) -> str:
    if name not in STRATEGIES:
        raise ValueError(f"rnnkernels triton backend: unknown strategy {name!r}; expected one of "
                         f"{STRATEGIES}")
    return name


@contextlib.contextmanager
def strategy(name: str):
    """Force the launch strategy inside the block: ``with rnnkernels.triton.strategy("step"):``."""
    token = _strategy.set(_check_strategy(name))
    try:
        yield
    finally:
        _strategy.reset(token)


@contextlib.contextmanager
def tuning(**blocks):
    """Override tile sizes / launch options inside the block.

    Keys: ``block_b``, ``block_h``, ``block_k`` (powers of two ≥ 16), ``num_warps``,
    ``num_stages``, ``nprog_h`` (programs per batch tile of ``persistent-grid``).
    """
    allowed = {"block_b", "block_h", "block_k", "num_warps", "num_stages", "nprog_h"}
    unknown = set(blocks) - allowed
    if unknown:
        raise ValueError(f"unknown tuning keys {sorted(unknown)}; allowed {sorted(allowed)}")
    for key in ("block_b", "block_h", "block_k"):
        v = blocks.get(key)
        if v is not None and (v < 16 or v & (v - 1)):
            raise ValueError(f"{key} must be a power of two >= 16 (tl.dot's minimum), got {v}")
    token = _tuning.set({**_tuning.get(), **blocks})
    try:
        yield
    finally:
        _tuning.reset(token)


def requested_strategy() -> str:
    forced = _strategy.get()
    if forced is not None:
        return forced
    return _check_strategy(os.environ.get("RNNKERNELS_TRITON_STRATEGY", "auto").strip() or "auto")


def _pow2(n: int, lo: int, hi: int) -> int:
    p = lo
    while p < n and p < hi:
        p *= 2
    return p


def _num_sms(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 1


@dataclass(frozen=True)
class Plan:
    strategy: str       # "step" | "persistent" | "persistent-grid"
    BB: int             # batch rows per program
    BH: int             # hidden (output) units per tile
    BK: int             # reduction chunk of the recurrent products
    num_warps: int
    num_stages: int
    nprog_h: int        # programs along the hidden axis (step: tiles; persistent: 1)
    sync: int           # phase_sync mode: 0 launch boundary, 1 CTA barrier, 2 grid barrier
    dot_f32: bool       # see cell.mma

    def grid_b(self, B: int) -> int:
        return triton_cdiv(B, self.BB)


def triton_cdiv(a: int, b: int) -> int:
    return -(-a // b)


def dot_f32(dtype: torch.dtype, device: torch.device) -> bool:
    if dtype == torch.float32:
        return True
    if dtype == torch.bfloat16:
        if INTERPRET:
            return True  # the interpreter's bf16 tl.dot is wrong (triton 3.9); see cell.mma
        if device.type == "cuda" and torch.cuda.get_device_capability(device) < (8, 0):
            return True  # no bf16 tensor cores before Ampere
    return False


def make_plan(device: torch.device, dtype: torch.dtype, B: int, H: int, P: int, G: int,
              has_proj: bool) -> Plan:
    """The strategy and launch configuration of one scan (forward or backward)."""
    name = requested_strategy()
    tune = _tuning.get()
    elt = torch.empty((), dtype=dtype).element_size()
    weight_bytes = (G * H * P + (P * H if has_proj else 0)) * elt
    if name == "auto":
        name = "persistent" if weight_bytes <= _PERSISTENT_MAX_WEIGHT_BYTES else "step"
    if name == "persistent-grid" and INTERPRET:
        raise RuntimeError("rnnkernels triton backend: strategy 'persistent-grid' spins on a grid "
                           "barrier and would deadlock under TRITON_INTERPRET=1 (programs run "
                           "sequentially there); use 'step' or 'persistent'")
    width = max(H, P)
    if INTERPRET:
        # Interpreter cost is per tl op, not per element: the biggest tiles run fastest.
        BB = _pow2(B, 16, 64)
        BH = _pow2(width, 16, 128)
        BK = _pow2(width, 16, 128)
    else:
        half = dtype != torch.float32
        BK = 64 if half else 32
        if name == "step":
            BB = 16 if B <= 16 else (32 if B <= 64 else 64)
            BH = 32
        else:
            nsm = _num_sms(device)
            BB = 16 if triton_cdiv(B, 16) <= nsm else 64
            BH = 32 if (G == 4 or name == "persistent-grid") else 64
    BB = tune.get("block_b", BB)
    BH = tune.get("block_h", BH)
    BK = tune.get("block_k", BK)
    num_warps = tune.get("num_warps", 4)
    num_stages = tune.get("num_stages", 2)
    n_tiles = triton_cdiv(width, BH)
    if name == "step":
        nprog_h, sync = n_tiles, 0
    elif name == "persistent":
        nprog_h, sync = 1, 1
    else:
        nb = triton_cdiv(B, BB)
        nsm = _num_sms(device)
        nprog_h = tune.get("nprog_h", min(n_tiles, max(1, nsm // nb)))
        if nb * nprog_h > nsm:
            raise RuntimeError(f"rnnkernels triton backend: 'persistent-grid' needs {nb}×{nprog_h} "
                               f"co-resident programs but the GPU has {nsm} SMs; use 'step' or "
                               f"'persistent'")
        sync = 2 if nprog_h > 1 else 1
    return Plan(name, BB, BH, BK, num_warps, num_stages, nprog_h, sync, dot_f32(dtype, device))


def empty(shape, dtype, device) -> torch.Tensor:
    """Every buffer the backend allocates comes from here (tests poison it with NaN)."""
    return torch.empty(shape, dtype=dtype, device=device)


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def device_guard(t: torch.Tensor):
    """Triton launches on the current CUDA device: make it the tensors' device."""
    if t.device.type == "cuda":
        return torch.cuda.device(t.device)
    return contextlib.nullcontext()
