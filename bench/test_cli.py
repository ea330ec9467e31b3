"""The runner as a command-line tool: shape specs (``--shape``, ``--configs key=value``), the
progress line, the fields every record carries, and the warning when the rnnkernels measured is
not this checkout's or has no compiled backends. CPU-only, a few seconds."""
from __future__ import annotations

import io
import json
import types

import pytest
from torch import nn

from bench import configs as C
from bench import harness as H
from bench import provenance as P
from bench import run as R
from bench.progress import Progress


@pytest.fixture(autouse=True)
def _fresh_provenance():
    P.rnnkernels_info.cache_clear()
    yield
    P.rnnkernels_info.cache_clear()


# ------------------------------------------------------------------------------- shape specs
def test_spec_fields_and_defaults():
    c = C.parse_spec("cell=lstm,T=200,B=8,H=64,I=32,layers=2")
    assert (c.T, c.B, c.I, c.H, c.layers, c.cells) == (200, 8, 32, 64, 2, ("LSTM",))
    assert not c.bidirectional and not c.packed and not c.reference
    assert c.name == "T200-B8-I32-H64-L2" and c.suite == "custom"
    d = C.parse_spec("T=5,B=2,H=9,bidir=1,packed=true,cell=gru+RNN,name=mine,L=3")
    assert (d.I, d.layers, d.bidirectional, d.packed, d.cells, d.name) == \
        (9, 3, True, True, ("GRU", "RNN"), "mine")
    p = C.parse_spec("T=5,B=2,H=9,P=4")    # a projection: an LSTM-only shape
    assert (p.proj, p.cells, p.name) == (4, ("LSTM",), "T5-B2-I9-H9-L1-P4")


@pytest.mark.parametrize("spec, message", [
    ("T=200,B=8", "missing H"),
    ("T=200,B8,H=4", "'B8' is not key=value"),
    ("T=0,B=1,H=4", "T='0': expected a positive integer"),
    ("T=1.5,B=1,H=4", "expected a positive integer"),
    ("T=1,B=1,H=4,depth=2", "unknown key 'depth'"),
    ("T=1,B=1,H=4,cell=lstmx", "cell='lstmx'"),
    ("T=1,B=1,H=4,bidir=maybe", "bidir='maybe': expected 0 or 1"),
    ("T=1,B=1,H=4,P=4", "proj_size must be smaller than H"),
    ("T=1,B=1,H=4,P=2,cell=gru", "P \\(proj_size\\) is an LSTM option"),
])
def test_bad_spec_says_what_is_wrong(spec, message):
    with pytest.raises(ValueError, match=message):
        C.parse_spec(spec)


def test_configs_accept_names_patterns_and_specs():
    args = R._parse_args(["--configs", "q-b1", "T=200,B=8,H=64", "q-b*",
                          "--shape", "cell=rnn,T=3,B=2,H=5"])
    cfgs = C.select(args.configs + args.shape, "quick")
    # in the order given, each once (q-b1 also matches q-b*)
    assert [c.name for c in cfgs] == ["q-b1", "T200-B8-I64-H64-L1", "q-b64", "q-bidir",
                                      "T3-B2-I5-H5-L1"]


@pytest.mark.parametrize("argv, message", [
    (["--configs", "T=200,B=8"], "argument --configs: bad shape spec 'T=200,B=8': missing H"),
    (["--configs", "no-such-config"], "argument --configs: no config matches 'no-such-config'"),
    (["--shape", "T=1,B=1,H=1,x=2"], "argument --shape: bad shape spec"),
])
def test_bad_command_line_is_a_usage_error(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        R._parse_args(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_help_explains_specs(capsys):
    with pytest.raises(SystemExit):
        R._parse_args(["--help"])
    out = capsys.readouterr().out
    assert "--shape SPEC" in out and "cell=lstm,T=200,B=8,H=64" in out and "--progress" in out


# --------------------------------------------------------------------------------- progress
class _Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


class _Tty(io.StringIO):
    def isatty(self):
        return True


def test_progress_lines_and_eta():
    clock, out = _Clock(), io.StringIO()
    p = Progress(4, enabled=True, stream=out, clock=clock)
    p.start("a")
    clock.t = 30.0
    p.advance()                # 1 of 4 in 30 s: 90 s to go
    clock.t = 90.0
    p.advance()                # 2 of 4 in 90 s: 90 s to go
    lines = out.getvalue().splitlines()
    assert lines == ["[1/4]  25% 0:30 elapsed, ETA 1:30 | a",
                     "[2/4]  50% 1:30 elapsed, ETA 1:30 | a"]


def test_progress_on_a_terminal_stays_below_the_table(capsys):
    clock, tty = _Clock(), _Tty()
    p = Progress(2, enabled=True, stream=tty, clock=clock)
    p.start("x")
    p.print("row 1")
    p.close()
    assert capsys.readouterr().out == "row 1\n"
    assert tty.getvalue() == ("\r[0/2]   0% 0:00 elapsed, ETA ? | x\x1b[K" "\r\x1b[K"
                              "\r[0/2]   0% 0:00 elapsed, ETA ? | x\x1b[K" "\r\x1b[K")


def test_progress_disabled_writes_nothing(capsys):
    out = _Tty()
    p = Progress(3, enabled=False, stream=out)
    p.start("x")
    p.advance()
    p.print("row")
    assert out.getvalue() == "" and capsys.readouterr().out == "row\n"


# ------------------------------------------------------------------ records and the warning
def _run_tiny(tmp_path, extra=()):
    H.EXTRA_PROVIDERS["clone"] = lambda cls, kw: getattr(nn, cls)(**kw)
    try:
        code = R.main(["--shape", "cell=gru,T=4,B=2,I=3,H=5", "--no-validate", "--min-time", "0",
                       "--min-reps", "2", "--warmup", "0", "--out", str(tmp_path), "--no-plot",
                       "--providers", "torch,clone", "--tag", "t", *extra])
    finally:
        H.EXTRA_PROVIDERS.pop("clone")
    path = next(tmp_path.glob("cpu-quick-*-t.jsonl"))
    return code, [json.loads(line) for line in path.read_text().splitlines()]


def test_records_carry_schema_threads_and_build(tmp_path, capsys):
    code, recs = _run_tiny(tmp_path, ["--threads", "1", "--progress"])
    assert code == 0 and len(recs) == 4            # GRU only (the spec's cell), 2 modes x 2
    assert {r["cell"] for r in recs} == {"GRU"} and recs[0]["config"]["cells"] == ["GRU"]
    info = P.rnnkernels_info()
    for r in recs:
        assert r["schema"] == P.SCHEMA and r["threads"] == 1
        assert r["rnnkernels"]["version"] == info["version"]
        assert r["rnnkernels"]["path"] == info["path"]
        assert r["rnnkernels"]["extension"] == json.loads(json.dumps(info["extension"]))
        assert r["warnings"] == info["warnings"]
    err = capsys.readouterr().err
    assert "[4/4] 100%" in err                       # --progress on a non-terminal: lines


def test_this_checkout_with_its_extension_gives_no_warning():
    info = P.rnnkernels_info()
    if not info["extension"]["available"]:
        pytest.skip(f"the extension is not built here: {info['extension']['error']}")
    assert info["path"] == str(P.CHECKOUT_PACKAGE) and info["warnings"] == []


def test_foreign_rnnkernels_without_extension_is_flagged(tmp_path, monkeypatch, capsys):
    fake = types.ModuleType("fake_rnnkernels")
    fake.__file__ = str(tmp_path / "site-packages" / "rnnkernels" / "__init__.py")
    fake.__version__ = "9.9"
    fake.backends = types.SimpleNamespace(
        why_not=lambda name, dev, dt: "rnnkernels._C is not built" if name == "cpu" else None)
    monkeypatch.setattr(H, "import_rnnkernels", lambda: (fake, None))
    code, recs = _run_tiny(tmp_path)
    err = capsys.readouterr().err
    assert "WARNING: the imported rnnkernels" in err and "has no compiled backends" in err
    assert "rnnkernels._C is not built" in err and "not this checkout's" in err
    (w_ext, w_path), = {tuple(r["warnings"]) for r in recs}
    assert "no compiled backends" in w_ext and str(tmp_path) in w_path
    assert recs[0]["rnnkernels"] == {"version": "9.9",
                                     "path": str(tmp_path / "site-packages" / "rnnkernels"),
                                     "extension": {"available": False,
                                                   "error": "rnnkernels._C is not built"}}
    assert code == 0   # a warning, not a failure: torch.nn and the other providers still ran
