"""Real/bogus classifiers for (science, reference, difference) triplets.

``BraaiCNN`` is a small VGG-like network in the spirit of braai (Duev et al. 2019,
MNRAS 489, 3582): three convolution blocks (32, 64, 128 filters of 3x3, ReLU,
2x2 max-pooling), a dense layer of 256 units with dropout, and one logit. On
3x63x63 inputs the feature map after the blocks is 128x7x7.

``resnet18_triplet`` (and ``resnet34_triplet``) is ResNet-18 (-34) built from
torchvision's ``BasicBlock`` (random weights: nothing is downloaded) adapted to small
N-band cut-outs: the 7x7 stride-2 stem and its max-pool would shrink 63 pixels to 16
before the first residual stage, so the stem is a 3x3 convolution and the max-pool is
dropped (as for CIFAR-sized images), and the head is dropout plus one logit.
``stem_stride`` and ``width`` trade accuracy for speed on a CPU.

All return logits of shape ``(n,)``; P(real) is their sigmoid. Build any of them by
name with :func:`astrodag.models.registry.build_model`, which is what a model's
``model.json`` sidecar records (``architecture`` and ``options``).
"""

from __future__ import annotations

import torch
from torch import nn

# Residual blocks per stage of torchvision's ResNets built from BasicBlock.
RESNET_BLOCKS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3)}


def _check_common(in_channels: int, dropout: float) -> None:
    if isinstance(in_channels, bool) or not isinstance(in_channels, int) or in_channels < 1:
        raise ValueError(f"in_channels must be a positive integer, got {in_channels!r}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")


def _check_input(inputs: torch.Tensor, channels: int, size: int | None) -> None:
    """Refuse inputs that are not ``(n, channels, size, size)``, naming the expected shape."""
    expected = f"(batch, {channels}, {size if size else 'S'}, {size if size else 'S'})"
    if inputs.dim() != 4 or inputs.shape[1] != channels or inputs.shape[2] != inputs.shape[3] or (
            size is not None and inputs.shape[2] != size):
        raise ValueError(f"expected a tensor of shape {expected}, got {tuple(inputs.shape)}")


class BraaiCNN(nn.Module):
    """braai-style CNN: Conv(32)-ReLU-MaxPool, Conv(64)-ReLU-MaxPool, Conv(128)-ReLU-MaxPool,
    Dense(256)-ReLU-Dropout, Dense(1).

    Parameters
    ----------
    in_channels : int, default 3
        Input channels (science, reference, difference).
    size : int, default 63
        Side of the square cut-outs; fixes the size of the dense layer.
    dropout : float, default 0.5
        Dropout before the output layer.

    Raises
    ------
    ValueError
        For invalid parameters, a cut-out too small for three poolings, or (in
        ``forward``) an input that is not ``(n, in_channels, size, size)``.
    """

    FILTERS = (32, 64, 128)
    DENSE_UNITS = 256

    def __init__(self, in_channels: int = 3, size: int = 63, dropout: float = 0.5):
        super().__init__()
        _check_common(in_channels, dropout)
        if isinstance(size, bool) or not isinstance(size, int) or size < 8:
            raise ValueError(f"size must be an integer >= 8 (three 2x2 poolings), got {size!r}")
        self.in_channels = in_channels
        self.size = size
        layers: list[nn.Module] = []
        channels = in_channels
        for filters in self.FILTERS:
            layers += [nn.Conv2d(channels, filters, kernel_size=3, padding=1), nn.ReLU(inplace=True),
                       nn.MaxPool2d(2)]
            channels = filters
        self.features = nn.Sequential(*layers)
        reduced = size // 2 // 2 // 2  # each floor-mode pooling halves and rounds down
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(channels * reduced * reduced, self.DENSE_UNITS),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(self.DENSE_UNITS, 1),
        )

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        _check_input(inputs, self.in_channels, self.size)
        return self.classifier(self.features(inputs)).squeeze(1)


class ResNetTriplet(nn.Module):
    """ResNet-18 or -34 (torchvision's ``BasicBlock``) with a 3x3 stem and no max-pool.

    With ``width=64`` the layers and parameter names are torchvision's ``resnet18`` /
    ``resnet34`` (``conv1``, ``bn1``, ``layer1``-``layer4``, ``fc``); ``width`` scales every
    stage's channels (``width``, 2, 4 and 8 times it), so ``width=32`` costs about a quarter.
    See :func:`resnet18_triplet` for the parameters; ``depth`` is 18 or 34.
    """

    def __init__(self, in_channels: int = 3, dropout: float = 0.0, stem_stride: int = 1, width: int = 64,
                 depth: int = 18):
        from torchvision.models.resnet import BasicBlock, conv1x1  # slow to import; only this model needs it

        super().__init__()
        _check_common(in_channels, dropout)
        if stem_stride not in (1, 2):
            raise ValueError(f"stem_stride must be 1 or 2, got {stem_stride!r}")
        if isinstance(width, bool) or not isinstance(width, int) or width < 4:
            raise ValueError(f"width must be an integer >= 4, got {width!r}")
        if depth not in RESNET_BLOCKS:
            raise ValueError(f"depth must be one of {sorted(RESNET_BLOCKS)}, got {depth!r}")
        self.in_channels = in_channels
        self.conv1 = nn.Conv2d(in_channels, width, kernel_size=3, stride=stem_stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        planes_in = width
        for stage, planes in enumerate((width, 2 * width, 4 * width, 8 * width), start=1):
            stride = 1 if stage == 1 else 2
            downsample = None
            if stride != 1 or planes_in != planes:
                downsample = nn.Sequential(conv1x1(planes_in, planes, stride), nn.BatchNorm2d(planes))
            blocks = [BasicBlock(planes_in, planes, stride, downsample)]
            blocks += [BasicBlock(planes, planes) for _ in range(RESNET_BLOCKS[depth][stage - 1] - 1)]
            setattr(self, f"layer{stage}", nn.Sequential(*blocks))
            planes_in = planes
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Sequential(nn.Dropout(dropout), nn.Linear(planes_in, 1))
        # torchvision's initialisation of ResNet.
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.constant_(module.weight, 1)
                nn.init.constant_(module.bias, 0)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        _check_input(inputs, self.in_channels, None)
        out = self.relu(self.bn1(self.conv1(inputs)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return self.fc(torch.flatten(self.avgpool(out), 1)).squeeze(1)


def resnet18_triplet(in_channels: int = 3, dropout: float = 0.0, stem_stride: int = 1,
                     width: int = 64) -> ResNetTriplet:
    """ResNet-18 for small cut-outs: 3x3 stem, no max-pool, one logit.

    Parameters
    ----------
    in_channels : int, default 3
        Input channels.
    dropout : float, default 0.0
        Dropout before the output layer.
    stem_stride : {1, 2}, default 1
        Stride of the 3x3 stem. 1 keeps the full 63x63 resolution in the first stage
        (CIFAR-style); 2 halves it there, which makes the network about four times cheaper.
    width : int, default 64
        Channels of the first stage (64 is ResNet-18; 32 is about four times cheaper).

    Returns
    -------
    ResNetTriplet
        Accepts any square ``(n, in_channels, S, S)`` input (global average pooling).

    Notes
    -----
    On one CPU thread the full network (stride 1, width 64) trains at about 4 triplets/s;
    ``stem_stride=2, width=32`` at about 100/s, which is what a CPU-only demo can afford.
    """
    return ResNetTriplet(in_channels, dropout, stem_stride, width, depth=18)


def resnet34_triplet(in_channels: int = 3, dropout: float = 0.0, stem_stride: int = 1,
                     width: int = 64) -> ResNetTriplet:
    """ResNet-34 for small cut-outs (3, 4, 6, 3 blocks per stage); as :func:`resnet18_triplet` otherwise."""
    return ResNetTriplet(in_channels, dropout, stem_stride, width, depth=34)
