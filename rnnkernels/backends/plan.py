"""The measured routing plan of ``backend="auto"``: where torch's own RNN beats our kernels.

Issue 12's promise is that swapping in rnnkernels is never slower than torch.nn. Whether our
scans or torch's native RNN (oneDNN/ATen on the CPU, cuDNN on a GPU) is faster depends on the
machine, the cell, inference vs training, the dtype, the batch and the hidden size, so ``auto``
does not guess: it reads a plan that ``python -m bench.plan`` measured, committed as data in
``rnnkernels/plans/<device type>.json`` (``cpu.json``, ``cuda.json``; package data). Schema 1::

    {"schema": 1, "device": "cpu", "threshold": 1.03,
     "tables": {"<key>": {"measured": {"date", "cpu_model", "torch", "threads", "git_sha", ...},
                          "points": [{"cell": "LSTM", "mode": "fwd", "dtype": "float32",
                                      "B": 64, "H": 256, "T": 100, "ratio": 0.69}, ...]}}}

``ratio`` = torch.nn's time ÷ ours (above 1: ours is faster), measured with our kernels named
(``backend="cpu"``; on CUDA the backend ``auto`` resolves to, triton or cuda; never ``auto``
itself) against torch.nn on the same weights. One table per machine class, its key
(``table_key``) saying what decides how fast both sides are:

* CPU: the ISA the compiled kernels run (``compiled.get_option("cpu_isa")``: "avx512",
  "avx2", "generic").
* CUDA: ``"<device name>/sm_<major><minor>/<SM count>sm"``, e.g. "NVIDIA H200/sm_90/132sm"
  (``cuda_key``). The compute capability alone is too coarse: an H100 PCIe (114 SMs, HBM2e)
  and an H200 (132 SMs, HBM3e) are both sm_90, yet the latency-bound small shapes scale with
  the SM count (the Triton persistent scans spread over the SMs; cuDNN picks its algorithms
  per part) and the large ones with memory bandwidth, which only the name tells apart. The
  SM count also separates a MIG slice from the whole GPU. A GPU that was never measured has
  no table and never routes: ``auto`` runs our kernels there, as before the plan existed.

A CUDA point whose ours is the Triton backend may also name the Triton launch strategy that
ran it fastest, where that is not ``auto``'s own choice: ``"triton_strategy": "resident"``
(``bench.plan`` times the resident strategy beside auto's on one-direction points; the ratio
is then torch's time ÷ the faster one's). ``triton_strategy`` gives it to the Triton plan
(``triton/plan.py``), which runs a scan of ``auto`` with it; no such field: auto's own rules.

The rule (``torch_is_faster``): in the table of the running machine, among the points of the
call's cell, mode ("fwd": no gradient will be taken; "fwdbwd": it will), dtype and direction
(a bidirectional call takes the bidirectional points, ``"bidirectional": true``, where the table
has them; ``routable`` says which calls the points stand for at all), take the
nearest in (log2 B, log2 H); torch's RNN runs the call when that point's ratio is below the
file's ``threshold``. Equidistant points: the lowest ratio decides (the promise is about never
being slower). A dtype the plan did not measure never routes: bf16/fp16 kernels are different
code on both sides, so float32's numbers say nothing about them. No file, no table for this
machine, or the setting ``RNNKERNELS_PLAN=off``: never routes, and ``auto`` runs our kernels as
before. The Elman RNN's points (measured with tanh) also stand for relu. CUDA's float32 points
are measured with TF32 off (fp32 on both sides, as ``bench/gpu.sh`` runs everything).

Answers are memoised per (device, cell, mode, dtype, B, H): the lookup runs on every layer call
(~0.5 µs on a hit). The file and the machine's table key are read once (reading the ISA from the
extension costs ~2 µs; a GPU's properties more); ``forget()`` drops all of it, e.g. after
``compiled.set_option("cpu_isa", ...)``. Nothing here touches ``torch.cuda`` unless a CUDA call
is being routed (or ``describe("cuda")`` asks): a CPU-only process never initialises CUDA. While
torch.compile or torch.export traces, the plan is not consulted (always False): the graph keeps
our scan, one opaque custom op, where torch's RNN would be decomposed into a step-by-step graph,
and sizes may be symbolic there.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from . import config

SCHEMA = 1
TRITON_STRATEGIES = ("resident",)      # what a point's "triton_strategy" may name
# Ours keeps a call only where measured at least 3 % faster: a tie within a shared machine's
# noise goes to torch's kernel, which costs the user nothing (make bench: a 1.0003 point lost
# 0.93x when run again).
DEFAULT_THRESHOLD = 1.03
PLANS_DIR = Path(__file__).resolve().parent.parent / "plans"
MODES = ("fwd", "fwdbwd")

_override: Path | dict | None = None   # set_plan(): a file or a parsed plan, for tests
_files: dict[str, dict | None] = {}    # device type -> the parsed plan file (None: no file)
_keys: dict[tuple, str | None] = {}    # (device type, CUDA index) -> the table key here
_memo: dict[tuple, tuple] = {}
_MEMO_LIMIT = 4096                     # distinct shapes kept; then the memo starts over


def dtype_name(dtype: torch.dtype) -> str:
    """The name the plan file uses for a dtype ("float32")."""
    return str(dtype).replace("torch.", "")


def set_plan(plan: str | Path | dict | None) -> None:
    """Use ``plan`` (a file, or an already parsed plan) instead of the package's files, for
    every device; None goes back to ``rnnkernels/plans/``. Tests and the generator use it."""
    global _override
    _override = Path(plan) if isinstance(plan, str) else plan
    forget()


def forget() -> None:
    """Drop everything cached: the files, the machine's table keys (re-read the next time, e.g.
    after ``compiled.set_option("cpu_isa", ...)``) and the memoised answers."""
    _files.clear()
    _keys.clear()
    _memo.clear()


def path(device_type: str) -> Path:
    """The plan file of a device type (the override when a file was set)."""
    if isinstance(_override, Path):
        return _override
    return PLANS_DIR / f"{device_type}.json"


def load(device_type: str) -> dict | None:
    """The parsed plan for ``device_type`` (cached), or None when there is none. A file that is
    not a plan of this schema raises ``ValueError``: a broken committed plan must not pass
    silently as "never route"."""
    if device_type in _files:
        return _files[device_type]
    if isinstance(_override, dict):
        plan = _override
    else:
        file = path(device_type)
        plan = json.loads(file.read_text()) if file.is_file() else None
    if plan is not None:
        validate(plan, str(path(device_type)))
    _files[device_type] = plan
    return plan


def validate(plan: dict, where: str = "plan") -> None:
    """``ValueError`` unless ``plan`` is a plan of schema 1 (the module docstring)."""
    if not isinstance(plan, dict) or plan.get("schema") != SCHEMA:
        raise ValueError(f"{where}: not a rnnkernels plan of schema {SCHEMA}")
    if not isinstance(plan.get("tables"), dict):
        raise ValueError(f"{where}: 'tables' must map a table key to a table")
    for key, table in plan["tables"].items():
        for p in table.get("points", ()):
            if not _well_formed(p):
                raise ValueError(f"{where}: table {key!r} has a malformed point {p}")


def _well_formed(p) -> bool:
    """A point has a cell, a mode of MODES, a dtype, B and H ≥ 1, a positive ratio and, if any,
    a triton_strategy of TRITON_STRATEGIES."""
    return (isinstance(p, dict) and all(isinstance(p.get(k), str) for k in ("cell", "dtype"))
            and p.get("mode") in MODES
            and all(isinstance(p.get(k), int) and p[k] >= 1 for k in ("B", "H"))
            and isinstance(p.get("ratio"), (int, float)) and p["ratio"] > 0
            and p.get("triton_strategy", TRITON_STRATEGIES[0]) in TRITON_STRATEGIES)


def cuda_key(props) -> str:
    """The table key of a GPU from its ``torch.cuda.get_device_properties`` (the module
    docstring says why name, capability and SM count): "NVIDIA H200/sm_90/132sm"."""
    return f"{props.name}/sm_{props.major}{props.minor}/{props.multi_processor_count}sm"


def table_key(device_type: str, index: int | None = None) -> str | None:
    """The key of this machine's table: on the CPU the ISA the compiled kernels run; on CUDA
    ``cuda_key`` of GPU ``index`` (None: the current device); None where there is none (no
    extension, no GPU, or a device type without plans). ``torch.cuda`` is asked only for
    "cuda", and only after ``is_available()`` (which does not initialise CUDA)."""
    where = (device_type, index)
    if where not in _keys:
        key = None
        if device_type == "cpu":
            from . import compiled  # noqa: PLC0415 - loads the extension
            key = compiled.get_option("cpu_isa") if compiled.AVAILABLE else None
        elif device_type == "cuda" and torch.cuda.is_available():
            key = cuda_key(torch.cuda.get_device_properties(
                torch.cuda.current_device() if index is None else index))
        _keys[where] = key
    return _keys[where]


def table(device_type: str, index: int | None = None) -> dict | None:
    """This machine's table of the device's plan (GPU ``index`` on CUDA), or None."""
    plan = load(device_type)
    key = table_key(device_type, index) if plan is not None else None
    return None if key is None else plan["tables"].get(key)


def threshold(device_type: str) -> float:
    plan = load(device_type)
    return float((plan or {}).get("threshold", DEFAULT_THRESHOLD))


def nearest(points: list[dict], cell: str, mode: str, dtype: str, B: int, H: int,
            bidirectional: bool = False) -> dict | None:
    """The point of (cell, mode, dtype, direction) nearest to (B, H) in (log2 B, log2 H);
    equidistant ones: the lowest ratio. None when that cell, mode and dtype were not measured.
    A bidirectional call takes the bidirectional points (both directions in one call run
    differently on each side: torch's oneDNN kernel against our two scans), or the
    unidirectional ones where the plan has none."""
    lb, lh = math.log2(max(B, 1)), math.log2(max(H, 1))
    best, best_key = None, None
    same = [p for p in points if p["cell"] == cell and p["mode"] == mode and p["dtype"] == dtype]
    if bidirectional and any(p.get("bidirectional") for p in same):
        same = [p for p in same if p.get("bidirectional")]
    else:
        same = [p for p in same if not p.get("bidirectional")]
    for p in same:
        key = (round(math.hypot(math.log2(p["B"]) - lb, math.log2(p["H"]) - lh), 9), p["ratio"])
        if best_key is None or key < best_key:
            best, best_key = p, key
    return best


def routable(device_type: str, packed: bool, projected: bool) -> bool:
    """Whether the plan's points stand for a call at all. On the CPU a packed batch and an LSTM
    with a projection are never routed: torch runs those with ATen's cell loop, not the oneDNN
    kernel the points measured (make bench measured 0.89x at q-packed when they were)."""
    return device_type != "cpu" or not (packed or projected)


def torch_is_faster(device: str | torch.device, cell: str, training: bool, dtype: torch.dtype,
                    B: int, H: int, bidirectional: bool = False) -> bool:
    """Whether the plan says torch's own RNN runs this call faster than our kernels (the module
    docstring: the rule). ``device``: the call's device or device type ("cpu"; "cuda" means the
    current GPU, ``torch.device("cuda:1")`` that one: a machine may mix GPU models);
    ``cell``: "LSTM", "GRU" or "RNN"; ``training``: whether the call will be differentiated
    (grad mode on and an input or parameter requires grad)."""
    if torch.compiler.is_compiling():
        return False
    faster = _entry(device, cell, training, dtype, B, H, bidirectional)[1]
    # The setting last: most answers are False, and the switch takes effect at the next call.
    return faster and config.get("plan") != "off"


def triton_strategy(device: str | torch.device, cell: str, training: bool, dtype: torch.dtype,
                    B: int, H: int) -> str | None:
    """The Triton launch strategy the plan measured fastest for this call (the nearest
    one-direction point's ``triton_strategy``, the module docstring), or None: ``auto``'s own
    rules. Arguments as ``torch_is_faster``; None while tracing or with the setting
    ``RNNKERNELS_PLAN=off``."""
    if torch.compiler.is_compiling():
        return None
    point = _entry(device, cell, training, dtype, B, H, False)[0]
    if point is None or config.get("plan") == "off":
        return None
    return point.get("triton_strategy")


def _entry(device, cell: str, training: bool, dtype: torch.dtype, B: int, H: int,
           bidirectional: bool) -> tuple[dict | None, bool]:
    """(the nearest point of the call or None, whether torch's RNN is faster there), memoised
    per (device, cell, mode, dtype, B, H, direction)."""
    where = ("cpu", None) if device == "cpu" else _place(device)
    key = (where, cell, training, dtype, B, H, bidirectional)
    entry = _memo.get(key)
    if entry is None:
        found = table(*where)
        point = None if found is None else nearest(
            found.get("points", []), cell, "fwdbwd" if training else "fwd", dtype_name(dtype),
            B, H, bidirectional)
        entry = (point, point is not None and point["ratio"] < threshold(where[0]))
        if len(_memo) >= _MEMO_LIMIT:
            _memo.clear()
        _memo[key] = entry
    return entry


def _place(device: str | torch.device) -> tuple[str, int | None]:
    """(device type, GPU index or None) of a call; a CUDA device without an index is the
    current one (a CUDA tensor is being routed, so asking torch.cuda is fine)."""
    device = torch.device(device)
    if device.type != "cuda":
        return device.type, None
    if device.index is not None:
        return "cuda", device.index
    # A CUDA tensor exists, so CUDA is initialised; otherwise (no GPU) no table, no init.
    return "cuda", torch.cuda.current_device() if torch.cuda.is_initialized() else None


def describe(device_type: str = "cpu") -> dict:
    """What the plan in force is, for ``python -m rnnkernels``: file, setting, table key,
    whether this machine has a table (``in_force``), its points and how it was measured."""
    file = "(a plan set in memory)" if isinstance(_override, dict) else str(path(device_type))
    info = {"file": file, "setting": None, "key": None, "tables": [], "in_force": False,
            "points": 0, "threshold": None, "measured": None, "error": None}
    try:
        info["setting"] = config.get("plan")
        plan = load(device_type)
        info["tables"] = sorted(plan["tables"]) if plan else []
        info["threshold"] = threshold(device_type) if plan else None
        info["key"] = table_key(device_type)
        found = table(device_type)
    except Exception as exc:  # noqa: BLE001 - diagnostics report, never crash
        info["error"] = f"{type(exc).__name__}: {exc}"
        return info
    if found is not None:
        info["in_force"] = True
        info["points"] = len(found.get("points", []))
        info["measured"] = found.get("measured")
    return info
