"""Speedup-over-torch.nn bar chart of a run's records (PNG, matplotlib's Agg backend).

One panel per (mode, dtype); one group of bars per (config, cell); one bar per provider other
than torch.nn. The y axis is logarithmic (the reference backend can be 100x slower while a kernel
is 3x faster) with a line at 1x = torch.nn. Can also be run on a saved file::

    python -m bench.plot bench/results/cpu-quick-20250101-120000.jsonl
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

PROVIDER_COLORS = {"cpu": "#1f77b4", "cuda": "#2ca02c", "triton": "#d62728",
                   "reference": "#7f7f7f"}


def plot_speedups(records: list[dict], path: str | Path) -> Path | None:
    import matplotlib  # noqa: PLC0415
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415
    from matplotlib.ticker import FuncFormatter  # noqa: PLC0415

    recs = [r for r in records if r.get("kind", "bench") == "bench" and r["provider"] != "torch"
            and r.get("status") == "ok" and r.get("speedup")]
    if not recs:
        return None
    panels = sorted({(r["mode"], r["dtype"]) for r in recs}, key=lambda k: (k[1], k[0] != "fwd"))
    groups = list(dict.fromkeys((r["config"]["name"], r["cell"]) for r in recs))
    providers = list(dict.fromkeys(r["provider"] for r in recs))
    width = 0.8 / len(providers)
    fig_w = max(8.0, 0.55 * len(groups) * max(1, len(providers)) + 2)
    fig, axes = plt.subplots(len(panels), 1, figsize=(fig_w, 3.6 * len(panels)), squeeze=False)
    env = recs[0]["env"]
    # torch.nn's kernel differs per cell (CPU: oneDNN for LSTM, an ATen loop for GRU/RNN).
    impl = {(r["config"]["name"], r["cell"], r["mode"], r["dtype"]): r.get("impl")
            for r in records if r.get("kind", "bench") == "bench" and r["provider"] == "torch"}
    for ax, (mode, dtype) in zip(axes[:, 0], panels):
        all_y: list[float] = []
        for j, prov in enumerate(providers):
            xs, ys = [], []
            for i, g in enumerate(groups):
                r = next((r for r in recs if (r["config"]["name"], r["cell"]) == g
                          and r["provider"] == prov and r["mode"] == mode
                          and r["dtype"] == dtype), None)
                if r is not None:
                    xs.append(i - 0.4 + width * (j + 0.5))
                    ys.append(r["speedup"])
            # Bars grow from 1x (= torch.nn): up when faster, down when slower.
            ax.bar(xs, [y - 1 for y in ys], bottom=1.0, width=width, label=prov,
                   color=PROVIDER_COLORS.get(prov), edgecolor="black", linewidth=0.4)
            for x, y in zip(xs, ys):
                ax.annotate(f"{y:.2g}", (x, y), ha="center", va="bottom" if y >= 1 else "top",
                            fontsize=6, xytext=(0, 1 if y >= 1 else -1),
                            textcoords="offset points")
            all_y.extend(ys)
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_yscale("log")
        lo, hi = min(all_y + [1.0]), max(all_y + [1.0])
        ax.set_ylim(lo / 1.6, hi * 1.6)
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}x"))
        # Label the 2x and 5x minor ticks too unless the panel spans many decades (the default
        # arguments bind this panel's range; the formatter runs at draw time).
        ax.yaxis.set_minor_formatter(FuncFormatter(
            lambda v, _, span=hi / lo: f"{v:g}x" if span < 100 and
            round(v / 10 ** math.floor(math.log10(v))) in (2, 5) else ""))
        ax.set_xticks(range(len(groups)))
        ax.set_xticklabels([f"{c}\n{cell}" + (f"\n[{impl[(c, cell, mode, dtype)]}]"
                                               if impl.get((c, cell, mode, dtype)) else "")
                            for c, cell in groups], fontsize=6)
        ax.set_xlim(-0.6, len(groups) - 0.4)
        ax.set_ylabel("speedup vs torch.nn (x)")
        label = "forward (no_grad)" if mode == "fwd" else "forward+backward"
        ax.set_title(f"{label}, {dtype} — baseline: torch.nn [its kernel] on the same device",
                     fontsize=9)
        ax.grid(axis="y", which="both", alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    fig.suptitle(f"rnnkernels speedup over torch.nn on {env.get('device_name')} "
                 f"(torch {env.get('torch')}, git {str(env.get('git_sha'))[:12]})", fontsize=10)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__)
        return 2
    src = Path(argv[0])
    records = [json.loads(line) for line in src.read_text().splitlines() if line.strip()]
    out = plot_speedups(records, src.with_suffix(".png"))
    print(out if out else "no speedup records to plot")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
