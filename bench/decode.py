"""Per-call cost: greedy decoding, where a cell (or a T=1 layer) is called once per token.

What seq2seq decoding, generation, RL and streaming inference do: 100 steps of
``embed(token) → cell → linear → argmax``, with an ``LSTMCell`` / ``GRUCell`` / ``RNNCell``
decoder, and a ``LSTM`` layer called with T=1 and its state each step; torch.nn against
rnnkernels (``--backend``, default auto) on the same weights, calls interleaved so that drift of a
shared machine hits both alike. ``no_grad`` is inference; ``grad`` records the whole decode and
back-propagates the summed logits (teacher-forced training of a decoder pays the same per-call
cost). The floor column is the run's multiply-adds at the best GEMM rate measured in the same
run: at these sizes every implementation sits far above it (the cost is per call, not per FLOP).

    python -m bench.decode [--reps 7] [--threads 1] [--steps 100] [--json out.jsonl]
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

import rnnkernels

GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}
VOCAB = 64


class Decoder(torch.nn.Module):
    """embed → recurrent step → logits; ``kind`` is LSTMCell, GRUCell, RNNCell or LSTM (T=1)."""

    def __init__(self, mod, kind: str, H: int):
        super().__init__()
        self.kind = kind
        self.embed = torch.nn.Embedding(VOCAB, H)
        self.rnn = getattr(mod, kind)(H, H)
        self.head = torch.nn.Linear(H, VOCAB)

    def forward(self, tokens0: torch.Tensor, steps: int) -> torch.Tensor:
        B = tokens0.shape[0]
        H = self.head.in_features
        h = torch.zeros(B, H)
        state = (h, torch.zeros(B, H)) if self.kind.startswith("LSTM") else h
        if self.kind == "LSTM":
            state = (h[None], h[None].clone())
        tok, total = tokens0, 0
        for _ in range(steps):
            e = self.embed(tok)
            if self.kind == "LSTM":
                out, state = self.rnn(e[None], state)
                h = out[0]
            else:
                state = self.rnn(e, state)
                h = state[0] if isinstance(state, tuple) else state
            logits = self.head(h)
            total = total + logits.sum()
            tok = logits.argmax(-1)
        return total


def _gemm_rate() -> float:
    a, b = torch.randn(512, 512), torch.randn(512, 512)
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * 512 ** 3 / best / 1e9


def _run(dec: Decoder, tokens0, steps: int, grad: bool) -> float:
    t0 = time.perf_counter()
    if grad:
        dec(tokens0, steps).backward()
    else:
        with torch.no_grad():
            dec(tokens0, steps)
    return time.perf_counter() - t0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--reps", type=int, default=7)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--backend", default="auto")
    p.add_argument("--json", default=None, help="append one JSON line per row to this file")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    rate = _gemm_rate()
    print(f"threads {args.threads}; {args.steps} steps; best GEMM rate {rate:.0f} GFLOP/s; "
          f"backend {args.backend!r}; torch {torch.__version__}")
    print(f"{'decoder':9s} {'B':>3s} {'H':>4s} {'mode':7s} {'torch ms':>9s} {'ours ms':>8s} "
          f"{'speedup':>8s} {'µs/step ours':>13s} {'floor ms':>9s}")
    for kind in ("LSTMCell", "GRUCell", "RNNCell", "LSTM"):
        for B in (1, 32):
            for H in (64, 256):
                for grad in (False, True):
                    torch.manual_seed(0)
                    ref = Decoder(torch.nn, kind, H)
                    ours = Decoder(rnnkernels, kind, H)
                    ours.load_state_dict(ref.state_dict())
                    ours.rnn.backend = args.backend
                    tokens0 = torch.randint(0, VOCAB, (B,))
                    t_ref, t_ours = [], []
                    for k in range(args.reps + 2):     # interleaved; the first two are warm-up
                        order = ((ref, t_ref), (ours, t_ours)) if k % 2 else ((ours, t_ours),
                                                                              (ref, t_ref))
                        for dec, acc in order:
                            acc.append(_run(dec, tokens0, args.steps, grad))
                    a = statistics.median(t_ref[2:]) * 1e3
                    b = statistics.median(t_ours[2:]) * 1e3
                    g = GATES[kind.replace("Cell", "")]
                    macs = args.steps * B * (g * H * 2 * H + H * VOCAB) * (3 if grad else 1)
                    floor = 2 * macs / rate / 1e6
                    mode = "grad" if grad else "no_grad"
                    print(f"{kind:9s} {B:3d} {H:4d} {mode:7s} {a:9.2f} {b:8.2f} {a / b:7.2f}x "
                          f"{b * 1e3 / args.steps:13.1f} {floor:9.3f}", flush=True)
                    if args.json:
                        with open(args.json, "a") as f:
                            f.write(json.dumps(dict(
                                decoder=kind, B=B, H=H, mode=mode, steps=args.steps,
                                torch_ms=a, ours_ms=b, speedup=a / b, floor_ms=floor,
                                threads=args.threads, backend=args.backend,
                                torch=torch.__version__)) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
