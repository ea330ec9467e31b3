"""How a scan is launched: the strategy and the tile sizes of one scan (``make_plan``).

``launch.py`` is the one caller: it plans every scan, forward and backward, of every cell.
Strategies (see ``launch.py`` for the step order and phases, the cell modules for the math):

``step``
    One launch per phase of each step, grid = batch tiles × hidden tiles. The launch boundary
    is the barrier. Many programs per step, so it suits large H·B; it pays one launch per step,
    which CUDA-graph replay (``graphs.py``) takes off the host.
``persistent``
    One launch for the whole sequence. A program owns a batch tile and ALL hidden units, loops
    over the T steps and, inside a step, over the hidden tiles; the recurrence of batch row b
    depends only on row b, so the only barrier needed is ``__syncthreads`` between phases
    (W_hh is re-read from L2 every step). No launch overhead per step; suits small W_hh.
    This is the form that also runs under ``TRITON_INTERPRET=1`` (programs run one after another
    there, which is harmless because they are independent).
``persistent-grid`` (CUDA only)
    As ``persistent``, but the hidden tiles of a batch tile are shared by ``nprog_h`` programs
    that meet at a grid barrier (atomic counter) between phases, so every SM streams only its
    slice of W_hh. Needs all programs resident: the launcher never asks for more programs than
    SMs, launches cooperatively where triton can (the launch fails rather than the barrier
    waiting for a program that cannot start), and a barrier that still spins for seconds sets a
    flag that makes the launcher raise rather than hang. It would deadlock under the interpreter
    (programs run sequentially), so it refuses to run there.

``resident`` (CUDA: one launch; interpreter: one launch per step)
    Grid-persistent like ``persistent-grid``, but each program owns whole gate groups of its
    units ([unit][gate] layout of W_hh) and loads its W_hh slice once, before the time loop:
    per step it reads only h_{t-1} and meets the others at one barrier (acquire-load spin);
    the backward sums the programs' partial dg·W slices instead of a 4H-long serial loop.
    Plain cells (± the LSTM projection: ``resident_proj.py``, two barriers a step); the
    variants take ``auto``'s strategy. Its own kernels and plan (``resident.py``,
    ``resident_launch.py``). ``auto`` picks it on a GPU only where the measured plan names it
    for the call (``backends/plan.py``: ``triton_strategy``, measured by ``bench.plan --device
    cuda``, which times it beside auto's own strategy).

``auto`` (see ``_auto_strategy``): ``persistent`` when one program has at most 4 tile products
per step, ``persistent-grid`` on a GPU up to H, P ≤ 256 when every program gets at most 2
hidden tiles, else ``step``; under the interpreter ``persistent`` up to 16 tile products, else
``step``. ``triton.autotune`` is not used because a persistent launch consumes its state buffers
(the tuner's repeated runs would start from a wrong h0).

Override with ``RNNKERNELS_TRITON_STRATEGY=step|persistent|persistent-grid|resident`` (read
through
``backends/config.py``) or the ``strategy(...)`` context manager (the context manager wins);
tile sizes with ``tuning(...)`` (tests use it to force several hidden/K tiles at small sizes).
The measurements behind these rules: ``bench/results/gpu-h200-20261126/README.md``, section
"Figures behind the Triton plan".
"""
from __future__ import annotations

import contextlib
import contextvars
import functools
from dataclasses import dataclass

import torch

from .. import config

# Read once: triton itself reads the switch once, when it decorates the kernels.
INTERPRET = config.flag("triton_interpret")
STRATEGIES = config.SETTINGS["triton_strategy"].values
_PERSISTENT_MAX_SERIAL_TILES = 16
_PERSISTENT_ALONE_MAX_SERIAL_TILES = 4
_GRID_MAX_WIDTH = 256
_MAX_GRID_Y = 65535

_strategy = contextvars.ContextVar("rnnkernels_triton_strategy", default=None)
_tuning = contextvars.ContextVar("rnnkernels_triton_tuning", default={})


def _check_strategy(name: str) -> str:
    if name not in STRATEGIES:
        raise ValueError(f"rnnkernels triton backend: unknown strategy {name!r}; expected one of "
                         f"{STRATEGIES}")
    return name


@contextlib.contextmanager
def strategy(name: str):
    """Force the launch strategy inside the block:
    ``with rnnkernels.backends.triton.strategy("step"):``. A context variable: it holds for the
    scans this thread launches. On a GPU autograd runs a backward on its own device thread,
    where the setting RNNKERNELS_TRITON_STRATEGY (process-wide) applies instead; every
    strategy computes the same gradients, so that changes the speed, never the result."""
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
    return config.get("triton_strategy")


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
    strategy: str       # "step" | "persistent" | "persistent-grid" | "resident"
    BB: int             # batch rows per program
    BH: int             # hidden (output) units per tile
    BK: int             # reduction chunk of the recurrent products
    num_warps: int
    num_stages: int
    nprog_h: int        # programs along the hidden axis (step: tiles; persistent: 1)
    sync: int           # phase_sync mode: 0 launch boundary, 1 CTA barrier, 2 grid barrier
    dot_f32: int        # DOT_HALF, DOT_IEEE or DOT_TF32 (dot_f32(), cell.mma)

    def grid_b(self, B: int) -> int:
        return triton_cdiv(B, self.BB)

    def launch_options(self) -> dict:
        """Keyword options of the kernel launch. A grid-barrier plan is launched cooperatively
        where this triton can (all programs co-resident, or the launch itself fails: never a
        spinning barrier that waits for a program that cannot start)."""
        opts = {"num_warps": self.num_warps, "num_stages": self.num_stages}
        if self.sync == 2 and _cooperative_launch_supported():
            opts["launch_cooperative_grid"] = True
        return opts


@functools.lru_cache(maxsize=None)
def _cooperative_launch_supported() -> bool:
    try:
        from triton.backends.nvidia.compiler import CUDAOptions  # noqa: PLC0415
    except Exception:  # noqa: BLE001 - no NVIDIA backend: no cooperative launch
        return False
    return "launch_cooperative_grid" in getattr(CUDAOptions, "__dataclass_fields__", {})


def triton_cdiv(a: int, b: int) -> int:
    return -(-a // b)


DOT_HALF, DOT_IEEE, DOT_TF32 = 0, 1, 2   # the kernels' DOT_F32 (cell.mma)


def dot_f32(dtype: torch.dtype, device: torch.device) -> int:
    """How the kernels' recurrent products run (``cell.mma``): DOT_HALF on the tensor cores in
    the weights' half type; DOT_IEEE in fp32 with IEEE FMAs; DOT_TF32 in fp32 on the tensor
    cores as TF32, for float32 on an Ampere-or-later GPU only where torch's own float32 matmuls
    may use TF32 (``torch.set_float32_matmul_precision("high")`` or
    ``torch.backends.cuda.matmul.allow_tf32 = True``): the op's input projection (``torch.mm``)
    then runs in TF32 too, so the whole layer follows the user's one switch. Read per scan."""
    if dtype == torch.float32:
        if (device.type == "cuda" and not INTERPRET
                and torch.get_float32_matmul_precision() != "highest"
                and torch.cuda.get_device_capability(device) >= (8, 0)):
            return DOT_TF32
        return DOT_IEEE
    if dtype == torch.bfloat16:
        if INTERPRET:
            return DOT_IEEE  # the interpreter's bf16 tl.dot is wrong (triton 3.9); see cell.mma
        if device.type == "cuda" and torch.cuda.get_device_capability(device) < (8, 0):
            return DOT_IEEE  # no bf16 tensor cores before Ampere
    return DOT_HALF


def _gpu_tiles(dtype: torch.dtype) -> tuple[int, int, int]:
    """(BB, BH, BK) of the compiled kernels: see make_plan for why these sizes."""
    return (16, 32, 32) if dtype != torch.float32 else (16, 16, 16)


def _serial_tiles(dtype: torch.dtype, H: int, P: int, has_proj: bool) -> int:
    """Tile products one ``persistent`` program does one after another per step, counted with
    the GPU tiles (so ``auto`` decides the same under the interpreter)."""
    _, bh, bk = _gpu_tiles(dtype)
    n = triton_cdiv(H, bh) * triton_cdiv(P, bk)
    if has_proj:
        n += triton_cdiv(P, bh) * triton_cdiv(H, bk)
    return n


def _auto_strategy(device: torch.device, dtype: torch.dtype, B: int, H: int, P: int,
                   has_proj: bool) -> str:
    """``auto``'s choice. ``step`` pays a launch per step at every size; one ``persistent``
    program streams all of W_hh through one SM, so it wins only while that is a few tile
    products; ``persistent-grid`` spreads W_hh over the SMs and wins while each program keeps at
    most 2 hidden tiles and max(H, P) ≤ 256 (beyond that ``step``'s many programs win). Measured
    on an H200, fp32 inference, LSTM and GRU: see the results README named in this module's
    docstring. The interpreter cannot run the grid variant: it keeps the older rule of up to 16
    tile products in one program."""
    serial = _serial_tiles(dtype, H, P, has_proj)
    if serial <= _PERSISTENT_ALONE_MAX_SERIAL_TILES:
        return "persistent"
    if not INTERPRET and device.type == "cuda" and max(H, P) <= _GRID_MAX_WIDTH:
        BB, BH, _ = _gpu_tiles(dtype)
        n_tiles = triton_cdiv(max(H, P), BH)
        nprog_h = min(n_tiles, _num_sms(device) // max(1, triton_cdiv(B, BB)))
        if nprog_h >= 1 and triton_cdiv(n_tiles, nprog_h) <= 2:
            return "persistent-grid"
    return "persistent" if serial <= _PERSISTENT_MAX_SERIAL_TILES else "step"


def make_plan(device: torch.device, dtype: torch.dtype, B: int, H: int, P: int,
              has_proj: bool, cell=None, training: bool = True) -> Plan:
    """The strategy and launch configuration of one scan (forward or backward). ``cell``: the
    CellSpec of a scan that ``resident`` can run (a plain cell, ± projection, no variants);
    None sends a request for ``resident`` to ``auto``'s choice. ``training``: the scan belongs
    to a call that will be differentiated (the backward scan, or a forward that saves its
    workspaces). Under ``auto`` on a GPU the measured plan (``backends/plan.py``) may name
    ``resident`` for the call's cell, mode, dtype, B and H; if it cannot run this shape (more
    batch groups than SMs), auto's own rules decide."""
    name = requested_strategy()
    tune = _tuning.get()
    measured = False
    if name == "auto" and cell is not None and device.type == "cuda":
        from .. import plan as _measured  # noqa: PLC0415
        measured = _measured.triton_strategy(device, cell.name.upper(), training, dtype, B,
                                             H) == "resident"
    if (name == "resident" or measured) and cell is not None:
        from . import resident_launch  # noqa: PLC0415 - resident_launch imports this module
        try:
            return resident_launch.make_plan(cell, device, dtype, B, H, tune,
                                              P=P if has_proj else None)
        except RuntimeError:
            if not measured:
                raise
    if name in ("auto", "resident"):
        name = _auto_strategy(device, dtype, B, H, P, has_proj)
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
        # Small tiles: compiled for sm_90 by triton 3.9 (``python -m
        # rnnkernels.backends.triton.aot``) the kernels fit in 255 registers without spilling
        # at BB×BH×BK = 16×32×32 for half types and 16×16×16 for fp32 (its FMA dot keeps both
        # operands in registers); BB = 32 or BK = 64 already spill. The step kernel's hidden
        # tile and warps come from a sweep on an H200 (block_h 16-128 × 2-8 warps; the results
        # README of the module docstring).
        BB, BH, BK = _gpu_tiles(dtype)
    BB = tune.get("block_b", BB)
    BH = tune.get("block_h", BH)
    BK = tune.get("block_k", BK)
    num_warps = tune.get("num_warps", 4)
    num_stages = tune.get("num_stages", 1)
    n_tiles = triton_cdiv(width, BH)
    if name == "step" and n_tiles > _MAX_GRID_Y:
        name = "persistent"  # the hidden tiles would not fit CUDA's grid.y; this has one program
    if name == "step":
        nprog_h, sync = n_tiles, 0
    elif name == "persistent":
        nprog_h, sync = 1, 1
    else:
        nb = max(1, triton_cdiv(B, BB))   # B = 0 plans too (nothing is launched then)
        nsm = _num_sms(device)
        nprog_h = tune.get("nprog_h", min(n_tiles, max(1, nsm // nb)))
        if nb * nprog_h > nsm:
            raise RuntimeError(f"rnnkernels triton backend: 'persistent-grid' needs "
                               f"{nb}×{nprog_h} co-resident programs but the GPU has {nsm} SMs; "
                               f"use 'step' or 'persistent'")
        sync = 2 if nprog_h > 1 else 1
    return Plan(name, BB, BH, BK, num_warps, num_stages, nprog_h, sync, dot_f32(dtype, device))


class _DirectCall:
    """An interpreted ``@triton.jit`` helper called without re-patching ``triton.language``."""

    def __init__(self, fn):
        self.fn = fn
        self.__name__ = getattr(fn, "__name__", "helper")
        self.__doc__ = getattr(fn, "__doc__", None)

    def __call__(self, *args, **kwargs):
        return self.fn.rewrite()(*args, **kwargs)


def interpreter_direct_calls(namespace: dict, names) -> None:
    """Speed up nested helper calls under ``TRITON_INTERPRET=1`` (no effect on a GPU).

    The interpreter of triton 3.9 re-patches the whole language module (``inspect.getmembers``
    over ``tl``, ``tl.tensor``, ``tl.math``) at EVERY call of one ``@triton.jit`` function from
    another, although the kernel launch has already patched that same module object (and
    restores it afterwards). The kernels here call dozens of small helpers per step, so that
    redundant patching adds up (figures: the results README named in the module docstring).
    This replaces the helpers ``names`` of ``namespace`` (never a kernel: those are launched
    with ``[grid]``) by wrappers that call the interpreter's rewritten function directly.
    Without that hook (another triton version) the helpers are left as they are.
    """
    if not INTERPRET:
        return
    for name in names:
        value = namespace[name]
        if callable(getattr(value, "rewrite", None)):
            namespace[name] = _DirectCall(value)
