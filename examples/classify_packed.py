"""Many-to-one sentiment classification with a bidirectional GRU on packed sequences.

Synthetic "reviews" of 4 to 40 words (no download): filler words, an odd number of sentiment words
(``good``, ``awful`` ...), some negated by a preceding ``not``. The label is the sign of the summed
polarity, a negated word counting with flipped sign, so the model must find the sentiment words
anywhere in the sentence, count them, and look one word back for a negation.

The batch is padded to its longest sentence and packed with
``pack_padded_sequence(..., enforce_sorted=False)`` (unsorted lengths, no manual sorting), so the
``rnnkernels.GRU(bidirectional=True)`` runs every sentence over its own length only: the forward
direction's final state is taken after the last real word, and the backward direction starts AT
the last real word instead of reading the padding first. The classifier reads both final states
plus a max-pool over the unpacked outputs (``pad_packed_sequence`` with padding -inf so padded
steps never win the max).

    python examples/classify_packed.py               # about a minute on 2 CPU cores
"""
from __future__ import annotations

import argparse
import math
import random
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from _common import Progress, add_common_args, describe, recurrent

PAD = "<pad>"
POSITIVE = ["good", "great", "superb", "lovely", "fun", "clever", "moving", "sharp"]
NEGATIVE = ["bad", "dull", "awful", "boring", "weak", "silly", "clumsy", "tired"]
NEGATOR = "not"
FILLER = ("the a this that film movie plot story cast actor actress script scene music ending "
          "camera director was is felt seemed and but with of quite rather really in at "
          "for it its very so too somewhat long short").split()
VOCAB = [PAD] + POSITIVE + NEGATIVE + [NEGATOR] + FILLER
WORD_ID = {w: i for i, w in enumerate(VOCAB)}


def make_dataset(n: int, min_len: int, max_len: int, rng: random.Random):
    """n sentences as (tokens [n, max_len] padded with 0, lengths [n], labels [n] in {0, 1})."""
    tokens = torch.zeros(n, max_len, dtype=torch.long)
    lengths = torch.empty(n, dtype=torch.long)
    labels = torch.empty(n, dtype=torch.long)
    for b in range(n):
        L = rng.randint(min_len, max_len)
        row = [rng.choice(FILLER) for _ in range(L)]
        # an odd number of +-1 polarities never sums to zero, so every label is well defined
        k = min(rng.choice((1, 3, 5)), L - 1 + L % 2)
        slots = set(rng.sample(range(L), k))
        for s in slots:
            row[s] = rng.choice(POSITIVE if rng.random() < 0.5 else NEGATIVE)
        for s in slots:
            if s > 0 and s - 1 not in slots and rng.random() < 0.35:
                row[s - 1] = NEGATOR
        score = 0
        for t, w in enumerate(row):
            polarity = 1 if w in POSITIVE else -1 if w in NEGATIVE else 0
            score += -polarity if t > 0 and row[t - 1] == NEGATOR else polarity
        tokens[b, :L] = torch.tensor([WORD_ID[w] for w in row])
        lengths[b], labels[b] = L, int(score > 0)
    return tokens, lengths, labels


class Classifier(nn.Module):
    def __init__(self, vocab: int, embed: int, hidden: int, layers: int, backend: str):
        super().__init__()
        self.embed = nn.Embedding(vocab, embed, padding_idx=0)
        self.rnn = recurrent("GRU", backend, embed, hidden, num_layers=layers, batch_first=True,
                             bidirectional=True)
        self.head = nn.Sequential(nn.Linear(4 * hidden, hidden), nn.ReLU(), nn.Linear(hidden, 2))

    def forward(self, tokens, lengths):
        # lengths go to pack_padded_sequence on the CPU (torch requires it); the data stays put
        packed = pack_padded_sequence(self.embed(tokens), lengths.cpu(), batch_first=True,
                                      enforce_sorted=False)
        out, h_n = self.rnn(packed)
        # h_n [layers*2, B, H] comes back in the caller's (unsorted) batch order; the last two rows
        # are the top layer's forward and backward final states
        final = torch.cat([h_n[-2], h_n[-1]], dim=1)
        out, _ = pad_packed_sequence(out, batch_first=True, padding_value=float("-inf"))
        pooled = out.max(dim=1).values
        return self.head(torch.cat([final, pooled], dim=1))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--train-size", type=int, default=4000)
    p.add_argument("--test-size", type=int, default=1000)
    p.add_argument("--min-len", type=int, default=4)
    p.add_argument("--max-len", type=int, default=40)
    p.add_argument("--embed", type=int, default=32)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--layers", type=int, default=1)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--clip", type=float, default=1.0, help="max global gradient norm")
    return add_common_args(p)


@torch.no_grad()
def accuracy(model, tokens, lengths, labels, batch: int) -> float:
    model.eval()
    correct = 0
    for i in range(0, len(labels), batch):
        logits = model(tokens[i:i + batch], lengths[i:i + batch])
        correct += (logits.argmax(1) == labels[i:i + batch]).sum().item()
    model.train()
    return correct / len(labels)


def main(argv=None) -> dict:
    args = build_parser().parse_args(argv)
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    rng = random.Random(args.seed)
    device = torch.device(args.device)

    train = [t.to(device) for t in make_dataset(args.train_size, args.min_len, args.max_len, rng)]
    test = [t.to(device) for t in make_dataset(args.test_size, args.min_len, args.max_len, rng)]
    model = Classifier(len(VOCAB), args.embed, args.hidden, args.layers, args.backend).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    steps_per_epoch = -(-args.train_size // args.batch)
    total = args.epochs * steps_per_epoch
    # cosine decay to 5 %: a steady end instead of accuracy bouncing between epochs
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(s / max(total, 1), 1.0))))
    print(f"{args.train_size} train / {args.test_size} test sentences of {args.min_len}-"
          f"{args.max_len} words, {train[2].float().mean():.0%} positive; bidirectional GRU "
          f"{args.layers}x{args.hidden} on {device}, {describe(args.backend, device)}")

    losses, test_acc = [], []
    t0 = time.perf_counter()
    progress = Progress(total, "classify_packed", args.quiet)
    for epoch in range(args.epochs):
        order = torch.randperm(args.train_size, generator=gen).to(device)
        for i in range(0, args.train_size, args.batch):
            idx = order[i:i + args.batch]
            logits = model(train[0][idx], train[1][idx])
            loss = F.cross_entropy(logits, train[2][idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), args.clip)
            opt.step()
            sched.step()
            losses.append(loss.item())
            progress.step(len(losses) - 1, epoch=epoch, loss=losses[-1])
        test_acc.append(accuracy(model, *test, args.batch))
        if not args.quiet:
            print(f"epoch {epoch}: test accuracy {test_acc[-1]:.3f}")
    train_s = time.perf_counter() - t0

    args.out.mkdir(parents=True, exist_ok=True)
    report = args.out / "classify_packed.txt"
    # the first four positive and four negative test sentences of at most 15 words (readable)
    labels, readable = test[2].cpu(), test[1].cpu() <= 15
    show = torch.cat([torch.nonzero(readable & (labels == c)).flatten()[:4] for c in (1, 0)])
    show = show.to(device)
    with torch.no_grad():
        model.eval()
        pred = model(test[0][show], test[1][show]).softmax(1)[:, 1].cpu()
    lines = [f"test accuracy per epoch: {', '.join(f'{a:.3f}' for a in test_acc)}", ""]
    for k, b in enumerate(show.tolist()):
        words = " ".join(VOCAB[w] for w in test[0][b, :test[1][b]].tolist())
        lines.append(f"label {int(test[2][b])}  p(positive)={pred[k]:.2f}  {words}")
    report.write_text("\n".join(lines) + "\n")
    print(f"trained {len(losses)} steps in {train_s:.1f} s; loss {losses[0]:.3f} -> "
          f"{sum(losses[-10:]) / len(losses[-10:]):.3f}; test accuracy {test_acc[-1]:.3f}")
    print("\n".join(lines[2:4] + lines[6:8]))
    print(f"wrote {report}")
    return {"losses": losses, "test_accuracy": test_acc, "train_seconds": train_s}


if __name__ == "__main__":
    main()
