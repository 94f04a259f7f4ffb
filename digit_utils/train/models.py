"""Model registry: ``build_model(name)`` maps ``[B,1,28,28]`` inputs to logits ``[B,10]``.

Also home of ``normalize``, the one input transform that training, evaluation and inference share.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
from torch import nn

from digit_utils.errors import ConfigError
from digit_utils.train.resnets import preact_resnet, wide_resnet

# MNIST pixel statistics on the [0, 1] scale.
MEAN, STD = 0.1307, 0.3081
NUM_CLASSES = 10


def normalize(x: torch.Tensor) -> torch.Tensor:
    """uint8 pixels (0–255) or floats on the [0, 1] scale -> standardised float32, same shape."""
    if x.dtype == torch.uint8:
        x = x.float().div_(255.0)
    return (x - MEAN) / STD


def _conv_bn(c_in: int, c_out: int, k: int = 3, stride: int = 1, padding: int | None = None):
    pad = k // 2 if padding is None else padding
    return [
        nn.Conv2d(c_in, c_out, k, stride=stride, padding=pad, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    ]


class SimpleCNN(nn.Module):
    """The classic tutorial net: the baseline everything else should beat."""

    def __init__(self, dropout: float = 0.5):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 10, 5)
        self.conv2 = nn.Conv2d(10, 20, 5)
        self.drop2d = nn.Dropout2d(dropout)
        self.fc1 = nn.Linear(320, 50)
        self.drop = nn.Dropout(dropout)
        self.fc2 = nn.Linear(50, NUM_CLASSES)

    def forward(self, x):
        x = torch.relu(torch.max_pool2d(self.conv1(x), 2))  # (B,10,12,12)
        x = torch.relu(torch.max_pool2d(self.drop2d(self.conv2(x)), 2))  # (B,20,4,4)
        x = self.drop(torch.relu(self.fc1(x.flatten(1))))
        return self.fc2(x)


def fast_cnn(width: int = 16) -> nn.Module:
    """Tuned for time-to-99% on a small CPU: a 5x5 stem and two 3x3 stages, each conv+BN+pool.

    Pooling after every conv keeps the costly layers at 14x14 and 7x7 (about 2.1M multiply-adds
    an image at width 16); the 3x3x4w map that reaches the classifier keeps positions, which
    matter for digits. Measured with ``benchmarks/train_speed.py`` on the full train set (10%
    holdout, 2-core CPU, 2026-11): three AdamW epochs gave 99.07–99.19% (3 seeds), where a
    two-stage 5x5 net of similar cost stopped at 98.6–98.9% after two.
    """
    w = width
    return nn.Sequential(
        *_conv_bn(1, w, 5),
        nn.MaxPool2d(2),  # (B,w,14,14)
        *_conv_bn(w, 2 * w, 3),
        nn.MaxPool2d(2),  # (B,2w,7,7)
        *_conv_bn(2 * w, 4 * w, 3),
        nn.MaxPool2d(2),  # (B,4w,3,3)
        nn.Flatten(),
        nn.Linear(4 * w * 9, NUM_CLASSES),
    )


def deep_cnn(dropout: float = 0.4, width: int = 32) -> nn.Module:
    """The Kaggle-proven 32C3-32C3-32C5S2-64C3-64C3-64C5S2-128C4 net (about 99.65% alone).

    Credit: Chris Deotte's Kaggle experiments "How to choose CNN Architecture MNIST" (2018),
    which tested each design choice in turn: two 3x3 convolutions in place of one 5x5, a
    learnable 5x5 stride-2 convolution in place of max-pooling, BatchNorm after every
    convolution, 40% dropout, and a 4x4 convolution that replaces the dense layer.
    ``width=64`` doubles every layer (``deep_cnn_wide``, about 4x the multiply-adds).
    """
    w = width
    return nn.Sequential(
        *_conv_bn(1, w, 3, padding=0),  # (B,w,26,26)
        *_conv_bn(w, w, 3, padding=0),  # (B,w,24,24)
        *_conv_bn(w, w, 5, stride=2, padding=2),  # (B,w,12,12)
        nn.Dropout(dropout),
        *_conv_bn(w, 2 * w, 3, padding=0),  # (B,2w,10,10)
        *_conv_bn(2 * w, 2 * w, 3, padding=0),  # (B,2w,8,8)
        *_conv_bn(2 * w, 2 * w, 5, stride=2, padding=2),  # (B,2w,4,4)
        nn.Dropout(dropout),
        *_conv_bn(2 * w, 4 * w, 4, padding=0),  # (B,4w,1,1)
        nn.Flatten(),
        nn.Dropout(dropout),
        nn.Linear(4 * w, NUM_CLASSES),
    )


class SqueezeExcite(nn.Module):
    """Channel gates from globally pooled features (Hu et al. 2018)."""

    def __init__(self, channels: int, reduction: int = 8):
        super().__init__()
        self.gate = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(channels, channels // reduction, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels // reduction, channels, 1),
            nn.Sigmoid(),
        )

    def forward(self, x):
        return x * self.gate(x)


def se_vgg(width: int = 64, dropout: float = 0.3) -> nn.Module:
    """VGG-style stages (2 convs + squeeze-excitation each) with global pooling; aims at ≥99.7%."""
    layers: list[nn.Module] = []
    c_in = 1
    for i, c in enumerate((width, 2 * width, 4 * width)):
        layers += [*_conv_bn(c_in, c), *_conv_bn(c, c), SqueezeExcite(c)]
        if i < 2:
            layers.append(nn.MaxPool2d(2))  # 28 -> 14 -> 7
        c_in = c
    layers += [
        nn.AdaptiveMaxPool2d(1),
        nn.Flatten(),
        nn.Dropout(dropout),
        nn.Linear(c_in, NUM_CLASSES),
    ]
    return nn.Sequential(*layers)


def _one_channel_stem(conv: nn.Conv2d) -> nn.Conv2d:
    """A 3x3 stride-1 conv taking one channel in place of an ImageNet stem (28x28 is tiny)."""
    return nn.Conv2d(1, conv.out_channels, 3, stride=1, padding=1, bias=conv.bias is not None)


def _torchvision(name: str) -> Callable[..., nn.Module]:
    def build(**kw) -> nn.Module:
        import torchvision.models as tvm

        # weights=None: randomly initialised (nothing can be downloaded in a kernel anyway)
        model = getattr(tvm, name)(weights=None, num_classes=NUM_CLASSES, **kw)
        if name.startswith("resnet"):
            model.conv1 = _one_channel_stem(model.conv1)
            model.maxpool = nn.Identity()  # keep 28x28 through the stem; stages then go to 4x4
        elif name.startswith("squeezenet"):
            model.features[0] = _one_channel_stem(model.features[0])
        elif name.startswith("mnasnet"):
            model.layers[0] = _one_channel_stem(model.layers[0])
        elif name.startswith("vgg"):
            model.features[0] = _one_channel_stem(model.features[0])
            # five 2x2 pools would take 28x28 to nothing: keep three (28 -> 3), then pool to
            # 1x1 and feed the 4096-wide classifier 512 features instead of 512x7x7
            pools = [i for i, m in enumerate(model.features) if isinstance(m, nn.MaxPool2d)]
            for i in pools[3:]:
                model.features[i] = nn.Identity()
            model.avgpool = nn.AdaptiveAvgPool2d(1)
            model.classifier[0] = nn.Linear(512, model.classifier[0].out_features)
        else:  # mobilenet_v2, mobilenet_v3_*, efficientnet_*: features[0] is Conv-BN-Act
            model.features[0][0] = _one_channel_stem(model.features[0][0])
        for m in model.modules():
            # MobileNetV3 and EfficientNet ship BatchNorm momentum 0.01 (MNASNet 0.0003), tuned
            # for ImageNet's long runs: after a few hundred steps their running statistics are
            # still near the initial ones and evaluation is at chance although training converges.
            if isinstance(m, nn.BatchNorm2d):
                m.momentum = 0.1
        return model

    build.__doc__ = f"torchvision's {name}, one-channel 3x3 stem, 10 classes, random init."
    return build


# torchvision's ImageNet designs, adapted to one channel (_torchvision)
TORCHVISION = (
    "resnet18",
    "resnet34",
    "resnet50",
    "mobilenet_v2",
    "mobilenet_v3_large",
    "mobilenet_v3_small",
    "efficientnet_b0",
    "efficientnet_b3",
    "squeezenet1_0",
    "squeezenet1_1",
    "mnasnet0_5",
    "mnasnet1_0",
    # the BatchNorm variant: from scratch at one shared learning rate, nets without
    # normalisation are fragile (squeezenet1_0 stays at chance at the zoo's lr 3e-3)
    "vgg16_bn",
)
MODELS: dict[str, Callable[..., nn.Module]] = {
    "simple_cnn": SimpleCNN,
    "fast_cnn": fast_cnn,
    "deep_cnn": deep_cnn,
    "deep_cnn_wide": partial(deep_cnn, width=64),
    "se_vgg": se_vgg,
    "wrn16_4": partial(wide_resnet, 16, 4),  # 2.7M parameters
    "wrn28_10": partial(wide_resnet, 28, 10),  # 36.5M parameters
    "preact_resnet164": partial(preact_resnet, 164),  # 1.7M parameters, 164 layers
    **{n: _torchvision(n) for n in TORCHVISION},
}


def describe(name: str) -> tuple[str, list[dict]]:
    """A model's credit (its builder's docstring) and its layers: one dict per layer with its
    output shape for one 28x28 digit and its parameter count (what a reader checks first)."""
    model = build_model(name).eval()
    rows: list[dict] = []

    def record(module, _inputs, output):
        if isinstance(output, torch.Tensor):
            params = sum(p.numel() for p in module.parameters(recurse=False))
            layer = type(module).__name__
            if isinstance(module, nn.Conv2d):  # 5x5/2: a 5x5 kernel at stride 2
                kh, kw = module.kernel_size
                layer += f" {kh}x{kw}" + (f"/{module.stride[0]}" if module.stride[0] > 1 else "")
            rows.append({"layer": layer, "output": tuple(output.shape[1:]), "params": params})

    leaves = [m for m in model.modules() if not list(m.children())]
    hooks = [m.register_forward_hook(record) for m in leaves]
    try:
        with torch.no_grad():
            model(torch.zeros(1, 1, 28, 28))
    finally:
        for h in hooks:
            h.remove()
    doc = " ".join((MODELS[name].__doc__ or "").split())
    return doc, rows


def list_models() -> list[str]:
    return sorted(MODELS)


def is_torchvision(name: str) -> bool:
    """Whether registered model ``name`` is one of torchvision's ImageNet designs (adapted)."""
    return check_name(name) in TORCHVISION


def check_name(name: str) -> str:
    """``name`` if it is registered; else a ConfigError listing the registered names."""
    if name not in MODELS:
        raise ConfigError(f"model: {name!r} is not a known model ({', '.join(list_models())})")
    return name


def build_model(name: str, **kw) -> nn.Module:
    """A freshly initialised model by registry name; keyword arguments go to its builder."""
    check_name(name)
    try:
        return MODELS[name](**kw)
    except TypeError as e:
        raise ConfigError(f"model {name!r}: bad keyword arguments {kw} ({e})") from None


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
