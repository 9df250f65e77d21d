"""A training step under the emulator with what it launched and what it cast recorded: the
fp32-weight training tests (test_f32_weight_training.py, test_f32_weight_conv_training.py)
check from these that the step reads the fp32 weight and makes no weight-sized cast."""

from __future__ import annotations

import contextlib

import torch

from cpg_kernels import backends


def _is_op_cast(event) -> bool:
    """A cast the ops make, not one inside ATen's own conv weight gradient (its CPU kernel,
    which an emulated step calls, converts its result in channels_last)."""
    if event.name != "aten::_to_copy":
        return False
    parent = event.cpu_parent
    while parent is not None:
        if parent.name == "aten::convolution_backward":
            return False
        parent = parent.cpu_parent
    return True


@contextlib.contextmanager
def emulated_recording():
    """Runs the block under the emulator; yields ``(log, casts)``: the launch log, and the
    input shapes of every cast the ops made (the profiler sees those called from C++ too),
    filled in when the block ends."""
    casts: list = []
    with (
        backends.emulated(),
        backends.emulator_launches() as log,
        torch.profiler.profile(
            activities=[torch.profiler.ProfilerActivity.CPU], record_shapes=True
        ) as prof,
    ):
        yield log, casts
    casts.extend(e.input_shapes[0] for e in prof.events() if _is_op_cast(e))
