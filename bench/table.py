"""The runner's printed table (one row per measurement) and its closing summary."""
from __future__ import annotations

import math

_COLS = [("cell", 4, "<"), ("mode", 6, "<"), ("provider", 9, "<"), ("median ms", 10, ">"),
         ("p20", 9, ">"), ("p80", 9, ">"), ("speedup", 8, ">"), ("peak MB", 8, ">"),
         ("error", 8, ">"), ("", 4, "<")]


def _fmt_row(values) -> str:
    return "  ".join(f"{str(v):{a}{w}}" for v, (_, w, a) in zip(values, _COLS))


def _fmt_ms(v) -> str:
    if v is None:
        return "-"
    return f"{v:.3f}" if v < 100 else f"{v:.1f}"


def _fmt_err(e) -> str:
    if e is None:
        return "-"
    return "inf" if math.isinf(e) else f"{e:.1e}"


def header() -> str:
    head = _fmt_row([c[0] for c in _COLS])
    return head + "\n" + "-" * len(head)


def row(rec: dict) -> str:
    t = rec.get("time_ms") or {}
    err = rec.get("error") or {}
    if rec["status"] != "ok":
        flag = "FAIL"
    else:
        flag = "ok" if err.get("ok") else "TOL!"
    mem = rec.get("peak_mem_bytes")
    speed = rec.get("speedup")
    return _fmt_row([rec["cell"], rec["mode"], rec["provider"], _fmt_ms(t.get("median")),
                     _fmt_ms(t.get("p20")), _fmt_ms(t.get("p80")),
                     "-" if speed is None else f"{speed:.2f}x",
                     "-" if mem is None else f"{mem / 2**20:.1f}",
                     _fmt_err(err.get("worst")), flag]) \
        + (f"  [{rec['impl']}]" if rec.get("impl") else "")


def summary(records: list[dict], what: str) -> int:
    """Print how many measurements failed or are above tolerance (and which); returns that
    number (1 when nothing was measured at all)."""
    bad = [r for r in records if r["status"] != "ok" or not (r.get("error") or {}).get("ok")]
    n = len(records)
    if n == 0:
        print(f"\n{what}: nothing was measured.")
        return 1
    if not bad:
        print(f"\n{what}: {n} measurements, all within tolerance.")
        return 0
    print(f"\n{what}: {len(bad)} of {n} measurements FAILED or are above tolerance:")
    for r in bad:
        name = r["config"]["name"] if isinstance(r.get("config"), dict) else r.get("case")
        err = r.get("error") or {}
        why = r.get("failure") or (f"{err.get('metric')} {err.get('worst'):.2e} > tol "
                                   f"{err.get('tol'):.0e} at {err.get('worst_of')}")
        print(f"  {name} {r.get('cell', '')} {r.get('mode', '')} {r['provider']} "
              f"{r['dtype']}: {why}")
    return len(bad)
