"""Shared utilities of the module-level tests: rnnkernels modules against torch.nn on the CPU.

torch.nn on the CPU is the oracle. A test builds a torch.nn module and its rnnkernels twin with
identical weights (``make_twins``), feeds both the same inputs (``make_inputs``, in
``tests/layer_cases.py`` with the rest of the layer-case machinery), takes a loss that
touches the outputs AND the final states with fixed random weights (so that a wrong gradient of
any of them cannot cancel out), and compares everything (``compare_runs``): outputs, final states,
and the gradients of the input, h0, c0 and every parameter.

Backends are the ones ``rnnkernels.available_backends("cpu", dtype)`` reports, narrowed by the env
variable ``RNNKERNELS_TEST_BACKENDS`` (comma separated, e.g. ``reference,cpu``).
"""
from __future__ import annotations

import contextlib
import functools
import os
import warnings
from typing import TYPE_CHECKING

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence

import rnnkernels
from rnnkernels import backends

if TYPE_CHECKING:
    from tests.layer_cases import Run


ALL_BACKENDS = ("reference", "cpu", "triton", "cuda")
CPU_DEVICE_BACKENDS = ("reference", "cpu", "triton")    # the backends that can take CPU tensors

# Tolerances of the brief: fp32 <= 1e-5 relative, fp64 ~1e-10. The absolute part is scaled by the
# magnitude of the expected tensor (see assert_close) so that a sum over T*B terms (weight grads)
# is judged relative to its size, not to 1.
TOLERANCES = {
    torch.float32: (1e-5, 1e-6),
    torch.float64: (1e-10, 1e-11),
}

DTYPE_NAMES = {torch.float32: "fp32", torch.float64: "fp64",
               torch.float16: "fp16", torch.bfloat16: "bf16"}


# ------------------------------------------------------------------------------------ backends
def requested_test_backends() -> list[str] | None:
    """The names in ``RNNKERNELS_TEST_BACKENDS`` (None when unset or empty)."""
    raw = os.environ.get("RNNKERNELS_TEST_BACKENDS", "").strip()
    if not raw:
        return None
    names = [n.strip() for n in raw.split(",") if n.strip()]
    unknown = [n for n in names if n not in ALL_BACKENDS]
    if unknown:
        raise ValueError(f"RNNKERNELS_TEST_BACKENDS names unknown backends {unknown}; "
                         f"known: {ALL_BACKENDS}")
    return names


@functools.lru_cache(maxsize=None)
def _available_on_cpu(dtype: torch.dtype) -> tuple[str, ...]:
    return tuple(rnnkernels.available_backends("cpu", dtype))


def cpu_backends(dtype: torch.dtype = torch.float32) -> list[str]:
    """Backends that can run on CPU tensors of ``dtype`` here, narrowed by the env variable."""
    names = list(_available_on_cpu(dtype))
    wanted = requested_test_backends()
    if wanted is not None:
        names = [n for n in names if n in wanted]
    return names


def backend_params(dtype: torch.dtype = torch.float32, triton: bool = False) -> list:
    """pytest params of the CPU backends for one case. Triton (the interpreter on the CPU, slow)
    is included only when ``triton`` is True, marked ``triton_subset``. A backend that cannot
    run here is still listed, as a skip that says why, so a lost backend shows in the report
    (and ``RNNKERNELS_REQUIRE_BACKENDS`` turns it into a failure: see conftest.py)."""
    params = []
    available = cpu_backends(dtype)
    wanted = requested_test_backends()
    for name in CPU_DEVICE_BACKENDS:
        if wanted is not None and name not in wanted:
            continue
        marks = [pytest.mark.triton_subset] if name == "triton" else []
        if name == "triton" and not triton:
            continue
        if name not in available:
            why = backends.why_not(name, "cpu", dtype)
            marks.append(pytest.mark.skip(reason=f"backend {name!r} cannot run here: {why}"))
        params.append(pytest.param(name, id=name, marks=marks))
    return params


def case_backend_params(cases, triton_ids=frozenset()) -> list:
    """Cross a list of cases (objects with ``.id`` and ``.dtype``) with the CPU backends that can
    run their dtype, as pytest params ``(case, backend)`` with ids ``<case.id>-<backend>``."""
    out = []
    for case in cases:
        for p in backend_params(case.dtype, triton=case.id in triton_ids):
            (backend,) = p.values
            out.append(pytest.param(case, backend, id=f"{case.id}-{backend}", marks=p.marks))
    return out


# ------------------------------------------------------------------------------------- modules
# "mode" names: the layer class plus, for the Elman RNN, its nonlinearity.
MODES = {
    "LSTM": ("LSTM", {}),
    "GRU": ("GRU", {}),
    "RNN_TANH": ("RNN", {"nonlinearity": "tanh"}),
    "RNN_RELU": ("RNN", {"nonlinearity": "relu"}),
    "LSTMCell": ("LSTMCell", {}),
    "GRUCell": ("GRUCell", {}),
    "RNNCell_TANH": ("RNNCell", {"nonlinearity": "tanh"}),
    "RNNCell_RELU": ("RNNCell", {"nonlinearity": "relu"}),
}


def torch_class(mode: str):
    return getattr(nn, MODES[mode][0])


def our_class(mode: str):
    return getattr(rnnkernels, MODES[mode][0])


def is_lstm(mode: str) -> bool:
    return mode.startswith("LSTM")


def copy_parameters(src: nn.Module, dst: nn.Module) -> None:
    """Copy every parameter of ``src`` into ``dst`` (same names in the same order required)."""
    src_params = list(src.named_parameters())
    dst_params = list(dst.named_parameters())
    assert [n for n, _ in src_params] == [n for n, _ in dst_params], \
        "parameter names/order differ from torch.nn"
    with torch.no_grad():
        for (_, s), (_, d) in zip(src_params, dst_params):
            assert s.shape == d.shape
            d.copy_(s)


def make_twins(mode: str, backend: str, dtype: torch.dtype = torch.float32, seed: int = 0,
               **ctor) -> tuple[nn.Module, nn.Module]:
    """A torch.nn module (seeded default init) and its rnnkernels twin with identical weights."""
    cls_kwargs = dict(MODES[mode][1])
    cls_kwargs.update(ctor)
    torch.manual_seed(seed)
    ref = torch_class(mode)(**cls_kwargs).to(dtype)
    ours = our_class(mode)(**cls_kwargs, backend=backend).to(dtype)
    copy_parameters(ref, ours)
    return ref, ours


# ---------------------------------------------------------------------------------- comparison
def assert_finite(t: torch.Tensor, what: str) -> None:
    bad = ~torch.isfinite(t)
    if bad.any():
        idx = bad.nonzero()[0].tolist()
        raise AssertionError(f"{what}: {int(bad.sum())} non-finite value(s) (NaN/inf), first at "
                             f"index {idx}")


def assert_close(actual: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    """Same shape/dtype/device, no NaN/inf where torch has none, and within the dtype's
    tolerance: |a - e| <= atol * max(1, max|e|) + rtol * |e|."""
    assert isinstance(actual, torch.Tensor), f"{what}: got {type(actual).__name__}, not a Tensor"
    assert actual.shape == expected.shape, \
        f"{what}: shape {tuple(actual.shape)} != torch's {tuple(expected.shape)}"
    assert actual.dtype == expected.dtype, \
        f"{what}: dtype {actual.dtype} != torch's {expected.dtype}"
    assert actual.device == expected.device, f"{what}: device {actual.device} != {expected.device}"
    if torch.isfinite(expected).all():
        assert_finite(actual, what)
    rtol, atol = TOLERANCES[expected.dtype]
    scale = max(1.0, float(expected.detach().abs().max())) if expected.numel() else 1.0
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol * scale,
                               msg=lambda m: f"{what}: {m}")


def assert_same_packed(actual, expected: PackedSequence, what: str) -> None:
    assert isinstance(actual, PackedSequence), \
        f"{what}: got {type(actual).__name__}, torch returns a PackedSequence"
    assert torch.equal(actual.batch_sizes, expected.batch_sizes), f"{what}.batch_sizes differ"
    for field in ("sorted_indices", "unsorted_indices"):
        a, e = getattr(actual, field), getattr(expected, field)
        assert (a is None) == (e is None), f"{what}.{field}: {a} vs torch's {e}"
        if e is not None:
            assert torch.equal(a, e), f"{what}.{field}: {a} vs torch's {e}"
    assert_close(actual.data, expected.data, f"{what}.data")


def compare_runs(ours: Run, ref: Run, label: str = "") -> None:
    """Every output, final state and gradient of ``ours`` against torch's ``ref``."""
    pre = f"{label}: " if label else ""
    if isinstance(ref.out, PackedSequence):
        assert_same_packed(ours.out, ref.out, pre + "output")
    elif ref.out is not None:
        assert_close(ours.out, ref.out, pre + "output")
    assert ours.states.keys() == ref.states.keys()
    for name in ref.states:
        assert_close(ours.states[name], ref.states[name], pre + name)
    assert ours.grads.keys() == ref.grads.keys(), \
        f"{pre}gradient keys {sorted(ours.grads)} != torch's {sorted(ref.grads)}"
    for name, g in ref.grads.items():
        mine = ours.grads[name]
        if g is None:
            assert mine is None or not mine.any(), f"{pre}grad of {name}: torch has none"
            continue
        assert mine is not None, f"{pre}grad of {name} is None (not connected to the loss)"
        assert_close(mine, g, f"{pre}grad of {name}")


def assert_same_error(call_torch, call_ours, exact: bool = True, keywords=()) -> BaseException:
    """Both calls raise; same exception type; the message equals torch's when ``exact`` (torch
    validates this case on purpose and the drop-in promise includes its message), else it must
    contain every keyword (torch's message is incidental there, e.g. from a GEMM). Returns ours."""
    try:
        call_torch()
    except Exception as exc:  # noqa: BLE001 - whatever torch raises is the expectation
        expected = exc
    else:
        raise AssertionError("torch.nn did not raise: the test's bad input is not bad")
    with pytest.raises(Exception) as info:
        call_ours()
    got = info.value
    # Where torch validates on purpose (exact), the type must be the very same. Elsewhere torch's
    # type is an accident of its code (IndexError, AttributeError ... for a malformed hx); ours
    # may then be a clearer error that is still an instance of torch's type, so that any
    # `except` written against torch.nn keeps working.
    same_type = type(got) is type(expected) if exact else isinstance(got, type(expected))
    assert same_type, \
        (f"rnnkernels raised {type(got).__name__}({got}); torch.nn raises "
         f"{type(expected).__name__}({expected})")
    msg = str(got)
    if exact:
        assert msg == str(expected), f"message {msg!r} != torch's {str(expected)!r}"
    for kw in keywords:
        assert kw.lower() in msg.lower(), f"message {msg!r} does not mention {kw!r}"
    assert msg.strip(), "empty error message"
    return got


@contextlib.contextmanager
def routing_warnings():
    """The RuntimeWarnings (the backends' once-only routing notices) said inside the block, as a
    list of messages filled on exit; the once-only memory is cleared first so each test hears
    them afresh."""
    backends._warned.clear()
    said: list[str] = []
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        yield said
    said.extend(str(w.message) for w in seen if issubclass(w.category, RuntimeWarning))


def assert_forward_modes_match(ours, reference, x, assert_close):
    """jvp, torch.func.grad and forward-mode AD (``make_dual``) through ``ours(x)[0]`` equal
    them through ``reference(x)[0]`` (the modes a fused backend hands to the reference loop:
    never a zero tangent). ``assert_close(got, want, what)``."""
    import torch.autograd.forward_ad as fwAD
    tangent = torch.randn_like(x)
    modules = (ours, reference)
    got, want = (torch.func.jvp(lambda v: m(v)[0], (x,), (tangent,)) for m in modules)
    for a, e in zip(got, want):
        assert_close(a, e, "jvp")
    got, want = (torch.func.grad(lambda v: m(v)[0].sum())(x) for m in modules)
    assert_close(got, want, "torch.func.grad")
    with fwAD.dual_level():
        got, want = (fwAD.unpack_dual(m(fwAD.make_dual(x, tangent))[0]).tangent for m in modules)
    assert_close(got, want, "forward-mode AD")
