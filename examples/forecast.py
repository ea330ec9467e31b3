"""Time-series forecasting of a noisy multi-frequency signal with a stacked LSTM.

The series is a sum of three sines with incommensurate periods (50, 13 and 7.3 steps, so no window
repeats exactly) plus Gaussian noise. A 2-layer ``rnnkernels.LSTM`` reads a window of
``--context`` past values and a linear head on its final top-layer state predicts the next
``--horizon`` values at once (direct multi-step forecasting: no error feedback through a rollout).
The first 80 % of the series trains, windows from the last 20 % test.

The test error is reported next to two yardsticks: repeating the last observed value
(persistence), and the noise variance, the error of a perfect predictor of the clean signal
(no model can beat it on average, since the noise is unpredictable).

    python examples/forecast.py                      # about a minute on 2 CPU cores

Writes, when matplotlib is installed, ``forecast.png`` (context, truth, prediction and the clean
signal for a few test windows) to ``--out`` (default ``examples/out/``).
"""
from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from _common import Progress, add_common_args, describe, pyplot, recurrent
PERIODS = (50.0, 13.0, 7.3)
AMPLITUDES = (1.0, 0.5, 0.3)


def make_series(n: int, noise: float, gen: torch.Generator):
    """(noisy, clean) float32 series of n points."""
    t = torch.arange(n, dtype=torch.float64)
    phases = torch.rand(len(PERIODS), generator=gen, dtype=torch.float64) * 2 * math.pi
    clean = sum(a * torch.sin(2 * math.pi * t / p + ph) for a, p, ph in zip(AMPLITUDES, PERIODS, phases))
    noisy = clean + noise * torch.randn(n, generator=gen, dtype=torch.float64)
    return noisy.float(), clean.float()


def windows(series: torch.Tensor, starts: torch.Tensor, context: int, horizon: int):
    """Inputs [B, context, 1] and targets [B, horizon] for windows beginning at ``starts``."""
    idx = starts[:, None] + torch.arange(context + horizon)
    w = series[idx]
    return w[:, :context, None], w[:, context:]


class Forecaster(nn.Module):
    def __init__(self, hidden: int, layers: int, horizon: int, dropout: float, backend: str):
        super().__init__()
        self.rnn = recurrent("LSTM", backend, 1, hidden, num_layers=layers, batch_first=True,
                             dropout=dropout if layers > 1 else 0.0)
        self.head = nn.Linear(hidden, horizon)

    def forward(self, x):  # x [B, T, 1] -> [B, horizon]
        _, (h_n, _) = self.rnn(x)
        return self.head(h_n[-1])


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--length", type=int, default=20000, help="points in the whole series")
    p.add_argument("--noise", type=float, default=0.2, help="noise standard deviation")
    p.add_argument("--context", type=int, default=96, help="past values the model reads")
    p.add_argument("--horizon", type=int, default=24, help="future values it predicts")
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--dropout", type=float, default=0.0)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=500, help="optimizer steps")
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--clip", type=float, default=1.0, help="max global gradient norm")
    return add_common_args(p)


def plot(plt, path: Path, x, y, pred, clean_y, mse: float, noise: float, n: int = 3) -> None:
    context, horizon = x.shape[1], y.shape[1]
    shown = min(context, 3 * horizon)  # the tail of the context; all of it would dwarf the forecast
    fig, axes = plt.subplots(n, 1, figsize=(10, 2.6 * n), sharex=True)
    t_ctx = torch.arange(-shown + 1, 1)
    t_fut = torch.arange(1, horizon + 1)
    for k, ax in enumerate(axes):
        ax.plot(t_ctx, x[k, -shown:, 0], color="0.6", lw=1, label="context (observed)")
        ax.plot(t_fut, y[k], "k.", ms=4, label="truth (noisy)")
        ax.plot(t_fut, clean_y[k], "k--", lw=1, alpha=0.6, label="clean signal")
        ax.plot(t_fut, pred[k], color="tab:red", lw=2, label="LSTM forecast")
        ax.axvline(0.5, color="0.8", lw=1)
        ax.set_ylabel("value")
    axes[0].legend(loc="upper left", ncol=4, fontsize=8)
    axes[0].set_title(f"{horizon}-step forecast from {context} steps; test MSE {mse:.4f} "
                      f"(noise floor {noise ** 2:.4f})")
    axes[-1].set_xlabel("time step relative to the forecast origin")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> dict:
    args = build_parser().parse_args(argv)
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    device = torch.device(args.device)

    noisy, clean = make_series(args.length, args.noise, gen)
    span = args.context + args.horizon
    split = int(0.8 * args.length)
    n_test = 512
    # test windows lie entirely after the split, so the model never trained on their values
    test_starts = torch.linspace(split, args.length - span, n_test).long()
    x_test, y_test = windows(noisy, test_starts, args.context, args.horizon)
    _, clean_test = windows(clean, test_starts, args.context, args.horizon)

    model = Forecaster(args.hidden, args.layers, args.horizon, args.dropout, args.backend).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(s / max(args.steps, 1), 1.0))))
    print(f"series of {args.length} points (periods {PERIODS}, noise sd {args.noise}); LSTM "
          f"{args.layers}x{args.hidden}, {args.context} -> {args.horizon} steps on {device}, "
          f"{describe(args.backend, device)}")

    losses = []
    t0 = time.perf_counter()
    progress = Progress(args.steps, "forecast", args.quiet)
    for step in range(args.steps):
        starts = torch.randint(0, split - span + 1, (args.batch,), generator=gen)
        x, y = windows(noisy, starts, args.context, args.horizon)
        loss = F.mse_loss(model(x.to(device)), y.to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), args.clip)
        opt.step()
        sched.step()
        losses.append(loss.item())
        progress.step(step, mse=losses[-1])
    train_s = time.perf_counter() - t0

    model.eval()
    with torch.no_grad():
        pred = model(x_test.to(device)).cpu()
    test_mse = F.mse_loss(pred, y_test).item()
    persistence_mse = F.mse_loss(x_test[:, -1:, 0].expand_as(y_test), y_test).item()
    args.out.mkdir(parents=True, exist_ok=True)
    plt, png = pyplot(), args.out / "forecast.png"
    if plt is not None:
        plot(plt, png, x_test, y_test, pred, clean_test, test_mse, args.noise)

    print(f"trained {args.steps} steps in {train_s:.1f} s; train MSE {losses[0]:.4f} -> "
          f"{sum(losses[-10:]) / len(losses[-10:]):.4f}")
    print(f"test MSE {test_mse:.4f} | persistence {persistence_mse:.4f} | "
          f"noise floor {args.noise ** 2:.4f}")
    if plt is not None:
        print(f"wrote {png}")
    return {"losses": losses, "test_mse": test_mse, "persistence_mse": persistence_mse,
            "noise_floor": args.noise ** 2, "train_seconds": train_s}


if __name__ == "__main__":
    main()
