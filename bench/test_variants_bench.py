"""bench/variants.py's plumbing at a tiny shape (never its timings): every variant and provider
is measured and recorded, the user's loops compute what our modules compute (eval), the ratios
and the markdown table, the compile guard (a failing or too slow compile is a recorded result),
and the runner's hook. CPU, a few seconds."""
from __future__ import annotations

import json

import pytest
import torch

import rnnkernels
from bench import provenance as P
from bench import run as R
from bench import variants as VB


def _records(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_every_variant_and_provider_is_recorded(tmp_path, capsys):
    js, md = tmp_path / "v.jsonl", tmp_path / "v.md"
    assert VB.main(["--T", "3", "--H", "8", "--B", "1,2", "--rounds", "2", "--no-compile",
                    "--json", str(js), "--md", str(md)]) == 0
    recs = _records(js)
    assert len(recs) == len(VB.VARIANTS) * 2 * len(VB.PROVIDERS)
    for r in recs:
        assert r["schema"] == P.SCHEMA and r["kind"] == "variants" and (r["T"], r["H"]) == (3, 8)
        assert r["max_err"] < 1e-5, f"{r['variant']}: the user's loop is not the variant"
        if r["provider"] == "compiled":
            assert r["status"] == "skipped" and "--no-compile" in r["note"]
        else:
            assert r["status"] == "ok" and r["time_ms"]["n"] == 2
    ours = [r for r in recs if r["provider"] == "ours"]
    assert {(r["variant"], r["B"]) for r in ours} == {(v, b) for v in VB.VARIANTS for b in (1, 2)}
    for r in ours:
        assert r["note"].startswith("backend ")
        assert set(r["ratios"]) == {"loop", "plain"}
        loop = r["ratios"]["loop"]
        assert loop["target"] == (5.0 if r["B"] == 1 else 2.0)
        assert loop["met"] == (loop["speedup"] >= loop["target"])
    locked = next(r for r in ours if r["variant"] == "locked-dropout-lstm")
    assert locked["note"] != "backend reference"      # only locked dropout: the plain scans
    table = md.read_text()
    assert table in capsys.readouterr().out
    assert table.count("\n| ") == 1 + len(VB.VARIANTS) * 2      # header + one row per group


def test_the_loops_train_like_our_modules():
    """Beyond eval: gradients of the user's loop equal ours for the deterministic variants."""
    for name in ("peephole-lstm", "heads4-gru"):
        var = VB.VARIANTS[name]
        torch.manual_seed(0)
        ours = getattr(rnnkernels, var.module)(5, 8, **var.options)
        loop = VB.UserLoop(ours, var.step, var.states)
        x = torch.randn(4, 2, 5)
        ours(x)[0].pow(2).sum().backward()
        loop(x)[0].pow(2).sum().backward()
        for n, p in ours.named_parameters():
            torch.testing.assert_close(loop.params[n].grad, p.grad, rtol=1e-4, atol=1e-6)


def test_a_compile_that_fails_or_is_too_slow_is_recorded(tmp_path, monkeypatch):
    args = ["--T", "2", "--H", "4", "--B", "1", "--rounds", "1", "--variants", "zoneout-gru"]
    js = tmp_path / "slow.jsonl"
    assert VB.main(args + ["--compile-timeout", "0.001", "--json", str(js)]) == 0
    compiled = next(r for r in _records(js) if r["provider"] == "compiled")
    assert compiled["status"] == "skipped" and "took more than 0.001 s" in compiled["note"]

    def broken(*a, **k):
        raise RuntimeError("no compiler here")

    monkeypatch.setattr(torch, "compile", broken)
    js = tmp_path / "broken.jsonl"
    assert VB.main(args + ["--json", str(js)]) == 0
    compiled = next(r for r in _records(js) if r["provider"] == "compiled")
    assert compiled["note"] == "torch.compile failed: RuntimeError: no compiler here"


def test_runner_hook(tmp_path, monkeypatch):
    """``make bench``'s runner adds the table unless the run is narrowed or --no-variants; its
    quick form writes the JSONL and the markdown beside it."""
    assert R._parse_args([]).variants is None
    assert R._parse_args(["--no-variants"]).variants is False
    monkeypatch.setattr(VB, "VARIANTS", {k: VB.VARIANTS[k] for k in ("heads4-gru",)})
    path = tmp_path / "cpu-variants-x.jsonl"
    assert VB.runner_table(torch.device("cpu"), "quick", path, T=2, Bs=(1,), H=4) == 0
    recs = _records(path)
    assert [r["provider"] for r in recs] == list(VB.PROVIDERS)
    assert "heads4-gru" in path.with_suffix(".md").read_text()


def test_unknown_variant_is_a_usage_error():
    with pytest.raises(SystemExit):
        VB.main(["--variants", "nope"])
