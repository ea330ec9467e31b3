"""The public API as users see it: signatures, docstrings, their examples and docs/API.md.

* each module class's ``inspect.signature`` is torch.nn's (names, kinds, order, defaults) plus our
  keyword-only options (``backend``, then the variant options the class takes), and constructing it with any argument form gives what torch.nn gives
  (the same module, or the same exception type);
* every public name has a real docstring; the modules' are in torch.nn's form and their examples
  (and ``rnnkernels.functional``'s) run as doctests;
* docs/API.md is what ``docs/gen_api.py`` generates now.
"""
from __future__ import annotations

import doctest
import importlib.util
import inspect
import pydoc
import typing
import warnings
from pathlib import Path

import pytest
import torch

import rnnkernels
from rnnkernels import backends, functional, ops
from rnnkernels.nn import modules

ROOT = Path(__file__).resolve().parent.parent
CLASSES = ["LSTM", "GRU", "RNN", "LSTMCell", "GRUCell", "RNNCell"]
P = inspect.Parameter
# Our keyword-only options beyond torch's, with their defaults: ``backend``, then the recurrent
# variants' (rnnkernels/variants.py), of which each class takes its cell's, then the layers'
# locked dropouts (rnnkernels/dropout.py).
OURS = {"backend": "auto", "peephole": False, "num_heads": 1, "zoneout": 0.0,
        "layer_norm": False, "locked_dropout": False, "input_dropout": 0.0,
        "output_dropout": 0.0}
_DROPOUTS = ("locked_dropout", "input_dropout", "output_dropout")
_CELL_OPTIONS = {"LSTM": ("peephole", "num_heads", "zoneout", "layer_norm"),
                 "GRU": ("num_heads", "zoneout", "layer_norm"), "RNN": ("num_heads",)}
VARIANT_OPTIONS = {**{k: v + _DROPOUTS for k, v in _CELL_OPTIONS.items()},
                   **{f"{k}Cell": v for k, v in _CELL_OPTIONS.items()}}


def torch_signature(name: str) -> inspect.Signature:
    """The constructor torch documents: its typed @overload for the layers (their real
    ``__init__`` is ``*args, **kwargs``), the constructor itself for the cells."""
    cls = getattr(torch.nn, name)
    if name.endswith("Cell"):
        return inspect.signature(cls)
    documented = [f for f in typing.get_overloads(cls.__init__)
                  if "input_size" in inspect.signature(f).parameters]
    assert len(documented) == 1, f"torch.nn.{name}: expected one documented overload"
    sig = inspect.signature(documented[0])
    return sig.replace(parameters=list(sig.parameters.values())[1:])


def shape(sig: inspect.Signature):
    return [(p.name, p.kind, p.default) for p in sig.parameters.values()]


@pytest.mark.parametrize("name", CLASSES)
def test_constructor_signature_is_torchs_plus_ours(name):
    ours = inspect.signature(getattr(rnnkernels, name))
    params = list(ours.parameters.values())
    n = len(torch_signature(name).parameters)
    assert shape(ours.replace(parameters=params[:n])) == shape(torch_signature(name))
    extra = ("backend", *VARIANT_OPTIONS[name])
    assert [(p.name, p.kind, p.default) for p in params[n:]] == \
        [(o, P.KEYWORD_ONLY, OURS[o]) for o in extra]
    assert all(p.annotation is not P.empty for p in ours.parameters.values()), ours
    # help() shows it too: its header line is the signature, its __init__ the same with self.
    text = pydoc.render_doc(getattr(rnnkernels, name), renderer=pydoc.plaintext)
    assert f"{name}(input_size: int, hidden_size: int" in text
    assert "__init__(self, input_size: int, hidden_size: int" in text
    assert "*, backend: str = 'auto'" in text


@pytest.mark.parametrize("name", CLASSES)
def test_forward_signature_is_torchs(name):
    ours = inspect.signature(getattr(rnnkernels, name).forward)
    theirs = inspect.signature(getattr(torch.nn, name).forward)
    assert [(p.name, p.default) for p in ours.parameters.values()] == \
        [(p.name, p.default) for p in theirs.parameters.values()] == \
        [("self", P.empty), ("input", P.empty), ("hx", None)]
    assert ours.parameters["input"].annotation is not P.empty
    assert ours.parameters["hx"].annotation is not P.empty
    assert ours.return_annotation is not P.empty


def test_a_subclass_and_an_instance_keep_their_own_signatures():
    """The signature lives on each class's __init__, not on the class: a user's subclass with
    its own __init__ shows that one, and an instance shows what torch.nn's instance shows."""
    class Mine(rnnkernels.LSTM):
        def __init__(self, size: int):
            super().__init__(size, size, backend="reference")

    class Plain(rnnkernels.GRU):
        pass

    assert list(inspect.signature(Mine).parameters) == ["size"]
    assert Mine(4).backend == "reference"
    assert inspect.signature(Plain) == inspect.signature(rnnkernels.GRU)
    cell, twin = rnnkernels.GRUCell(3, 4), torch.nn.GRUCell(3, 4)
    assert inspect.signature(cell) == inspect.signature(twin)      # Module.__call__'s
    assert list(inspect.signature(cell.forward).parameters) == ["input", "hx"]


# (class, args, kwargs): torch.nn's positional and keyword forms, and bad arguments.
FORMS = [
    ("LSTM", (10, 20), {}),
    ("LSTM", (10, 20, 2), {}),
    ("LSTM", (10, 20, 2, False, True, 0.25, True, 5), {}),
    ("LSTM", (10, 20, 1, True, False, 0.0, False, 0, "cpu", torch.float64), {}),
    ("LSTM", (), dict(input_size=10, hidden_size=20, num_layers=2, bias=False, batch_first=True,
                      dropout=0.5, bidirectional=True, proj_size=4, device="cpu",
                      dtype=torch.float64)),
    ("LSTM", (10, 20), dict(dropout=0.5)),                  # torch warns: one layer
    ("LSTM", (), {}),
    ("LSTM", (10,), {}),
    ("LSTM", (10, 20), dict(input_size=10)),
    ("LSTM", (10, 20), dict(bogus=1)),
    ("LSTM", (10, 20, 1, True, False, 0.0, False, 0, None, None, "cpu"), {}),
    ("LSTM", (10, 20), dict(proj_size=20)),
    ("LSTM", (10, 20), dict(dropout=1.5)),
    ("LSTM", (10, 20), dict(bias="yes")),
    ("LSTM", (10.0, 20), {}),
    ("LSTM", (10, 0), {}),
    ("LSTM", (10, 20, 0), {}),
    ("GRU", (10, 20, 3), dict(bidirectional=True)),
    ("GRU", (10, 20, 1, True, True, 0.0, False), dict(device="cpu", dtype=torch.float64)),
    ("GRU", (10, 20), dict(proj_size=0)),                   # torch: ValueError, not TypeError
    ("GRU", (10, 20), dict(proj_size=3)),
    ("GRU", (10, 20, 1, True, False, 0.0, False, 0), {}),  # 8th positional is proj_size there
    ("GRU", (10, 20, 1, True, False, 0.0, False, "cpu"), {}),
    ("RNN", (10, 20, 2, "relu"), {}),
    ("RNN", (10, 20), dict(nonlinearity="relu", num_layers=2)),
    ("RNN", (10, 20, 2, "relu", False, True, 0.1, True), {}),
    ("RNN", (10, 20, 2, "gelu"), {}),
    ("RNN", (10, 20, 2, "relu"), dict(nonlinearity="tanh")),
    ("RNN", (10, 20), dict(proj_size=1)),
    ("LSTMCell", (10, 20), {}),
    ("LSTMCell", (10, 20, False), {}),
    ("LSTMCell", (10, 20, True, "cpu", torch.float64), {}),
    ("LSTMCell", (10,), {}),
    ("LSTMCell", (10, 20), dict(nonlinearity="relu")),
    ("GRUCell", (10, 20), dict(bias=False, dtype=torch.float64)),
    ("GRUCell", (10, 20, True, None, None, None), {}),
    ("RNNCell", (10, 20, True, "relu"), {}),
    ("RNNCell", (10, 20), dict(nonlinearity="relu", bias=False)),
    ("RNNCell", (10, 20, True, "gelu"), {}),              # torch only objects at forward
]
# torch accepts a positional proj_size (0) as GRU's and RNN's 8th/9th argument, which its
# documented signature (and so ours) names ``device``; the construction still matches torch.
UNDOCUMENTED = {("GRU", (10, 20, 1, True, False, 0.0, False, 0))}


def build(cls, args, kwargs):
    """(exception type or None, module or None, warning categories) of ``cls(*args, **kwargs)``."""
    torch.manual_seed(0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            module = cls(*args, **kwargs)
        except Exception as exc:     # noqa: BLE001 - the type is what is compared
            return type(exc), None, [w.category for w in caught]
    return None, module, [w.category for w in caught]


def assert_same_module(ours, theirs):
    assert isinstance(ours, type(theirs))
    assert repr(ours) == repr(theirs)
    state, twin = ours.state_dict(), theirs.state_dict()
    assert list(state) == list(twin)
    assert all(torch.equal(state[k], twin[k]) and state[k].dtype == twin[k].dtype for k in state)
    public = {k: v for k, v in vars(ours).items() if not k.startswith("_") and k != "backend"}
    assert public == {k: v for k, v in vars(theirs).items() if not k.startswith("_")}


@pytest.mark.parametrize("name,args,kwargs", FORMS,
                         ids=[f"{n}-{i}" for i, (n, _, _) in enumerate(FORMS)])
def test_construction_matches_torch(name, args, kwargs):
    error, ours, warned = build(getattr(rnnkernels, name), args, kwargs)
    their_error, theirs, their_warned = build(getattr(torch.nn, name), args, kwargs)
    assert error is their_error, f"ours: {error}, torch.nn: {their_error}"
    assert warned == their_warned
    if theirs is None:
        return
    assert_same_module(ours, theirs)
    if (name, args) in UNDOCUMENTED:
        return
    # The signature is true: it binds what torch accepts to the parameters torch gives it to,
    # and its defaults are torch's (every parameter is passed by keyword here).
    bound = inspect.signature(type(ours)).bind(*args, **kwargs)
    bound.apply_defaults()
    for option in OURS:
        bound.arguments.pop(option, None)
    _, by_keyword, _ = build(getattr(torch.nn, name), (), bound.arguments)
    assert_same_module(ours, by_keyword)


@pytest.mark.parametrize("name,args,kwargs", [f for f in FORMS if f[1:] != ((), {})][:12])
def test_backend_is_keyword_only_and_checked(name, args, kwargs):
    cls = getattr(rnnkernels, name)
    if build(cls, args, kwargs)[0] is not None:
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")          # torch's own (dropout with one layer)
        assert cls(*args, **kwargs, backend="reference").backend == "reference"
        with pytest.raises(ValueError, match="unknown rnnkernels backend"):
            cls(*args, **kwargs, backend="fastest")


# ------------------------------------------------------------------------------- docstrings
def public_names():
    names = [(f"rnnkernels.{n}", getattr(rnnkernels, n)) for n in rnnkernels.__all__
             if n != "__version__"]
    names += [(f"rnnkernels.functional.{n}", getattr(functional, n)) for n in functional.__all__]
    names += [(f"rnnkernels.ops.{n}", getattr(ops, n)) for n in ops.__all__
              if callable(getattr(ops, n))]
    return names + [("rnnkernels.backends", backends)]


@pytest.mark.parametrize("name,obj", public_names(), ids=[n for n, _ in public_names()])
def test_every_public_name_has_a_docstring(name, obj):
    doc = inspect.getdoc(obj) or ""
    assert len([line for line in doc.splitlines() if line.strip()]) > 1, f"{name}: {doc!r}"


def test_data_names_are_documented_by_their_module():
    for module, names in ((ops, ops.__all__), (rnnkernels, rnnkernels.__all__)):
        for n in names:
            obj = getattr(module, n)
            if not (callable(obj) or inspect.ismodule(obj)) and n != "__version__":
                assert f"``{n}" in module.__doc__, f"{module.__name__}.{n}"


@pytest.mark.parametrize("name", CLASSES)
def test_module_docstrings_are_in_torch_form(name):
    doc = getattr(rnnkernels, name).__doc__
    sections = ["Args:", "Inputs:", "Outputs:", "Attributes:", "Examples::", ">>> "]
    positions = [doc.index(s) for s in sections]
    assert positions == sorted(positions), "sections out of torch.nn's order"
    args = doc[doc.index("Args:"):doc.index("Inputs:")]
    for p in inspect.signature(getattr(rnnkernels, name)).parameters:
        assert f"    {p}:" in args or f"    {p}," in args or f", {p}:" in args, p
    # The backend paragraph names every value and points to the contract.
    for value in ("auto", *backends.NAMES, backends.TORCH):
        assert f'"{value}"' in doc, value
    assert "docs/BACKENDS.md" in doc and "RNNKERNELS_BACKEND" in doc


def test_op_signatures_are_their_schemas():
    for n in ops.__all__:
        op = getattr(ops, n)
        if not callable(op):
            continue
        schema = getattr(torch.ops.rnnkernels, n).default._schema
        assert list(inspect.signature(op).parameters) == [a.name for a in schema.arguments], n


def test_public_functions_carry_type_hints():
    for name, obj in public_names():
        if inspect.isfunction(obj):
            sig = inspect.signature(obj)
            assert sig.return_annotation is not P.empty, name
            assert all(p.annotation is not P.empty for p in sig.parameters.values()), name


def doctests():
    finder = doctest.DocTestFinder()
    found = finder.find(modules) + finder.find(functional)
    found += finder.find(backends.available_backends, "rnnkernels.available_backends",
                         module=backends)
    return [t for t in found if t.examples]


@pytest.mark.parametrize("test", doctests(), ids=lambda t: t.name)
def test_docstring_examples_run(test):
    test.globs.update(torch=torch, rnnkernels=rnnkernels)
    torch.manual_seed(0)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")      # e.g. auto's once-only routing notes
        result = runner.run(test, out=lambda s: print(s, end=""))
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed"


def test_the_six_classes_have_examples():
    names = {t.name.rsplit(".", 1)[-1] for t in doctests()}
    assert set(CLASSES) <= names


# ---------------------------------------------------------------------------------- API.md
def test_api_md_is_current():
    spec = importlib.util.spec_from_file_location("gen_api", ROOT / "docs" / "gen_api.py")
    gen_api = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen_api)
    text = gen_api.render()
    assert (ROOT / "docs" / "API.md").read_text() == text, \
        "docs/API.md is stale: run python docs/gen_api.py"
    for name, _ in public_names()[:-1]:
        assert f"# `{name}`" in text, name            # a heading of its own
    assert backends.config.table() in text
