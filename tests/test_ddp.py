"""DistributedDataParallel on CPU: two gloo processes learn tasks in lock step."""

from __future__ import annotations

import os
import socket
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, os.path.dirname(__file__))
import ddp_worker  # noqa: E402  (importable by name in the spawned processes)

pytestmark = pytest.mark.skipif(
    not dist.is_available() or not dist.is_gloo_available(),
    reason="torch.distributed with gloo is not available",
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_train_identical_models(tmp_path):
    mp.spawn(ddp_worker.train, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert all(r["world"] == 2 for r in ranks)
    first, second = ranks
    assert first["state"].keys() == second["state"].keys()
    for key, value in first["state"].items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(value, second["state"][key]), key
    assert first["results"] == second["results"]
    assert torch.equal(first["logits"], second["logits"])
    assert [r["task_id"] for r in first["results"]] == [1, 2]
    for result in first["results"]:
        assert result["accuracy"] == result["learned_accuracy"]  # nothing forgotten
        assert result["sparsity"] > 0.4  # pruned under DDP too
