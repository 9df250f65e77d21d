"""Each op is registered where it is written (docs/adding-an-op.md): its schema, its CPU kernel
and, when it has one, its autograd formula all come from one csrc/ops/<family>_ops.cpp, and the
ops with integer results only skip autograd altogether."""

import re

import pytest
import torch

import cpg_kernels  # noqa: F401  (registers the ops)

FAMILIES = {
    "mask_ops.cpp": [
        "pack_bits",
        "unpack_bits",
        "active_bits",
        "owner_histogram",
        "count_bits",
        "apply_bits",
        "grad_epilogue",
    ],
    "linear_ops.cpp": [
        "masked_linear",
        "masked_linear_grad_input",
        "masked_linear_weight_grad",
        "masked_linear_multitask",
    ],
    "conv_ops.cpp": ["masked_conv2d", "masked_conv2d_grad_input", "masked_conv2d_multitask"],
}
INTEGER_RESULTS = {"pack_bits", "unpack_bits", "active_bits", "owner_histogram", "count_bits"}
DIFFERENTIABLE = {
    "masked_linear",
    "masked_linear_multitask",
    "masked_conv2d",
    "masked_conv2d_multitask",
    "apply_bits",
}
OPS = [(family, name) for family, names in FAMILIES.items() for name in names]


def _rows(name: str) -> dict[str, str]:
    """The dispatcher's table of cpg::<name>: key (or "debug", where the schema was
    registered) -> its row."""
    rows = {}
    for line in torch._C._dispatch_dump(f"cpg::{name}").splitlines():
        if line.startswith("debug:"):
            rows["debug"] = line
        elif match := re.match(r"(\w+)(?:\[\w+\])?: ", line):
            rows[match.group(1)] = line
    return rows


def test_every_op_of_the_library_is_listed_here():
    registered = {
        n.split("::", 1)[1].split(".", 1)[0]
        for n in torch._C._dispatch_get_all_op_names()
        if n.startswith("cpg::")
    }
    assert registered == {name for _, name in OPS}


@pytest.mark.parametrize("family,name", OPS)
def test_schema_and_kernels_come_from_the_family_file(family, name):
    rows = _rows(name)
    assert "registered at" in rows["debug"] and family in rows["debug"], rows["debug"]
    assert family in rows["CPU"], rows["CPU"]
    if name in DIFFERENTIABLE:
        assert family in rows["Autograd"], rows["Autograd"]


@pytest.mark.parametrize("name", sorted(INTEGER_RESULTS))
def test_integer_ops_fall_through_autograd(name):
    assert "fallthrough" in _rows(name)["Autograd"], _rows(name)["Autograd"]


def test_active_bits_of_a_mask_that_requires_grad_builds_no_graph():
    # The one integer op with a floating input: a picking mask that is being trained.
    owner = torch.zeros(2, 40, dtype=torch.uint8)
    owner[0, :5] = 1
    mask = torch.rand(2, 40, requires_grad=True)
    with torch.autograd.graph.saved_tensors_hooks(lambda t: pytest.fail("saved"), lambda t: t):
        bits = torch.ops.cpg.active_bits(owner, 2, mask, None, 0.5)
    assert bits.grad_fn is None and not bits.requires_grad
    assert torch.equal(bits, torch.ops.cpg.active_bits(owner, 2, mask.detach(), None, 0.5))
