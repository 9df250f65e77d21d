"""What the benchmarks run: layer shapes, the case grid and its order, and the cost model.

The cost model gives each case its floating-point work and the fewest bytes it
must move through device memory (each input read once, each output written
once). With a measured copy bandwidth and matmul peak, the larger of
``bytes / bandwidth`` and ``flops / peak`` is the case's floor: no
implementation runs much faster.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

DTYPES = ("bf16", "tf32", "fp32")  # "tf32": fp32 tensors with TF32 tensor cores allowed
BATCHES = (1, 8, 32, 128, 256)
TASK_COUNTS = (2, 4, 8, 16)
MULTITASK_BATCHES = (1, 8)
ELEMENT_BYTES = {"fp32": 4, "tf32": 4, "bf16": 2}
MASK_BYTES = 4  # the real-valued picking mask is always fp32
OWNER_BYTES = 1  # uint8
WORD_BITS = 32  # packed masks: int32 words


@dataclass(frozen=True)
class Layer:
    """One weight of a network, as the masked layer sees it."""

    net: str  # "vgg16bn" (CIFAR, 32x32), "resnet50" (ImageNet, 224x224) or "fc"
    name: str
    out_ch: int  # N: output channels / out_features
    in_ch: int  # input channels / in_features
    kernel: int = 1  # square kernels; 0 for a linear layer
    stride: int = 1
    padding: int = 0
    hw: int = 0  # input height = width; 0 for a linear layer
    bias: bool = True
    late: bool = False  # weight-bandwidth-bound at small batch (the targets' "late layers")
    rep: bool = False  # representative: runs in the first, budget-safe pass

    @property
    def is_linear(self) -> bool:
        return self.kernel == 0

    @property
    def weight_shape(self) -> tuple[int, ...]:
        if self.is_linear:
            return (self.out_ch, self.in_ch)
        return (self.out_ch, self.in_ch, self.kernel, self.kernel)

    @property
    def k(self) -> int:
        """K: the weight's columns when viewed as a matrix [N, K]."""
        return self.in_ch * max(self.kernel, 1) ** 2

    @property
    def out_hw(self) -> int:
        return (self.hw + 2 * self.padding - self.kernel) // self.stride + 1


def _vgg16bn_cifar() -> list[Layer]:
    stages = [(64, 2, 32), (128, 2, 16), (256, 3, 8), (512, 3, 4), (512, 3, 2)]
    layers, cin = [], 3
    for s, (width, count, hw) in enumerate(stages, start=1):
        for i in range(1, count + 1):
            name = f"conv{s}_{i}"
            layers.append(
                Layer(
                    "vgg16bn",
                    name,
                    width,
                    cin,
                    kernel=3,
                    padding=1,
                    hw=hw,
                    bias=True,
                    late=s >= 4,
                    rep=name in ("conv3_2", "conv5_1"),
                )
            )
            cin = width
    return layers


def _resnet50_imagenet() -> list[Layer]:
    """The distinct conv shapes of torchvision's ResNet-50 (stride on the 3x3 conv)."""
    layers = [Layer("resnet50", "conv1", 64, 3, kernel=7, stride=2, padding=3, hw=224, bias=False)]
    # layer1 keeps 56x56; its first block's 1x1 reads 64 channels, the others 256.
    # Its downsample (64->256, 1x1) has conv3's shape.
    layers += [
        Layer("resnet50", "layer1.0.conv1", 64, 64, kernel=1, hw=56, bias=False),
        Layer("resnet50", "layer1.x.conv1", 64, 256, kernel=1, hw=56, bias=False),
        Layer("resnet50", "layer1.conv2", 64, 64, kernel=3, padding=1, hw=56, bias=False),
        Layer("resnet50", "layer1.conv3", 256, 64, kernel=1, hw=56, bias=False),
    ]
    cin, hw = 256, 56
    for stage, width in ((2, 128), (3, 256), (4, 512)):
        out = 4 * width
        late = stage >= 3
        p = f"layer{stage}"
        layers += [
            Layer("resnet50", f"{p}.0.conv1", width, cin, kernel=1, hw=hw, bias=False, late=late),
            Layer(
                "resnet50",
                f"{p}.0.conv2",
                width,
                width,
                kernel=3,
                stride=2,
                padding=1,
                hw=hw,
                bias=False,
                late=late,
            ),
            Layer(
                "resnet50",
                f"{p}.0.downsample",
                out,
                cin,
                kernel=1,
                stride=2,
                hw=hw,
                bias=False,
                late=late,
            ),
            Layer(
                "resnet50", f"{p}.conv3", out, width, kernel=1, hw=hw // 2, bias=False, late=late
            ),
            Layer(
                "resnet50", f"{p}.x.conv1", width, out, kernel=1, hw=hw // 2, bias=False, late=late
            ),
            Layer(
                "resnet50",
                f"{p}.x.conv2",
                width,
                width,
                kernel=3,
                padding=1,
                hw=hw // 2,
                bias=False,
                late=late,
                rep=True,
            ),
        ]
        cin, hw = out, hw // 2
    return layers


def multitask_layers() -> list[Layer]:
    """The layers of the multi-task cases: the linear layers, and VGG16-BN's last conv stage
    (2x2 images, 512 channels: at batch 1 a task has 4 output pixels, so the fused op reads
    the weight once for all tasks)."""
    return LINEAR_LAYERS + [lay for lay in CONV_LAYERS if lay.name == "conv5_1"]


LINEAR_LAYERS = [
    Layer("fc", "4096x4096", 4096, 4096, kernel=0, late=True, rep=True),
    Layer("fc", "4096x25088", 4096, 25088, kernel=0, late=True, rep=True),
    Layer("fc", "1024x1024", 1024, 1024, kernel=0, late=True, rep=True),
]
CONV_LAYERS = _vgg16bn_cifar() + _resnet50_imagenet()


@dataclass(frozen=True)
class Case:
    family: str  # "linear", "conv" or "multitask" (T tasks' inputs against one weight)
    layer: Layer
    batch: int  # images / rows per task
    dtype: str  # "fp32", "tf32" or "bf16"
    mode: str  # "inference" (from packed bits) or "training" (owner + real mask, fwd+bwd)
    tasks: int = 1
    # conv only: activations (x, y, dL/dy, dL/dx) in torch.channels_last; weights stay
    # [N, C, kh, kw] contiguous in every variant
    channels_last: bool = False

    def __post_init__(self):
        if self.channels_last and self.family != "conv":
            raise ValueError(f"channels_last: only conv cases have a layout, not {self.family}")

    @property
    def layout(self) -> str | None:
        """The activations' layout of a conv case, nchw or nhwc; None for the others."""
        if self.family != "conv":
            return None
        return "nhwc" if self.channels_last else "nchw"

    @property
    def id(self) -> str:
        t = f"/T{self.tasks}" if self.family == "multitask" else ""
        cl = "/nhwc" if self.channels_last else ""  # NCHW ids are those of the older runs
        return (
            f"{self.family}/{self.layer.net}.{self.layer.name}{t}{cl}/b{self.batch}/"
            f"{self.dtype}/{self.mode}"
        )

    @property
    def element_bytes(self) -> int:
        return ELEMENT_BYTES[self.dtype]

    @property
    def weight_bytes(self) -> int:
        return math.prod(self.layer.weight_shape) * self.element_bytes

    def input_elems(self) -> int:
        """Activation elements read per task."""
        lay = self.layer
        if lay.is_linear:
            return self.batch * lay.in_ch
        return self.batch * lay.in_ch * lay.hw * lay.hw

    def output_elems(self) -> int:
        """Activation elements written per task."""
        lay = self.layer
        if lay.is_linear:
            return self.batch * lay.out_ch
        return self.batch * lay.out_ch * lay.out_hw * lay.out_hw

    def flops(self) -> int:
        """Multiply-adds times two; a training step is the forward GEMM plus two backward ones."""
        forward = 2 * self.output_elems() * self.layer.k * self.tasks
        return 3 * forward if self.mode == "training" else forward

    def min_bytes(self) -> int:
        """The fewest bytes the case must move: each input read once, each output written once."""
        lay, e = self.layer, self.element_bytes
        n, k = lay.out_ch, lay.k
        weight = n * k * e
        bias = n * e if lay.bias else 0
        acts = (self.input_elems() + self.output_elems()) * e
        if self.mode == "inference":
            bits = n * math.ceil(k / WORD_BITS) * MASK_BYTES
            return self.tasks * (acts + bits) + weight + bias
        # Training: reads x, W, owner, m, dL/dy (+ bias); writes y, dL/dx, dL/dW, dL/dm (+ dL/db).
        per_weight = 2 * e + OWNER_BYTES + 2 * MASK_BYTES
        return 2 * acts + n * k * per_weight + 2 * bias


def floor_seconds(flops: float, nbytes: float, bandwidth: float, peak: float) -> tuple[float, str]:
    """The hardware floor of a case and what bounds it.

    ``bandwidth`` in bytes/s (a device-to-device copy's bytes read plus written
    over its time), ``peak`` in flop/s (a large matmul of the case's precision).
    Returns ``(seconds, "memory" | "compute")``.
    """
    memory, compute = nbytes / bandwidth, flops / peak
    return (memory, "memory") if memory >= compute else (compute, "compute")


def speed_ratio(baseline_s: float | None, fused_s: float | None) -> float | None:
    """How many times faster fused runs than a baseline (``> 1``: fused is faster)."""
    if not baseline_s or not fused_s:
        return None
    return baseline_s / fused_s


# ---------------------------------------------------------------------------------- the grid

# Order of importance: the targets concern batch 1-16 and >= 128 first, bf16 is the production
# precision, and strict fp32 (TF32 off) matters least.
_BATCH_ORDER = (1, 128, 32, 8, 256)
_DTYPE_ORDER = DTYPES
_FAMILY_ORDER = ("linear", "multitask", "conv")


def _priority(case: Case) -> tuple:
    """Representative layers of every family and precision first (NCHW before channels_last),
    then the full grid (likewise)."""
    layers = LINEAR_LAYERS + CONV_LAYERS
    return (
        not case.layer.rep,
        case.channels_last,
        _DTYPE_ORDER.index(case.dtype),
        _BATCH_ORDER.index(case.batch),
        _FAMILY_ORDER.index(case.family),
        layers.index(case.layer),
        case.tasks,
        case.mode != "inference",
    )


def full_grid(dtypes=DTYPES) -> list[Case]:
    """Every case of issue 8 (conv layers in NCHW and in channels_last), most important first."""
    cases = []
    for dtype in dtypes:
        for mode in ("inference", "training"):
            for batch in BATCHES:
                cases += [Case("linear", lay, batch, dtype, mode) for lay in LINEAR_LAYERS]
                cases += [
                    Case("conv", lay, batch, dtype, mode, channels_last=cl)
                    for cl in (False, True)
                    for lay in CONV_LAYERS
                ]
        for batch in MULTITASK_BATCHES:
            for tasks in TASK_COUNTS:
                cases += [
                    Case("multitask", lay, batch, dtype, "inference", tasks)
                    for lay in multitask_layers()
                ]
    return sorted(cases, key=_priority)


def quick_grid(dtypes=("fp32", "bf16")) -> list[Case]:
    """A few small cases that prove the benchmark code works (CPU CI: well under a minute)."""
    fc = LINEAR_LAYERS[2]  # 1024x1024
    vgg = next(lay for lay in CONV_LAYERS if lay.name == "conv3_2")
    res = next(lay for lay in CONV_LAYERS if lay.name == "layer2.0.conv2")  # stride 2
    cases = []
    for dtype in dtypes:
        for mode in ("inference", "training"):
            cases += [
                Case("linear", fc, 1, dtype, mode),
                Case("linear", fc, 32, dtype, mode),
                Case("conv", vgg, 1, dtype, mode),
                Case("conv", res, 1, dtype, mode),
            ]
        cases += [Case("conv", vgg, 1, dtype, "inference", channels_last=True)]
        cases += [Case("multitask", fc, 1, dtype, "inference", tasks) for tasks in (2, 4)]
        cases += [Case("multitask", vgg, 1, dtype, "inference", 2)]
    return cases
