"""The "enhanced CNN" of the FER2013 notebooks, rebuilt for 1 x 48 x 48 input.

Source: the FER2013 notebook's deep VGG-style design (its own, not a paper): five
conv blocks of 32, 64, 128, 256 and 512 channels with 12 3x3 conv-BN-ReLU layers in
all, a 2x2 max-pool closing each block (48 -> 24 -> 12 -> 6 -> 3 -> 1), then five dense
layers (1024, 512, 256, 128, output) with BN and dropout that shrinks as the layers
narrow. The notebook gives the totals (12 conv layers, about 6.7M parameters) rather
than the per-block split; the layout (2, 2, 3, 3, 2) lands on 6,668,839 parameters.
"""
from __future__ import annotations

import torch
from torch import nn

from fer_edge.errors import ModelError
from fer_edge.models.edge import conv_bn_relu
from fer_edge.models.registry import register_model


# --- blocks -----------------------------------------------------------------
class VGGBlock(nn.Sequential):
    """``depth`` 3x3 conv-BN-ReLU layers, then a 2x2 max-pool."""

    def __init__(self, cin: int, cout: int, depth: int):
        layers = [conv_bn_relu(cin if i == 0 else cout, cout) for i in range(depth)]
        super().__init__(*layers, nn.MaxPool2d(2))


class DenseBNBlock(nn.Sequential):
    """linear - BN - ReLU - dropout."""

    def __init__(self, cin: int, cout: int, dropout: float):
        super().__init__(nn.Linear(cin, cout, bias=False), nn.BatchNorm1d(cout), nn.ReLU(inplace=True),
                         nn.Dropout(dropout))


# --- models -----------------------------------------------------------------
class EnhancedCNN(nn.Module):
    """Five VGG blocks (12 convs), flatten 512x1x1, dense 1024/512/256/128 with BN and
    progressive dropout (0.5, 0.4, 0.3, 0.2), output layer."""

    def __init__(self, num_classes: int = 7, widths: tuple[int, ...] = (32, 64, 128, 256, 512),
                 depths: tuple[int, ...] = (2, 2, 3, 3, 2), dense: tuple[int, ...] = (1024, 512, 256, 128),
                 dropouts: tuple[float, ...] = (0.5, 0.4, 0.3, 0.2)):
        super().__init__()
        if len(widths) != len(depths):
            raise ModelError(f"enhanced_cnn: widths and depths differ in length ({len(widths)} != {len(depths)})")
        if len(dense) != len(dropouts):
            raise ModelError(f"enhanced_cnn: dense and dropouts differ in length ({len(dense)} != {len(dropouts)})")
        blocks, cin = [], 1
        for w, d in zip(widths, depths):
            blocks.append(VGGBlock(cin, w, d))
            cin = w
        self.features = nn.Sequential(*blocks)
        fin = cin * (48 >> len(widths)) ** 2
        layers: list[nn.Module] = [nn.Flatten()]
        for d, p in zip(dense, dropouts):
            layers.append(DenseBNBlock(fin, d, p))
            fin = d
        layers.append(nn.Linear(fin, num_classes))
        self.classifier = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


# --- registered variants ----------------------------------------------------
@register_model(source="FER2013 notebook: enhanced CNN (12 conv in 5 blocks, 5 dense, ~6.7M params)")
def enhanced_cnn(num_classes: int = 7, **kwargs) -> nn.Module:
    return EnhancedCNN(num_classes=num_classes, **kwargs)
