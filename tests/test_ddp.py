"""DistributedDataParallel over rnnkernels modules (2 CPU processes, gloo, loopback only).

Each rank trains the same model (LSTM with projection → GRU → Linear, float64) on its half of
a batch for 3 SGD steps. With a mean-reduced loss and equal shards, DDP's gradient averaging
makes every step equal to one step of a single process on the whole batch, so after each step
the gradients, and after the last the weights, of both ranks must equal the single-process run
(fp64: to ~1e-10). The single-process run itself is checked against torch.nn modules with the
same weights, so the reference is not just "rnnkernels agrees with itself".
"""
from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

WORLD = 2
STEPS = 3
T, B, I, H, P = 5, 6, 4, 7, 3          # B is split evenly over the ranks
LR = 0.1


class Seq(nn.Module):
    def __init__(self, lib, **kw):
        super().__init__()
        self.lstm = lib.LSTM(I, H, proj_size=P, num_layers=2, **kw)
        self.gru = lib.GRU(P, H, bidirectional=True, **kw)
        self.head = nn.Linear(2 * H, 1)

    def forward(self, x):
        y, _ = self.lstm(x)
        y, h = self.gru(y)
        return self.head(y).squeeze(-1), h


def build(lib_name: str, backend: str) -> nn.Module:
    import rnnkernels
    torch.manual_seed(0)
    ref = Seq(nn).double()
    if lib_name == "torch":
        return ref
    ours = Seq(rnnkernels, backend=backend).double()
    ours.load_state_dict(ref.state_dict())
    return ours


def data():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(T, B, I, generator=g, dtype=torch.float64)
    y = torch.randn(T, B, generator=g, dtype=torch.float64)
    return x, y


def loss_fn(model, x, y):
    out, h = model(x)
    # Mean over every element: the average of the ranks' shard means is the full-batch mean.
    return (out - y).pow(2).mean() + h.pow(2).mean()


def train(model, x, y):
    """3 SGD steps; returns the gradients of every step and the final weights."""
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    grads = []
    for _ in range(STEPS):
        opt.zero_grad()
        loss_fn(model, x, y).backward()
        grads.append({n: p.grad.detach().clone() for n, p in model.named_parameters()})
        opt.step()
    weights = {n: p.detach().clone() for n, p in model.named_parameters()}
    return grads, weights


def _worker(rank: int, port: int, backends: list, outdir: str) -> None:
    # (spawn hands the children the parent's sys.path, so this module and rnnkernels import)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD,
                            init_method=f"tcp://127.0.0.1:{port}")
    try:
        x, y = data()
        shard = slice(rank * B // WORLD, (rank + 1) * B // WORLD)
        # Every backend in one pair of processes: starting them costs more than training.
        for backend in backends:
            model = nn.parallel.DistributedDataParallel(build("ours", backend))
            grads, weights = train(model, x[:, shard], y[:, shard])
            strip = lambda d: {k.removeprefix("module."): v for k, v in d.items()}  # noqa: E731
            torch.save({"grads": [strip(g) for g in grads], "weights": strip(weights)},
                       os.path.join(outdir, f"{backend}-rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _close(a: torch.Tensor, e: torch.Tensor, what: str) -> None:
    scale = max(1.0, float(e.abs().max()))
    torch.testing.assert_close(a, e, rtol=1e-10, atol=1e-11 * scale, msg=lambda m: f"{what}: {m}")


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                    reason="torch.distributed with gloo is not available")
def test_ddp_two_processes_matches_single_process(tmp_path):
    from tests.helpers import cpu_backends
    backends = [b for b in cpu_backends(torch.float64) if b != "triton"]
    assert backends
    x, y = data()
    torch_grads, _ = train(build("torch", ""), x, y)
    single = {}
    for backend in backends:
        single[backend] = train(build("ours", backend), x, y)
        for step, (g, gt) in enumerate(zip(single[backend][0], torch_grads)):
            for n in gt:
                _close(g[n], gt[n], f"{backend}: single-process step {step} grad of {n} vs torch")

    mp.spawn(_worker, args=(_free_port(), backends, str(tmp_path)), nprocs=WORLD, join=True)
    initial = build("torch", "").lstm.weight_hh_l0.detach()
    for backend in backends:
        single_grads, single_weights = single[backend]
        for rank in range(WORLD):
            res = torch.load(tmp_path / f"{backend}-rank{rank}.pt", weights_only=True)
            what = f"{backend} rank {rank}"
            assert res["weights"].keys() == single_weights.keys()
            for step in range(STEPS):
                for n, e in single_grads[step].items():
                    _close(res["grads"][step][n], e, f"{what} step {step} grad of {n}")
            for n, e in single_weights.items():
                _close(res["weights"][n], e, f"{what} final weight {n}")
            # The weights moved: the comparison is not of untouched initial values.
            assert not torch.equal(res["weights"]["lstm.weight_hh_l0"], initial)
