"""CPGConv2d and CPGLinear: drop-in conv/linear layers whose weight is shared by tasks.

State (docs/design.md section 2), with the parent's ``state_dict`` keys kept:

* ``weight``, ``bias``: Parameters where torch puts them. ``weight`` is shared
  by every task; ``bias`` belongs to the training task.
* ``owner``: uint8 buffer shaped like ``weight`` (0 = free, t = trained by t).
* ``bits_<t>``: int32 buffer ``[N_t, ceil(K_t/32)]``, the packed active set of
  finished task ``t``; ``bias_<t>``: its bias. ``N_t``/``K_t`` are the layer's
  size when ``t`` finished: growth never touches a finished task's data.
* ``mask``: the real-valued picking mask (fp32, weight shape), a Parameter
  that exists only while a task trains and has older weights to pick.

Forward: no task yet -> the plain torch layer; the training task -> the
training ops (``cpg_conv2d``/``cpg_linear``: gradients reach only its own
weights and the mask); a finished task -> the packed-bits ops on a detached
weight, so nothing a finished task computes can move a shared parameter.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..functional import cpg_conv2d, cpg_linear, masked_conv2d, masked_linear
from ..masks import DEFAULT_THRESHOLD, active_bits, owner_counts, unpack, words_per_row
from .base import CPGModule, check_task_id, enlarged, memory_format, narrow_channels, pad_channels

MASK_INIT = 1e-2  # Piggyback/CPG: every picking-mask entry starts here (threshold 5e-3)


class MaskedLayer(CPGModule):
    """CPG state and behaviour shared by CPGConv2d and CPGLinear.

    Subclasses say where channels live (``_channel_dim``), run the ops
    (``_forward_bits``, ``_forward_training``), rename their sizes (``_set_sizes``) and
    build the plain torch layer for export (``_plain``).
    """

    _channel_dim: int

    def _init_cpg(self) -> None:
        self._init_tasks()
        self.threshold = DEFAULT_THRESHOLD
        self.in_widths: dict[int, int] = {}  # finished task -> weight.shape[1] when it finished
        self.register_buffer("owner", torch.zeros_like(self.weight, dtype=torch.uint8))
        self.register_parameter("mask", None)

    @classmethod
    def _adopt_dense(cls, layer, dense: nn.Module):
        """``layer`` (built on the meta device) takes over ``dense``'s parameters."""
        layer.weight = dense.weight
        layer.bias = dense.bias
        layer.owner = torch.zeros_like(dense.weight, dtype=torch.uint8)
        return layer.train(dense.training)

    # -------------------------------------------------------------- forward

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self._selected_task()
        if t is None:
            return super().forward(x)
        if t == self.training_task:
            return self._forward_training(x, t)
        return self._forward_finished(x, t)

    def _forward_finished(self, x: torch.Tensor, t: int) -> torch.Tensor:
        bits = self.get_buffer(f"bits_{t}")
        rows, width = bits.shape[0], self.in_widths[t]
        weight = self.weight.detach()
        if (rows, width) == tuple(weight.shape[:2]):
            return self._forward_bits(x, weight, bits, self._task_bias(t))
        # The layer grew after t finished: compute t at its own size.
        weight = weight[:rows, :width].contiguous(memory_format=memory_format(weight))
        x = narrow_channels(x, self._channel_dim, width)
        y = self._forward_bits(x, weight, bits, self._task_bias(t))
        return pad_channels(y, self._channel_dim, self.weight.shape[0] - rows)

    def _task_bias(self, t: int) -> torch.Tensor | None:
        return self._buffers.get(f"bias_{t}")

    # ------------------------------------------------------------ lifecycle

    def begin_task(self, t: int, picking: bool = True) -> None:
        """Start task ``t``: free weights become tentatively its own.

        ``picking=True`` learns which older weights to use with a real-valued
        mask (CPG/Piggyback); ``picking=False`` uses all of them (PackNet).
        """
        check_task_id(t)
        highest = int(self.owner.max()) if self.owner.numel() else 0
        if t <= highest:
            raise ValueError(f"task {t}: owner already holds task ids up to {highest}")
        self._start_task(t)
        with torch.no_grad():
            self.owner.masked_fill_(self.owner == 0, t)
        pickable = bool(((self.owner > 0) & (self.owner < t)).any())
        self.mask = (
            nn.Parameter(
                torch.full(
                    self.weight.shape, MASK_INIT, dtype=torch.float32, device=self.weight.device
                )
            )
            if picking and pickable
            else None
        )

    def prune(self, sparsity: float) -> float:
        """Release the smallest-magnitude weights of the training task.

        ``sparsity`` is the fraction of the weights available to the task
        (its own plus the free ones) that should be free afterwards; pruned
        weights get owner 0 and value 0. Sparsity never decreases, so the
        gradual schedule of Zhu & Gupta can call this with rising targets.
        Returns the sparsity reached.
        """
        t = self._require_training()
        if not 0.0 <= sparsity < 1.0:
            raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
        own = (self.owner == t).flatten()
        free = int((self.owner == 0).sum())
        available = int(own.sum()) + free
        extra = round(sparsity * available) - free
        if extra > 0:
            candidates = own.nonzero().squeeze(1)
            magnitude = self.weight.detach().flatten()[candidates].abs()
            pruned = torch.zeros_like(own)
            pruned[candidates[magnitude.argsort(stable=True)[:extra]]] = True
            pruned = pruned.view(self.owner.shape)  # masked_fill_: any memory layout
            with torch.no_grad():
                self.owner.masked_fill_(pruned, 0)
                self.weight.masked_fill_(pruned, 0)
            free += extra
        return free / available if available else 0.0

    def finalize_task(self) -> int:
        """Freeze the training task: store its packed active set, drop the mask."""
        t = self._require_training()
        self.register_buffer(
            f"bits_{t}", active_bits(self.owner, t, mask=self.mask, threshold=self.threshold)
        )
        if self.bias is not None:
            self.register_buffer(f"bias_{t}", self.bias.detach().clone())
        self.in_widths[t] = self.weight.shape[1]
        self.mask = None
        return self._finish_task()

    def forget_task(self, t: int) -> None:
        """Drop task ``t`` and release every weight no remaining task uses."""
        self._drop_task(t)
        del self.in_widths[t]
        used = torch.zeros_like(self.owner, dtype=torch.bool)
        for u in self.tasks:
            bits = self.get_buffer(f"bits_{u}")
            region = (slice(0, bits.shape[0]), slice(0, self.in_widths[u]))
            used[region] |= unpack(bits, used[region].shape)
        orphan = (self.owner != 0) & ~used
        with torch.no_grad():
            self.owner.masked_fill_(orphan, 0)
            self.weight.masked_fill_(orphan, 0)

    def export_task(self, t: int) -> nn.Module:
        """Task ``t`` as the plain torch layer, inactive weights zeroed."""
        bits = self.get_buffer(f"bits_{t}")
        rows, width = bits.shape[0], self.in_widths[t]
        weight = self.weight.detach()[:rows, :width]
        # masked_fill, not a product: inactive entries become +0.0 whatever
        # sign the shared weight has there, so exports of a task hash stably.
        active = unpack(bits, weight.shape)
        plain = self._plain(rows, width, bias=self.bias is not None)
        plain.weight = nn.Parameter(weight.masked_fill(~active, 0))
        if self.bias is not None:
            plain.bias = nn.Parameter(self.get_buffer(f"bias_{t}").clone())
        return plain.train(self.training)

    def grow(self, out_extra: int, in_extra: int) -> None:
        """Add ``out_extra`` output and ``in_extra`` input channels.

        New weights are free (or the training task's, if one trains). New
        rows get torch's default init so they can learn; the new columns of
        old rows start at zero, so the outputs that existed keep their values.
        Finished tasks keep computing at their own size.
        """
        if getattr(self, "groups", 1) != 1:
            raise ValueError("a grouped convolution cannot grow")
        rows, width = self.weight.shape[:2]
        shape = (rows + out_extra, width + in_extra, *self.weight.shape[2:])
        with torch.no_grad():
            weight = enlarged(self.weight.detach(), shape, 0)
            nn.init.kaiming_uniform_(weight[rows:], a=math.sqrt(5))
        self.weight = nn.Parameter(weight, requires_grad=self.weight.requires_grad)
        self.owner = enlarged(self.owner, shape, self.training_task or 0)
        if self.mask is not None:
            self.mask = nn.Parameter(enlarged(self.mask.detach(), shape, MASK_INIT))
        if self.bias is not None:
            self.bias = nn.Parameter(
                enlarged(self.bias.detach(), shape[:1], 0), requires_grad=self.bias.requires_grad
            )
        self._set_sizes(shape[0], shape[1])

    def _per_task_names(self) -> tuple[str, ...]:
        return ("bits", "bias") if self.bias is not None else ("bits",)

    # ------------------------------------------------------------ checking

    def validate(self) -> None:
        """Raise ValueError unless the CPG state is consistent."""
        self._validate_tasks()
        shape = tuple(self.weight.shape)
        if self.owner.dtype != torch.uint8 or tuple(self.owner.shape) != shape:
            raise ValueError(
                f"owner must be uint8 shaped like the weight {shape}, "
                f"got {self.owner.dtype} {tuple(self.owner.shape)}"
            )
        top = max(self.known_tasks(), default=0)
        highest = int(self.owner.max()) if self.owner.numel() else 0
        if highest > top:
            raise ValueError(
                f"owner values go up to {highest} but the highest stored task is {top}"
            )
        if set(self.in_widths) != set(self.tasks):
            raise ValueError(
                f"input widths {sorted(self.in_widths)} do not match tasks {self.tasks}"
            )
        rows, width = self.weight.shape[:2]
        per_column = self.weight[0, 0].numel()
        for t in self.tasks:
            bits, w = self.get_buffer(f"bits_{t}"), self.in_widths[t]
            n = bits.shape[0] if bits.dim() == 2 else -1
            if (
                not (0 < n <= rows and 0 < w <= width)
                or bits.dtype != torch.int32
                or bits.shape[1] != words_per_row(w * per_column)
            ):
                raise ValueError(
                    f"task {t}: packed mask {bits.dtype} {tuple(bits.shape)} does not "
                    f"fit a weight of shape {shape}"
                )
            bias = self._task_bias(t)
            if bias is not None and tuple(bias.shape) != (n,):
                raise ValueError(f"task {t}: bias of shape {tuple(bias.shape)}, expected ({n},)")
        if self.mask is not None and (
            self.training_task is None
            or self.mask.shape != self.weight.shape
            or self.mask.dtype != torch.float32
        ):
            raise ValueError(
                "a picking mask exists only while a task trains, fp32 shaped like the weight"
            )

    def _adopt_state(self, state_dict, prefix: str, extra: dict) -> None:
        stored = state_dict.get(prefix + "weight")
        if isinstance(stored, torch.Tensor) and self._grows_to(stored.shape):
            rows, width = self.weight.shape[:2]
            self.grow(stored.shape[0] - rows, stored.shape[1] - width)
        super()._adopt_state(state_dict, prefix, extra)
        mask = state_dict.get(prefix + "mask")
        self.mask = (
            nn.Parameter(torch.empty(mask.shape, dtype=mask.dtype, device=self._device()))
            if isinstance(mask, torch.Tensor)
            else None
        )

    def _grows_to(self, shape) -> bool:
        """Whether a stored weight of ``shape`` is this layer after growth."""
        own = self.weight.shape
        return (
            len(shape) == len(own)
            and tuple(shape) != tuple(own)
            and tuple(shape[2:]) == tuple(own[2:])
            and shape[0] >= own[0]
            and shape[1] >= own[1]
            and getattr(self, "groups", 1) == 1
        )

    def get_extra_state(self) -> dict:
        return {
            **super().get_extra_state(),
            "threshold": self.threshold,
            "in_widths": dict(self.in_widths),
        }

    def set_extra_state(self, state: dict) -> None:
        super().set_extra_state(state)
        self.threshold = float(state.get("threshold", DEFAULT_THRESHOLD))
        self.in_widths = {int(t): int(w) for t, w in state.get("in_widths", {}).items()}

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, {self._tasks_repr()}, usage={self._usage()}"

    def _usage(self) -> str:
        """Share of the weights each owner value holds, e.g. ``{free: 10%, 1: 90%}``."""
        if self.owner.is_meta or self.owner.numel() == 0:
            return "{}"
        counts = owner_counts(self.owner).tolist()
        total = self.owner.numel()
        parts = [
            f"{'free' if v == 0 else v}: {100 * c / total:.0f}%" for v, c in enumerate(counts) if c
        ]
        return "{" + ", ".join(parts) + "}"


class CPGConv2d(MaskedLayer, nn.Conv2d):
    """``nn.Conv2d`` whose weight is shared by CPG tasks.

    Takes exactly ``nn.Conv2d``'s arguments. Growth needs ``groups == 1``.
    """

    _channel_dim = 1

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._init_cpg()

    @classmethod
    def from_dense(cls, conv: nn.Conv2d) -> CPGConv2d:
        """A CPGConv2d that takes over ``conv``'s parameters (no copy)."""
        layer = cls(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,
            conv.stride,
            conv.padding,
            conv.dilation,
            conv.groups,
            conv.bias is not None,
            conv.padding_mode,
            device="meta",
            dtype=conv.weight.dtype,
        )
        return cls._adopt_dense(layer, conv)

    def _explicit_padding(self, x: torch.Tensor):
        """Input and padding for the ops, which take symmetric zero padding only."""
        if self.padding_mode == "zeros" and not isinstance(self.padding, str):
            return x, self.padding
        mode = "constant" if self.padding_mode == "zeros" else self.padding_mode
        return nn.functional.pad(x, self._reversed_padding_repeated_twice, mode=mode), 0

    def _forward_bits(self, x, weight, bits, bias):
        x, padding = self._explicit_padding(x)
        return masked_conv2d(
            x, weight, bits, bias, self.stride, padding, self.dilation, self.groups
        )

    def _forward_training(self, x, t):
        x, padding = self._explicit_padding(x)
        return cpg_conv2d(
            x,
            self.weight,
            self.owner,
            t,
            mask=self.mask,
            bias=self.bias,
            stride=self.stride,
            padding=padding,
            dilation=self.dilation,
            groups=self.groups,
            threshold=self.threshold,
        )

    def _set_sizes(self, rows: int, width: int) -> None:
        self.out_channels, self.in_channels = rows, width * self.groups

    def _plain(self, rows: int, width: int, bias: bool) -> nn.Conv2d:
        return nn.Conv2d(
            width * self.groups,
            rows,
            self.kernel_size,
            self.stride,
            self.padding,
            self.dilation,
            self.groups,
            bias,
            self.padding_mode,
            device="meta",
        )


class CPGLinear(MaskedLayer, nn.Linear):
    """``nn.Linear`` whose weight is shared by CPG tasks.

    Takes exactly ``nn.Linear``'s arguments.
    """

    _channel_dim = -1

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._init_cpg()

    @classmethod
    def from_dense(cls, linear: nn.Linear) -> CPGLinear:
        """A CPGLinear that takes over ``linear``'s parameters (no copy)."""
        layer = cls(
            linear.in_features,
            linear.out_features,
            linear.bias is not None,
            device="meta",
            dtype=linear.weight.dtype,
        )
        return cls._adopt_dense(layer, linear)

    def _forward_bits(self, x, weight, bits, bias):
        return masked_linear(x, weight, bits, bias)

    def _forward_training(self, x, t):
        return cpg_linear(
            x, self.weight, self.owner, t, mask=self.mask, bias=self.bias, threshold=self.threshold
        )

    def _set_sizes(self, rows: int, width: int) -> None:
        self.out_features, self.in_features = rows, width

    def _plain(self, rows: int, width: int, bias: bool) -> nn.Linear:
        return nn.Linear(width, rows, bias, device="meta")
