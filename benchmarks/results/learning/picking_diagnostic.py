"""Diagnostic: how far the picking masks move, and what picking costs, on transformed task 2.

    python benchmarks/results/learning/picking_diagnostic.py 1 0   # second task index, seed

Learns task 1 (upright digits, PAE), then task 2 (rotated 90) from the same state under each
variant, without growth or pruning, and prints the validation and test accuracy and the share of
the older weights the learned mask left out. The committed output (picking_diagnostic.txt) was
made at commit b5d6a5a, where the defaults were a cosine schedule and a mask learning rate of
5e-4 (set explicitly below), and every task was pruned to the reserve (task 1 here to 0.5).
"""
import sys
import time
from dataclasses import replace

import torch

from cpg_kernels import lifecycle as L
from cpg_kernels.cli.networks import small_cnn
from cpg_kernels.convert import convert
from cpg_kernels.data import load_tasks
from cpg_kernels.masks import DEFAULT_THRESHOLD
from cpg_kernels.trainer import Callback, CPGTrainer, TrainConfig


class Dropped(Callback):
    """After each training phase: the share of older weights the mask leaves out."""

    def __init__(self, model):
        self.model, self.share = model, 0.0

    def on_phase_end(self, t, phase, accuracy):
        if not phase.startswith("train"):
            return
        dropped = older = 0
        for _, layer in L.masked_layers(self.model):
            if layer.mask is not None:
                old = (layer.owner > 0) & (layer.owner < t)
                older += int(old.sum())
                dropped += int((old & (layer.mask <= DEFAULT_THRESHOLD)).sum())
        self.share = dropped / older if older else 0.0


def main(second: int, seed: int) -> None:
    torch.set_num_threads(1)
    tasks = load_tasks("transformed", seed=seed)
    base = TrainConfig(method="pae", seed=seed, reserve=0.5, mask_lr=5e-4,
                       lr_schedule="cosine")
    torch.manual_seed(seed)
    model = convert(small_cnn(1, 10))
    CPGTrainer(model, base).learn(tasks[0])
    state = {k: v.clone() if isinstance(v, torch.Tensor) else v
             for k, v in model.state_dict().items()}
    old = dict(lr_schedule="constant", mask_schedule="same", select_best=False)
    variants = {
        "pick-all, constant lr, last epoch": dict(method="pae", **old),
        "pick 5e-4, constant, last epoch": dict(method="cpg", **old),
        "pick-all, cosine": dict(method="pae"),
        "pick 5e-4, cosine mask": dict(method="cpg", mask_schedule="same"),
        "pick 5e-4, paper mask": dict(method="cpg"),
        "pick 1e-4, paper mask": dict(method="cpg", mask_lr=1e-4),
        "pick 1e-4, cosine mask": dict(method="cpg", mask_lr=1e-4, mask_schedule="same"),
    }
    for name, options in variants.items():
        torch.manual_seed(seed)
        net = convert(small_cnn(1, 10))
        net.load_state_dict(state)
        config = replace(base, growth_step=1e-9, max_size=1.0, goal=1e-6, final_sparsity=0.0,
                         reserve=0.0, **options)
        spy = Dropped(net)
        started = time.perf_counter()
        result = CPGTrainer(net, config, [spy]).learn(tasks[second])
        print(f"{name:32s} val {100 * result.val_accuracy:5.1f}  test "
              f"{100 * result.learned_accuracy:5.1f}  older weights dropped "
              f"{100 * spy.share:5.1f}%  ({time.perf_counter() - started:.0f} s)", flush=True)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 1, int(sys.argv[2]) if len(sys.argv) > 2 else 0)
