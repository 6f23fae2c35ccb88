"""The plain CNNs of the FER2013 notebooks, rebuilt for 1 x 48 x 48 input.

Sources: the FER2013 notebooks' own designs, not papers. ``baseline_cnn`` is the
notebook baseline (two 5x5 convs, one hidden FC layer); ``simple_cnn`` the notebook's
three-block conv-ReLU-pool CNN; ``custom_cnn`` its four conv-BN-ReLU-pool blocks with
global average pooling; ``keras_cnn`` the widely copied Keras FER2013 CNN (conv
36/128/512/512, dense 256/512). Convolutions are "same"-padded, so each max-pool halves
the resolution (48, 24, 12, 6, 3).
"""
from __future__ import annotations

import torch
from torch import nn

from fer_edge.errors import ModelError
from fer_edge.models.registry import register_model


# --- blocks -----------------------------------------------------------------
class ConvBlock(nn.Sequential):
    """conv (same padding) - [BN] - ReLU - 2x2 max-pool - [dropout]."""

    def __init__(self, cin: int, cout: int, k: int = 3, bn: bool = False, dropout: float = 0.0):
        layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, padding=k // 2, bias=not bn)]
        if bn:
            layers.append(nn.BatchNorm2d(cout))
        layers += [nn.ReLU(inplace=True), nn.MaxPool2d(2)]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        super().__init__(*layers)


class DenseBlock(nn.Sequential):
    """linear - [BN] - ReLU - [dropout]."""

    def __init__(self, cin: int, cout: int, bn: bool = False, dropout: float = 0.0):
        layers: list[nn.Module] = [nn.Linear(cin, cout, bias=not bn)]
        if bn:
            layers.append(nn.BatchNorm1d(cout))
        layers.append(nn.ReLU(inplace=True))
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        super().__init__(*layers)


def _flat_features(channels: int, n_pools: int, size: int = 48) -> int:
    return channels * (size >> n_pools) ** 2


# --- models -----------------------------------------------------------------
class BaselineCNN(nn.Module):
    """Two 5x5 convs (32, 64), each ReLU + max-pool, flatten 64x12x12, FC 128, dropout, FC."""

    def __init__(self, num_classes: int = 7, widths: tuple[int, int] = (32, 64), hidden: int = 128,
                 dropout: float = 0.3):
        super().__init__()
        self.features = nn.Sequential(ConvBlock(1, widths[0], k=5), ConvBlock(widths[0], widths[1], k=5))
        self.classifier = nn.Sequential(
            nn.Flatten(),
            DenseBlock(_flat_features(widths[1], 2), hidden, dropout=dropout),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class SimpleCNN(nn.Module):
    """Three 3x3 conv-ReLU-max-pool blocks (16, 32, 64), flatten 64x6x6, FC 128, dropout, FC."""

    def __init__(self, num_classes: int = 7, widths: tuple[int, ...] = (16, 32, 64), hidden: int = 128,
                 dropout: float = 0.25):
        super().__init__()
        blocks, cin = [], 1
        for w in widths:
            blocks.append(ConvBlock(cin, w))
            cin = w
        self.features = nn.Sequential(*blocks)
        self.classifier = nn.Sequential(
            nn.Flatten(),
            DenseBlock(_flat_features(cin, len(widths)), hidden, dropout=dropout),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class CustomCNN(nn.Module):
    """Four 3x3 conv-BN-ReLU-max-pool blocks (32..256), GAP, FC 128, dropout, FC."""

    def __init__(self, num_classes: int = 7, widths: tuple[int, ...] = (32, 64, 128, 256), hidden: int = 128,
                 dropout: float = 0.5):
        super().__init__()
        blocks, cin = [], 1
        for w in widths:
            blocks.append(ConvBlock(cin, w, bn=True))
            cin = w
        self.features = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(
            nn.Flatten(),
            DenseBlock(cin, hidden, dropout=dropout),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(self.features(x)))


class KerasCNN(nn.Module):
    """Convs 36 (3x3), 128 (5x5), 512 (3x3), 512 (3x3), each BN-ReLU-pool-dropout;
    flatten 512x3x3, dense 256 and 512 each BN-ReLU-dropout, output layer."""

    def __init__(self, num_classes: int = 7, widths: tuple[int, ...] = (36, 128, 512, 512),
                 kernels: tuple[int, ...] = (3, 5, 3, 3), dense: tuple[int, ...] = (256, 512),
                 conv_dropout: float = 0.25, dense_dropout: float = 0.25):
        super().__init__()
        if len(widths) != len(kernels):
            raise ModelError(f"keras_cnn: widths and kernels differ in length ({len(widths)} != {len(kernels)})")
        blocks, cin = [], 1
        for w, k in zip(widths, kernels):
            blocks.append(ConvBlock(cin, w, k=k, bn=True, dropout=conv_dropout))
            cin = w
        self.features = nn.Sequential(*blocks)
        layers: list[nn.Module] = [nn.Flatten()]
        fin = _flat_features(cin, len(widths))
        for d in dense:
            layers.append(DenseBlock(fin, d, bn=True, dropout=dense_dropout))
            fin = d
        layers.append(nn.Linear(fin, num_classes))
        self.classifier = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


# --- registered variants ----------------------------------------------------
@register_model(source="FER2013 notebook: baseline CNN (2 conv 5x5 + FC 128)")
def baseline_cnn(num_classes: int = 7, **kwargs) -> nn.Module:
    return BaselineCNN(num_classes=num_classes, **kwargs)


@register_model(source="FER2013 notebook: simple CNN (3 conv-ReLU-pool blocks + FC 128)")
def simple_cnn(num_classes: int = 7, **kwargs) -> nn.Module:
    return SimpleCNN(num_classes=num_classes, **kwargs)


@register_model(source="FER2013 notebook: custom CNN (4 conv-BN blocks, GAP, FC 128)")
def custom_cnn(num_classes: int = 7, **kwargs) -> nn.Module:
    return CustomCNN(num_classes=num_classes, **kwargs)


@register_model(source="FER2013 notebook: Keras CNN (conv 36/128/512/512, dense 256/512)")
def keras_cnn(num_classes: int = 7, **kwargs) -> nn.Module:
    return KerasCNN(num_classes=num_classes, **kwargs)
