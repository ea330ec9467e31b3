"""Vanishing gradients: Elman RNN vs LSTM vs GRU on a long-range memory task.

Each sequence starts with one of ``--classes`` signal symbols followed by ``--seq-len - 1``
random distractor symbols; after the last step the model must name the FIRST symbol. Only the
final output is read, so the only path from the loss to the signal is back through all T steps
of the recurrence: ∂L/∂h_0 = ∂L/∂h_{T-1} · Π_t ∂h_t/∂h_{t-1}. For the tanh RNN each factor is
diag(1 - h_t²)·W_hh, and the product shrinks geometrically when its norm stays below 1; the LSTM
cell state (∂c_t/∂c_{t-1} = diag(f_t)) and the GRU's interpolation (the z_t term of ∂h_t/∂h_{t-1})
provide additive paths whose factor stays near 1 while the gates remember. Gradients can also
explode (factors above 1); every model is trained with gradient-norm clipping (``--clip``), and
the largest norm seen before clipping is reported.

With the defaults (T = 100) the RNN's gradient at t = 0 is ~1e-20 of the one at T-1 and it stays
at chance, while the LSTM and GRU, whose keep gates start open (``--gate-init chrono``, see
``Recaller._chrono_init``), learn the task. ``--gate-init default`` keeps torch's initialisation:
then all three start with a ratio of 1e-18 to 1e-20 and none learns in 300 steps. The gated
architectures make a long memory POSSIBLE; their gates must still start (or learn to be) open.

Training runs the fused layers (``rnnkernels.RNN``, ``LSTM``, ``GRU``). The gradient profile
‖∂L/∂h_t‖ is measured with the matching cells (``rnnkernels.RNNCell`` ...) sharing the layer's
weights, in a Python step loop with ``retain_grad()`` on every step's output h_t: a fused layer
hands autograd only its output sequence, whose ``.grad`` would hold just the DIRECT gradient of
each output (zero here for t < T-1, since the loss reads only the last step), while the recurrent
part of the gradient flows inside the fused backward scan. The cell loop's loss is checked
against the layer's, which also shows the layer and the cells compute the same recurrence.

    python examples/vanishing_gradients.py           # about a minute on 2 CPU cores

Writes, when matplotlib is installed, ``vanishing_gradients.png`` (gradient norm over t at
initialisation and after training, and the test accuracy of each model during training) to
``--out`` (default ``examples/out/``).
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from _common import Progress, add_common_args, describe, pyplot, recurrent
MODELS = ("rnn", "lstm", "gru")
COLORS = {"rnn": "tab:red", "lstm": "tab:blue", "gru": "tab:green"}


def make_batch(n: int, seq_len: int, classes: int, distractors: int, gen: torch.Generator):
    """One-hot inputs [n, T, classes + distractors] and labels [n] (the first symbol)."""
    labels = torch.randint(0, classes, (n,), generator=gen)
    tokens = torch.randint(classes, classes + distractors, (n, seq_len), generator=gen)
    tokens[:, 0] = labels
    return F.one_hot(tokens, classes + distractors).float(), labels


class Recaller(nn.Module):
    """A one-layer recurrent net; the class is read from the output at the last step."""

    def __init__(self, kind: str, inputs: int, hidden: int, classes: int, backend: str,
                 gate_init: str, seq_len: int):
        super().__init__()
        self.kind = kind
        self.rnn = recurrent(kind.upper(), backend, inputs, hidden, batch_first=True)
        self.head = nn.Linear(hidden, classes)
        if gate_init == "chrono" and kind != "rnn":
            self._chrono_init(hidden, seq_len)

    @torch.no_grad()
    def _chrono_init(self, hidden: int, seq_len: int) -> None:
        """Open the "keep" gates so that each unit remembers over a random time scale in [1, T].

        With default init the forget gate f = sigmoid(~0) ~ 0.5 halves the state every step, so
        the gated path is as short-lived as the RNN's. Chrono initialisation (Tallec & Ollivier,
        "Can recurrent neural networks warp time?", 2018) sets the keep-gate bias to log(u),
        u ~ U(1, T-1): a unit then keeps its state for about u steps, and ∂L/∂h_0 survives.
        LSTM (gates i, f, g, o): b_f = log(u), b_i = -b_f. GRU (gates r, z, n; h' = (1-z)n + z h,
        so z is the keep gate): b_z = log(u).
        """
        H = hidden
        b = torch.log(torch.empty(H).uniform_(1.0, max(seq_len - 1, 2)))
        if self.kind == "lstm":
            self.rnn.bias_ih_l0[H:2 * H] = b          # f
            self.rnn.bias_ih_l0[0:H] = -b             # i
            self.rnn.bias_hh_l0[0:2 * H] = 0.0
        else:
            self.rnn.bias_ih_l0[H:2 * H] = b          # z
            self.rnn.bias_hh_l0[H:2 * H] = 0.0

    def forward(self, x):
        out, _ = self.rnn(x)
        return self.head(out[:, -1])


def gradient_profile(model: Recaller, x, y, backend: str) -> tuple[torch.Tensor, float, float]:
    """Per-example ‖∂L/∂h_t‖ averaged over the batch, t = 0..T-1, via a cell step loop.

    Returns (norms [T], loss from the cell loop, loss from the fused layer). The loss is summed
    over the batch so every example's gradient is that of its own loss, not scaled by 1/B.
    """
    layer = model.rnn
    kwargs = {"nonlinearity": layer.nonlinearity} if model.kind == "rnn" else {}
    cell = recurrent(f"{model.kind.upper()}Cell", backend, layer.input_size, layer.hidden_size,
                     **kwargs)
    # layer parameters are named weight_ih_l0 ..., the cell's weight_ih ...: same tensors, same layout
    cell.load_state_dict({k.removesuffix("_l0"): v for k, v in layer.state_dict().items()})
    cell.to(x.device)

    B, T, _ = x.shape
    h = x.new_zeros(B, layer.hidden_size)
    c = x.new_zeros(B, layer.hidden_size)
    hs = []
    for t in range(T):
        if model.kind == "lstm":
            h, c = cell(x[:, t], (h, c))
        else:
            h = cell(x[:, t], h)
        h.retain_grad()  # keep ∂L/∂h_t, which autograd frees by default for non-leaf tensors
        hs.append(h)
    loss_cells = F.cross_entropy(model.head(h), y, reduction="sum")
    loss_cells.backward()
    model.zero_grad(set_to_none=True)  # the head got gradients too; they must not leak into training
    norms = torch.stack([h_t.grad.norm(dim=1).mean() for h_t in hs]).cpu()
    with torch.no_grad():
        loss_layer = F.cross_entropy(model(x), y, reduction="sum")
    return norms, loss_cells.item(), loss_layer.item()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--models", default=",".join(MODELS), help="comma-separated subset of rnn,lstm,gru")
    p.add_argument("--seq-len", type=int, default=100, help="T: steps between the signal and the answer")
    p.add_argument("--classes", type=int, default=4, help="signal symbols (chance = 1/classes)")
    p.add_argument("--distractors", type=int, default=4, help="noise symbols")
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=300, help="optimizer steps per model")
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--clip", type=float, default=1.0, help="max global gradient norm")
    p.add_argument("--gate-init", choices=("chrono", "default"), default="chrono",
                   help="LSTM/GRU keep-gate biases: chrono (open, see Recaller._chrono_init) or torch's")
    return add_common_args(p)


def plot(plt, path: Path, results: dict, seq_len: int, classes: int) -> None:
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for kind, r in results.items():
        for ax, key in zip(axes[:2], ("grad_init", "grad_trained")):
            # a gradient that underflowed to exactly 0 in float32 is drawn at 1e-30, not dropped
            ax.semilogy(range(seq_len), r[key].clamp_min(1e-30), color=COLORS[kind], label=kind.upper())
        steps, acc = zip(*r["test_accuracy"])
        axes[2].plot(steps, acc, color=COLORS[kind], marker="o", ms=3, label=kind.upper())
    for ax, when in zip(axes[:2], ("at initialisation", "after training")):
        ax.set_title(f"‖∂L/∂h_t‖ {when}")
        ax.set_xlabel("t (the signal is at t = 0, the loss reads t = T-1)")
        ax.grid(True, which="major", alpha=0.3)
        ax.legend()
    axes[2].axhline(1 / classes, color="0.5", ls="--", lw=1, label="chance")
    axes[2].set_ylim(0, 1.02)
    axes[2].set_title(f"test accuracy, recall over T = {seq_len} steps")
    axes[2].set_xlabel("optimizer step")
    axes[2].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> dict:
    args = build_parser().parse_args(argv)
    kinds = [k.strip().lower() for k in args.models.split(",") if k.strip()]
    if not kinds or any(k not in MODELS for k in kinds):
        raise SystemExit(f"--models must be a comma-separated subset of {','.join(MODELS)}, "
                         f"got {args.models!r}")
    device = torch.device(args.device)
    inputs = args.classes + args.distractors
    data_gen = torch.Generator().manual_seed(args.seed + 1)
    x_test, y_test = (t.to(device) for t in make_batch(1000, args.seq_len, args.classes,
                                                       args.distractors, data_gen))
    x_probe, y_probe = x_test[:256], y_test[:256]
    print(f"recall the first of {args.seq_len} symbols ({args.classes} classes, chance "
          f"{1 / args.classes:.2f}); hidden {args.hidden}, clip {args.clip}, on {device}, "
          f"{describe(args.backend, device)}")

    results = {}
    eval_every = max(args.steps // 20, 1)
    for kind in kinds:
        torch.manual_seed(args.seed)
        gen = torch.Generator().manual_seed(args.seed)  # every model sees the same batches
        model = Recaller(kind, inputs, args.hidden, args.classes, args.backend,
                         args.gate_init, args.seq_len).to(device)
        opt = torch.optim.Adam(model.parameters(), lr=args.lr)
        grad_init, loss_c, loss_l = gradient_profile(model, x_probe, y_probe, args.backend)
        if abs(loss_c - loss_l) > 1e-3 * max(1.0, abs(loss_l)):
            raise RuntimeError(f"{kind}: cell loop loss {loss_c} != fused layer loss {loss_l}")
        losses, grad_norms, test_acc = [], [], []
        t0 = time.perf_counter()
        progress = Progress(args.steps, f"{kind:>4}", args.quiet)
        for step in range(args.steps):
            x, y = (t.to(device) for t in make_batch(args.batch, args.seq_len, args.classes,
                                                     args.distractors, gen))
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            # the norm before clipping is returned: spikes in it are exploding gradients
            grad_norms.append(nn.utils.clip_grad_norm_(model.parameters(), args.clip).item())
            opt.step()
            losses.append(loss.item())
            if (step + 1) % eval_every == 0 or step == 0:
                with torch.no_grad():
                    acc = (model(x_test).argmax(1) == y_test).float().mean().item()
                test_acc.append((step + 1, acc))
            progress.step(step, loss=losses[-1], test_acc=test_acc[-1][1])
        train_s = time.perf_counter() - t0
        grad_trained, loss_c, loss_l = gradient_profile(model, x_probe, y_probe, args.backend)
        if abs(loss_c - loss_l) > 1e-3 * max(1.0, abs(loss_l)):
            raise RuntimeError(f"{kind}: cell loop loss {loss_c} != fused layer loss {loss_l}")
        results[kind] = {"losses": losses, "grad_norm_before_clip": grad_norms,
                         "test_accuracy": test_acc, "grad_init": grad_init,
                         "grad_trained": grad_trained, "train_seconds": train_s}

    args.out.mkdir(parents=True, exist_ok=True)
    plt, png = pyplot(), args.out / "vanishing_gradients.png"
    if plt is not None:
        plot(plt, png, results, args.seq_len, args.classes)
    print(f"{'model':>5} | test acc | ‖∂L/∂h_0‖ / ‖∂L/∂h_T-1‖ init -> trained "
          "| max grad norm | time")
    for kind, r in results.items():
        init, trained = (float(r[k][0] / r[k][-1]) for k in ("grad_init", "grad_trained"))
        print(f"{kind.upper():>5} | {r['test_accuracy'][-1][1]:8.3f} | {init:10.2e} -> "
              f"{trained:9.2e}          | {max(r['grad_norm_before_clip']):13.2f} | "
              f"{r['train_seconds']:.1f} s")
    if plt is not None:
        print(f"wrote {png}")
    return {"losses": {k: r["losses"] for k, r in results.items()}, "results": results}


if __name__ == "__main__":
    main()
