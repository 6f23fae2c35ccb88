"""torchvision's ResNet-18 adapted to 1 x 48 x 48 input.

Source: He et al., "Deep Residual Learning for Image Recognition", CVPR 2016, as built
by ``torchvision.models.resnet18(weights=None)``. Only the ImageNet stem changes: the
7x7 stride-2 RGB ``conv1`` becomes a 3x3 stride-1 conv with one input channel and the
stem ``maxpool`` becomes Identity, so the four stages run at 48, 24, 12 and 6 pixels
instead of collapsing a 48x48 face to 2x2. No pretrained weights (they expect RGB and a
different stem).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from torch import nn

from fer_edge.models.registry import register_model

if TYPE_CHECKING:  # torchvision is imported on use: it adds about a second to start-up
    from torchvision.models import ResNet


# --- blocks -----------------------------------------------------------------
def adapt_stem_to_48(model: ResNet, in_channels: int = 1) -> ResNet:
    """Swap a torchvision ResNet's stem for a 3x3 stride-1 ``in_channels`` conv and no max-pool."""
    width = model.conv1.out_channels
    model.conv1 = nn.Conv2d(in_channels, width, kernel_size=3, stride=1, padding=1, bias=False)
    # torchvision's own initialisation for convolutions
    nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
    model.maxpool = nn.Identity()
    return model


# --- models -----------------------------------------------------------------
# The model class is torchvision.models.ResNet itself.


# --- registered variants ----------------------------------------------------
@register_model(source="torchvision ResNet-18 (He et al. 2016), 1-channel 3x3 stem")
def resnet18(num_classes: int = 7, **kwargs) -> nn.Module:
    """``kwargs`` go to torchvision's ResNet (e.g. ``zero_init_residual=True``)."""
    import torchvision

    return adapt_stem_to_48(torchvision.models.resnet18(weights=None, num_classes=num_classes, **kwargs))
