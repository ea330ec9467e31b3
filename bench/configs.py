"""The named benchmark configurations, and the small odd-sized cases of ``--validate``.

Every timing config is run for each cell (LSTM, GRU, RNN with tanh), each mode (forward under
``no_grad``; forward+backward as one training step) and each provider that runs on the device.

Two suites:

* ``full``  — the GPU sweep. ``fastrnn`` is the shape of PyTorch's own fast-RNN benchmark
  (``benchmarks/fastrnns``: seqLength=100, miniBatch=64, inputSize=hiddenSize=512, numLayers=1),
  so numbers can be put next to the ones published for cuDNN and TorchScript there. The others
  stress what that shape does not: a long sequence at a small batch (the per-step latency is all
  that counts), a large hidden size (the recurrent GEMM dominates), a deep bidirectional stack,
  and packed variable-length input (reverse direction within each sequence's own length).
* ``quick`` — a minute or two on a small CPU. ``q-b64`` and ``q-b1`` are exactly the shapes the
  C++ CPU kernels' targets are quoted at (T=100, I=H=256, B=64 and B=1), so those targets can be
  checked from the runner's table. The plain-loop ``reference`` backend is timed only here, on the
  configs marked ``reference=True``: it exists to be right, not fast.
"""
from __future__ import annotations

import fnmatch
from dataclasses import asdict, dataclass, field, replace

CELLS = ("LSTM", "GRU", "RNN")
MODES = ("fwd", "fwdbwd")
SUITES = ("quick", "full")


@dataclass(frozen=True)
class Config:
    """One input shape. Sizes follow torch.nn: input [T, B, I], hidden H, ``layers`` stacked.

    ``packed``: the batch is a PackedSequence (``enforce_sorted=False``) of random lengths in
    [T/4, T], one of them exactly T. ``reference``: small enough to time the plain-loop oracle.
    ``cells``: the cells to run it with (empty: the runner's ``--cells``).
    """

    name: str
    T: int
    B: int
    I: int
    H: int
    layers: int = 1
    bidirectional: bool = False
    packed: bool = False
    suite: str = "full"
    reference: bool = False
    note: str = ""
    cells: tuple[str, ...] = ()
    proj: int = 0               # the LSTM's proj_size (0: none); an LSTM-only config

    def shape(self) -> str:
        s = f"T{self.T}-B{self.B}-I{self.I}-H{self.H}-L{self.layers}"
        if self.proj:
            s += f"-P{self.proj}"
        if self.bidirectional:
            s += "-bidir"
        if self.packed:
            s += "-packed"
        return s

    def to_dict(self) -> dict:
        return asdict(self)


_ALL = [
    # ------------------------------------------------------------------ full (GPU) suite
    Config("fastrnn", T=100, B=64, I=512, H=512,
           note="PyTorch benchmarks/fastrnns default shape"),
    Config("long-b1", T=1024, B=1, I=512, H=512,
           note="long sequence, batch 1: pure per-step latency"),
    Config("long-b16", T=1024, B=16, I=512, H=512,
           note="long sequence, small batch"),
    Config("large-h2048", T=100, B=64, I=2048, H=2048,
           note="large hidden size: the recurrent GEMM dominates"),
    Config("deep-bidir", T=100, B=64, I=512, H=512, layers=3, bidirectional=True,
           note="3-layer bidirectional stack"),
    Config("packed", T=128, B=64, I=256, H=256, layers=2, bidirectional=True, packed=True,
           note="packed variable-length batch (lengths T/4..T, unsorted), 2-layer bidir"),
    # ------------------------------------------------------------------ quick (CPU) suite
    Config("q-b64", T=100, B=64, I=256, H=256, suite="quick", reference=True,
           note="C++ CPU target shape (T=100, I=H=256, B=64)"),
    Config("q-b1", T=100, B=1, I=256, H=256, suite="quick", reference=True,
           note="C++ CPU target shape (T=100, I=H=256, B=1)"),
    Config("q-long-b4", T=512, B=4, I=128, H=128, suite="quick",
           note="long sequence, small batch"),
    Config("q-bidir", T=50, B=16, I=128, H=128, layers=2, bidirectional=True, suite="quick",
           reference=True, note="2-layer bidirectional"),
    Config("q-packed", T=64, B=16, I=128, H=128, bidirectional=True, packed=True, suite="quick",
           reference=True, note="packed variable-length batch, bidirectional"),
]

REGISTRY: dict[str, Config] = {c.name: c for c in _ALL}
assert len(REGISTRY) == len(_ALL), "duplicate config name"


def suite(name: str) -> list[Config]:
    """The configs of suite ``name`` (``quick`` or ``full``), in registry order."""
    if name not in SUITES:
        raise ValueError(f"unknown suite {name!r}; expected one of {SUITES}")
    return [c for c in _ALL if c.suite == name]


def matching(pattern: str) -> list[Config]:
    """Registry configs whose name matches the shell-style ``pattern``."""
    return [c for c in _ALL if fnmatch.fnmatchcase(c.name, pattern)]


def select(items: list[str | Config] | None, suite_name: str) -> list[Config]:
    """Configs of the suite, or — when ``items`` are given — the given ones: a ``Config`` (a
    shape spec, see :func:`parse_spec`) as it is, a name pattern as every registry config it
    matches (so ``--configs fastrnn`` works from any suite), in the order given."""
    if not items:
        return suite(suite_name)
    chosen: list[Config] = []
    for item in items:
        found = [item] if isinstance(item, Config) else matching(item)
        if not found:
            raise ValueError(f"no config matches {item!r}; known: {', '.join(REGISTRY)}")
        chosen += [c for c in found if c not in chosen]
    return chosen


# ---------------------------------------------------------------------------------- shape specs
SPEC_HELP = """\
A shape spec is comma-separated key=value pairs (no spaces), e.g.
  cell=lstm,T=200,B=8,H=64,I=64,layers=1
  T=1000,B=1,H=256,bidir=1          (every cell of --cells)
keys: T, B, H (required); I (default H); layers (default 1); bidir, packed, reference
(0/1, default 0: reference also times the plain-loop reference backend); cell (lstm, gru or
rnn, several joined by '+'; default: --cells); P (the LSTM's proj_size, < H: an LSTM-only
shape, cell=lstm implied); name (default: the shape, e.g. T200-B8-I64-H64-L1).
"""
_INT_KEYS = {"T": "T", "B": "B", "I": "I", "H": "H", "layers": "layers", "L": "layers",
             "P": "proj", "proj": "proj"}
_BOOL_KEYS = {"bidir": "bidirectional", "bidirectional": "bidirectional", "packed": "packed",
              "reference": "reference"}
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def parse_spec(text: str) -> Config:
    """A :class:`Config` from a shape spec (:data:`SPEC_HELP`); ``ValueError`` saying what is
    wrong with it otherwise."""
    fields: dict = {}
    for part in text.split(","):
        key, sep, value = part.strip().partition("=")
        if not sep or not key or not value:
            raise ValueError(f"{part.strip()!r} is not key=value")
        if key in _INT_KEYS:
            if not value.isdigit() or int(value) < 1:
                raise ValueError(f"{key}={value!r}: expected a positive integer")
            fields[_INT_KEYS[key]] = int(value)
        elif key in _BOOL_KEYS:
            if value.lower() not in _TRUE + _FALSE:
                raise ValueError(f"{key}={value!r}: expected 0 or 1")
            fields[_BOOL_KEYS[key]] = value.lower() in _TRUE
        elif key == "cell":
            cells = tuple(c.upper() for c in value.split("+"))
            bad = [c for c in cells if c not in CELLS]
            if bad:
                raise ValueError(f"cell={value!r}: expected lstm, gru or rnn (joined by '+')")
            fields["cells"] = cells
        elif key == "name":
            fields["name"] = value
        else:
            raise ValueError(f"unknown key {key!r}; keys: T, B, I, H, layers, bidir, packed, "
                             "reference, cell, P, name")
    missing = [k for k in ("T", "B", "H") if k not in fields]
    if missing:
        raise ValueError(f"missing {', '.join(missing)} (T, B and H are required)")
    if fields.get("proj"):
        if fields["proj"] >= fields["H"]:
            raise ValueError(f"P={fields['proj']}: proj_size must be smaller than H")
        if fields.setdefault("cells", ("LSTM",)) != ("LSTM",):
            raise ValueError("P (proj_size) is an LSTM option: give cell=lstm or no cell")
    fields.setdefault("I", fields["H"])
    cfg = Config(name=fields.pop("name", ""), suite="custom", note="from the command line",
                 **fields)
    return cfg if cfg.name else replace(cfg, name=cfg.shape())


# ---------------------------------------------------------------------------------- validation
@dataclass(frozen=True)
class ValidateCase:
    """One module of ``--validate``: class name, constructor kwargs, and the input it gets."""

    module: str
    kwargs: dict = field(default_factory=dict)
    T: int = 63
    B: int = 5
    packed: bool = False
    with_state: bool = True

    @property
    def is_cell(self) -> bool:
        return self.module.endswith("Cell")

    def id(self) -> str:
        k = self.kwargs
        parts = [self.module]
        if not self.is_cell:
            parts.append(f"T{self.T}")
        parts += [f"B{self.B}", f"I{k['input_size']}", f"H{k['hidden_size']}"]
        if k.get("num_layers", 1) > 1:
            parts.append(f"L{k['num_layers']}")
        if k.get("bidirectional"):
            parts.append("bidir")
        if k.get("batch_first"):
            parts.append("bf")
        if k.get("proj_size"):
            parts.append(f"P{k['proj_size']}")
        if k.get("nonlinearity") == "relu":
            parts.append("relu")
        if k.get("bias") is False:
            parts.append("nobias")
        if self.packed:
            parts.append("packed")
        if not self.with_state:
            parts.append("nohx")
        return "-".join(parts)


def _kw(I=17, H=33, **extra) -> dict:
    return dict(input_size=I, hidden_size=H, **extra)


VALIDATE: list[ValidateCase] = [
    ValidateCase("LSTM", _kw()),
    ValidateCase("LSTM", _kw(num_layers=2, bidirectional=True, batch_first=True)),
    ValidateCase("LSTM", _kw(num_layers=2, bidirectional=True, proj_size=7)),
    ValidateCase("LSTM", _kw(num_layers=2, bidirectional=True), packed=True),
    ValidateCase("LSTM", _kw(), T=1, with_state=False),
    ValidateCase("GRU", _kw()),
    ValidateCase("GRU", _kw(num_layers=2, bidirectional=True, bias=False)),
    ValidateCase("GRU", _kw(num_layers=2, bidirectional=True), packed=True),
    ValidateCase("RNN", _kw(num_layers=2, bidirectional=True)),
    ValidateCase("RNN", _kw(nonlinearity="relu", batch_first=True)),
    ValidateCase("RNN", _kw(bidirectional=True), packed=True),
    ValidateCase("LSTMCell", _kw()),
    ValidateCase("GRUCell", _kw()),
    ValidateCase("RNNCell", _kw(nonlinearity="relu"), with_state=False),
]
