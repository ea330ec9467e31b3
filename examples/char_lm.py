"""Character-level language model with text generation.

An embedding, a stacked ``rnnkernels.LSTM`` (or ``GRU``) and a linear read-out predict the next
character of public-domain poetry (``examples/data/poems.txt``). After training, the model writes
text by sampling one character at a time, feeding the layer one step (T=1) at a time and carrying
its state, with a softmax temperature: below 1 it is conservative, above 1 it is adventurous.

    python examples/char_lm.py                       # LSTM, about a minute on 2 CPU cores
    python examples/char_lm.py --cell gru --temperature 0.6 --prime "Once upon a "

Outputs in ``--out`` (default ``examples/out/``): ``char_lm_<cell>_sample.txt`` (generated text)
and ``char_lm_<cell>.pt`` (state_dict + vocabulary; the keys are torch.nn's, so the same file
loads into a model built from ``torch.nn.LSTM``).
"""
from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from _common import HERE, Progress, add_common_args, describe, recurrent


class CharLM(nn.Module):
    """x [B, T] int64 character ids -> logits [B, T, V] and the recurrent state."""

    def __init__(self, vocab: int, embed: int, hidden: int, layers: int, cell: str,
                 dropout: float, backend: str):
        super().__init__()
        self.embed = nn.Embedding(vocab, embed)
        # inter-layer dropout only exists between stacked layers; torch warns if set with 1 layer
        self.rnn = recurrent(cell.upper(), backend, embed, hidden, num_layers=layers,
                             batch_first=True, dropout=dropout if layers > 1 else 0.0)
        self.head = nn.Linear(hidden, vocab)

    def forward(self, x, state=None):
        y, state = self.rnn(self.embed(x), state)
        return self.head(y), state


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data", type=Path, default=HERE / "data" / "poems.txt", help="UTF-8 text file")
    p.add_argument("--cell", choices=("lstm", "gru"), default="lstm")
    p.add_argument("--embed", type=int, default=48)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--dropout", type=float, default=0.1)
    p.add_argument("--seq-len", type=int, default=64, help="characters per training window (BPTT length)")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=400, help="optimizer steps")
    p.add_argument("--lr", type=float, default=6e-3)
    p.add_argument("--clip", type=float, default=1.0, help="max global gradient norm")
    p.add_argument("--prime", default="The ", help="text the generated sample starts from")
    p.add_argument("--gen-len", type=int, default=600, help="characters to generate")
    p.add_argument("--temperature", type=float, default=0.7)
    return add_common_args(p)


def random_windows(data: torch.Tensor, batch: int, seq_len: int, gen: torch.Generator):
    """batch random windows of seq_len+1 characters: inputs [B, T] and next-char targets [B, T]."""
    start = torch.randint(0, data.numel() - seq_len - 1, (batch,), generator=gen)
    idx = start[:, None] + torch.arange(seq_len + 1)
    win = data[idx]
    return win[:, :-1], win[:, 1:]


@torch.no_grad()
def evaluate(model: CharLM, data: torch.Tensor, seq_len: int, device) -> float:
    """Mean next-character cross-entropy (nats) over non-overlapping windows of held-out text."""
    model.eval()
    n = (data.numel() - 1) // seq_len
    x = data[: n * seq_len].view(n, seq_len).to(device)
    y = data[1: n * seq_len + 1].view(n, seq_len).to(device)
    logits, _ = model(x)
    model.train()
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1)).item()


@torch.no_grad()
def generate(model: CharLM, stoi: dict, itos: list, prime: str, length: int,
             temperature: float, device, gen: torch.Generator) -> str:
    """Sample ``length`` characters after ``prime``: the whole prime in one call, then T=1 steps."""
    model.eval()
    prime = "".join(ch for ch in prime if ch in stoi) or itos[0]
    x = torch.tensor([[stoi[ch] for ch in prime]], device=device)
    logits, state = model(x)
    out = []
    for _ in range(length):
        probs = F.softmax(logits[0, -1].float() / max(temperature, 1e-6), dim=-1)
        nxt = torch.multinomial(probs.cpu(), 1, generator=gen).item()
        out.append(itos[nxt])
        logits, state = model(torch.tensor([[nxt]], device=device), state)
    model.train()
    return prime + "".join(out)


def main(argv=None) -> dict:
    args = build_parser().parse_args(argv)
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    device = torch.device(args.device)

    text = args.data.read_text(encoding="utf-8")
    itos = sorted(set(text))
    stoi = {ch: i for i, ch in enumerate(itos)}
    data = torch.tensor([stoi[ch] for ch in text], dtype=torch.long)
    split = int(0.9 * data.numel())
    train, val = data[:split], data[split:]

    model = CharLM(len(itos), args.embed, args.hidden, args.layers, args.cell,
                   args.dropout, args.backend).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    # cosine decay to 10 %: the last steps refine instead of bouncing around at the full rate
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(s / max(args.steps, 1), 1.0))))
    print(f"{len(text)} characters, vocabulary {len(itos)}; {args.cell.upper()} "
          f"{args.layers}x{args.hidden} on {device}, {describe(args.backend, device)}")

    losses = []
    t0 = time.perf_counter()
    progress = Progress(args.steps, f"char_lm {args.cell}", args.quiet)
    for step in range(args.steps):
        x, y = random_windows(train, args.batch, args.seq_len, gen)
        x, y = x.to(device), y.to(device)
        logits, _ = model(x)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), args.clip)
        opt.step()
        sched.step()
        losses.append(loss.item())
        progress.step(step, loss=losses[-1])
    train_s = time.perf_counter() - t0

    val_loss = evaluate(model, val, args.seq_len, device)
    sample = generate(model, stoi, itos, args.prime, args.gen_len, args.temperature, device, gen)
    args.out.mkdir(parents=True, exist_ok=True)
    sample_path = args.out / f"char_lm_{args.cell}_sample.txt"
    sample_path.write_text(sample + "\n", encoding="utf-8")
    ckpt_path = args.out / f"char_lm_{args.cell}.pt"
    torch.save({"state_dict": model.state_dict(), "itos": itos, "args": vars(args)}, ckpt_path)

    print(f"trained {args.steps} steps in {train_s:.1f} s; train loss {losses[0]:.3f} -> "
          f"{sum(losses[-10:]) / len(losses[-10:]):.3f}, held-out loss {val_loss:.3f} nats "
          f"({val_loss / math.log(2):.2f} bits/char)")
    print(f"--- sample (temperature {args.temperature}) ---\n{sample}\n---")
    print(f"wrote {sample_path} and {ckpt_path}")
    return {"losses": losses, "val_loss": val_loss, "sample": sample, "train_seconds": train_s}


if __name__ == "__main__":
    main()
