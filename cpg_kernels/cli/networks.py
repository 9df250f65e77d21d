"""The networks ``cpg train --model`` can build, by name."""

from __future__ import annotations

import math
from collections.abc import Callable

from torch import nn

from .. import models

NETWORKS = ("cnn", "mlp", "vgg16_bn", "resnet18", "resnet50")


def network_builder(
    name: str, input_shape: tuple[int, ...], num_classes: int, width: float = 1.0
) -> Callable[[], nn.Module]:
    """A function making fresh networks ``name`` for inputs of ``input_shape``.

    ``width`` scales every layer's channels or units. ``num_classes`` sizes
    the original classifier (each task gets its own head).
    """
    if name not in NETWORKS:
        raise ValueError(f"unknown model {name!r}; choose from {', '.join(NETWORKS)}")
    if not width > 0:
        raise ValueError(f"width must be > 0, got {width}")
    if name == "cnn":
        return lambda: small_cnn(input_shape[0], num_classes, width)
    if name == "mlp":
        return lambda: mlp(math.prod(input_shape), num_classes, width)
    if len(input_shape) != 3 or input_shape[0] != 3:
        raise ValueError(
            f"{name} takes 3-channel images, these tasks have inputs of shape "
            f"{tuple(input_shape)}: use --model cnn or mlp"
        )
    if name == "vgg16_bn":
        # The paper's CIFAR VGG16-BN: 512 features into two 4096-unit layers.
        return lambda: models.vgg16_bn(
            num_classes, width=width, hidden=_scaled(4096, width), pool=1
        )
    builder = models.resnet18 if name == "resnet18" else models.resnet50
    return lambda: builder(num_classes, width=width)


def small_cnn(in_channels: int, num_classes: int, width: float = 1.0) -> nn.Module:
    """Three 3x3 conv layers with batch norm, two poolings, a hidden layer and a classifier.

    At ``width=1`` it is deliberately tiny (4, 4 and 8 channels, 16 hidden
    units; about a thousand shared weights): on the digits tasks capacity then
    runs out, which is where picking and growth matter. Any input of at
    least 4x4 pixels ends in a 2x2 map.
    """
    c1, c2, hidden = _scaled(4, width), _scaled(8, width), _scaled(16, width)
    return nn.Sequential(
        nn.Conv2d(in_channels, c1, 3, padding=1),
        nn.BatchNorm2d(c1),
        nn.ReLU(),
        nn.Conv2d(c1, c1, 3, padding=1),
        nn.BatchNorm2d(c1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(c1, c2, 3, padding=1),
        nn.BatchNorm2d(c2),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(c2 * 4, hidden),
        nn.BatchNorm1d(hidden),
        nn.ReLU(),
        nn.Linear(hidden, num_classes),
    )


def mlp(in_features: int, num_classes: int, width: float = 1.0) -> nn.Module:
    """Two hidden layers of 256 units (times ``width``) with batch norm."""
    hidden = _scaled(256, width)
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(in_features, hidden),
        nn.BatchNorm1d(hidden),
        nn.ReLU(),
        nn.Linear(hidden, hidden),
        nn.BatchNorm1d(hidden),
        nn.ReLU(),
        nn.Linear(hidden, num_classes),
    )


def _scaled(n: int, width: float) -> int:
    return max(1, round(n * width))
