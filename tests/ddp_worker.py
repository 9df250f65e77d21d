"""The process body of test_ddp.py (a plain module, so spawned processes can import it)."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch import nn

from cpg_kernels import lifecycle as L
from cpg_kernels.convert import convert
from cpg_kernels.data import synthetic_tasks
from cpg_kernels.trainer import CPGTrainer, TrainConfig, distributed


def network() -> nn.Module:
    return nn.Sequential(
        nn.Flatten(), nn.Linear(16, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 2)
    )


def train(rank: int, world: int, port: int, out: str) -> None:
    """Join a gloo group as torchrun would, learn two tasks, save what this process holds."""
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world),
    )
    torch.set_num_threads(1)
    device = distributed.init_from_environment("cpu")
    try:
        tasks = synthetic_tasks(num_tasks=2, shape=(16,), train=48, val=16, test=16, seed=3)
        torch.manual_seed(0)
        model = convert(network())
        config = TrainConfig(
            epochs=2,
            batch_size=8,
            goal=0.5,
            final_sparsity=0.5,
            prune_steps=1,
            retrain_epochs=1,
            device=device,
        )
        trainer = CPGTrainer(model, config)
        results = trainer.fit(tasks)
        x = torch.stack([tasks[0].test[i][0] for i in range(8)])
        model.eval()
        with torch.no_grad(), L.task(model, 1):
            logits = model(x)
        torch.save(
            {
                "state": model.state_dict(),
                "results": [r.to_dict() for r in results],
                "logits": logits,
                "world": distributed.world_size(),
            },
            os.path.join(out, f"rank{rank}.pt"),
        )
    finally:
        dist.destroy_process_group()
