"""A FER2013 notebook CNN with CBAM attention, for 1 x 48 x 48 input.

Sources: the attention module is CBAM, Woo et al., "CBAM: Convolutional Block Attention
Module", ECCV 2018: channel attention (a shared MLP over the average- and max-pooled
channel descriptors, summed, sigmoid) followed by spatial attention (a 7x7 conv over the
channel-wise average and max maps, sigmoid). The backbone is the FER2013 notebook's
design: three double-conv blocks (32, 64, 128; conv-BN-ReLU x2, max-pool), each followed
by CBAM, then global average pooling, FC 256, dropout, output.
"""
from __future__ import annotations

import numbers

import torch
from torch import nn

from fer_edge.errors import ModelError
from fer_edge.models.edge import conv_bn_relu
from fer_edge.models.registry import register_model


# --- blocks -----------------------------------------------------------------
def check_reduction(reduction, where: str = "CBAM") -> None:
    """``reduction`` divides the channel count of the attention MLP: a whole number of at least 1."""
    if isinstance(reduction, bool) or not isinstance(reduction, numbers.Integral) or reduction < 1:
        raise ModelError(f"{where}: reduction must be a whole number of at least 1, got {reduction!r}")


class ChannelAttention(nn.Module):
    """CBAM channel attention: sigmoid(MLP(avgpool(x)) + MLP(maxpool(x))), MLP shared."""

    def __init__(self, channels: int, reduction: int = 8):
        super().__init__()
        check_reduction(reduction)
        hidden = max(1, channels // reduction)
        self.mlp = nn.Sequential(nn.Linear(channels, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        avg = self.mlp(x.mean(dim=(2, 3)))
        mx = self.mlp(x.amax(dim=(2, 3)))
        return x * torch.sigmoid(avg + mx)[:, :, None, None]


class SpatialAttention(nn.Module):
    """CBAM spatial attention: sigmoid(conv7x7([mean_c(x); max_c(x)]))."""

    def __init__(self, kernel_size: int = 7):
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        desc = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        return x * torch.sigmoid(self.conv(desc))


class CBAM(nn.Sequential):
    """Channel attention, then spatial attention (the sequential order of Woo et al.)."""

    def __init__(self, channels: int, reduction: int = 8, kernel_size: int = 7):
        super().__init__(ChannelAttention(channels, reduction), SpatialAttention(kernel_size))


class DoubleConvCBAM(nn.Sequential):
    """conv-BN-ReLU x2, 2x2 max-pool, CBAM."""

    def __init__(self, cin: int, cout: int, reduction: int = 8):
        super().__init__(conv_bn_relu(cin, cout), conv_bn_relu(cout, cout), nn.MaxPool2d(2),
                         CBAM(cout, reduction))


# --- models -----------------------------------------------------------------
class CBAMCNN(nn.Module):
    """Three double-conv + CBAM blocks (32, 64, 128), GAP, FC 256, dropout, FC."""

    def __init__(self, num_classes: int = 7, widths: tuple[int, ...] = (32, 64, 128), reduction: int = 8,
                 hidden: int = 256, dropout: float = 0.5):
        super().__init__()
        check_reduction(reduction, "cbam_cnn")
        blocks, cin = [], 1
        for w in widths:
            blocks.append(DoubleConvCBAM(cin, w, reduction))
            cin = w
        self.features = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(cin, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(self.features(x)))


# --- registered variants ----------------------------------------------------
@register_model(source="FER2013 notebook: CNN + CBAM (Woo et al. 2018), reduction 8")
def cbam_cnn(num_classes: int = 7, **kwargs) -> nn.Module:
    return CBAMCNN(num_classes=num_classes, **kwargs)
