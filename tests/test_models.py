"""Every registered model: shapes, finiteness, gradients; the registry's errors."""

import pytest
import torch

from digit_utils.errors import ConfigError
from digit_utils.train.models import (
    MEAN,
    STD,
    build_model,
    count_parameters,
    is_torchvision,
    list_models,
    normalize,
)

REQUIRED = {
    "simple_cnn", "fast_cnn", "deep_cnn", "deep_cnn_wide", "se_vgg", "resnet18", "resnet34",
    "resnet50", "mobilenet_v2", "mobilenet_v3_large", "mobilenet_v3_small", "efficientnet_b0",
    "efficientnet_b3", "squeezenet1_0", "squeezenet1_1", "mnasnet0_5", "mnasnet1_0", "vgg16_bn",
    "wrn16_4", "wrn28_10", "preact_resnet164",
}  # fmt: skip
# Seconds for a backward pass even on a few images: these get a forward pass on two images only.
BIG = {"wrn28_10", "resnet50", "vgg16_bn", "efficientnet_b3", "preact_resnet164"}


def test_registry_has_the_required_models():
    assert REQUIRED <= set(list_models())
    assert list_models() == sorted(list_models())


@pytest.mark.parametrize("name", sorted(BIG))
def test_big_models_forward_two_images(name):
    torch.manual_seed(0)
    model = build_model(name).train()
    with torch.no_grad():
        logits = model(torch.randn(2, 1, 28, 28))  # train-mode BatchNorm: two values a channel
    assert logits.shape == (2, 10) and torch.isfinite(logits).all()


@pytest.mark.parametrize("name", sorted(set(list_models()) - BIG))
def test_forward_backward_shapes_and_finite(name):
    torch.manual_seed(0)
    model = build_model(name).train()
    x = torch.randn(4, 1, 28, 28)  # BatchNorm in train mode needs > 1 value per channel
    logits = model(x)
    assert logits.shape == (4, 10)
    assert logits.dtype == torch.float32
    assert torch.isfinite(logits).all()
    logits.logsumexp(1).mean().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)
    model.eval()
    with torch.no_grad():
        assert model(x[:1]).shape == (1, 10)  # eval works with a batch of one


def test_unknown_model_lists_the_known_ones():
    with pytest.raises(ConfigError, match="resnet18") as e:
        build_model("resnet19")
    assert "resnet19" in str(e.value)


def test_torchvision_designs_are_told_from_ours():
    assert is_torchvision("resnet18") and is_torchvision("squeezenet1_1")
    assert not any(map(is_torchvision, ("simple_cnn", "fast_cnn", "deep_cnn", "wrn16_4")))
    with pytest.raises(ConfigError, match="resnet19"):
        is_torchvision("resnet19")


def test_bad_keyword_is_a_config_error():
    with pytest.raises(ConfigError, match="fast_cnn"):
        build_model("fast_cnn", depth=3)


def test_simple_cnn_is_the_classic_tutorial_net():
    # conv 1→10 5x5, conv 10→20 5x5, FC 320→50→10
    assert count_parameters(build_model("simple_cnn")) == 260 + 5020 + 16050 + 510


def test_builder_keywords_change_the_model():
    assert count_parameters(build_model("fast_cnn", width=8)) < count_parameters(
        build_model("fast_cnn")
    )
    assert count_parameters(build_model("deep_cnn_wide")) > 3 * count_parameters(
        build_model("deep_cnn")
    )


def test_residual_depths_and_widths_follow_the_papers():
    from digit_utils.train import resnets

    wrn = build_model("wrn16_4")
    assert sum(isinstance(m, resnets.BasicBlock) for m in wrn.modules()) == 6  # 2 per stage
    assert wrn.head[-1].in_features == 256  # 64 x 4
    deep = build_model("preact_resnet164")
    assert sum(isinstance(m, resnets.Bottleneck) for m in deep.modules()) == 54  # 18 per stage
    assert deep.head[-1].in_features == 256
    with pytest.raises(ConfigError, match="6n"):
        resnets.wide_resnet(17, 4)


def test_normalize_treats_uint8_and_unit_floats_alike():
    x = torch.randint(0, 256, (3, 1, 28, 28), dtype=torch.uint8)
    a, b = normalize(x), normalize(x.float() / 255)
    assert a.dtype == torch.float32
    torch.testing.assert_close(a, b)
    assert normalize(torch.zeros(1, dtype=torch.uint8)).item() == pytest.approx(-MEAN / STD)


def test_describe_lists_layers_shapes_and_every_parameter():
    from digit_utils.train.models import build_model, count_parameters, describe

    credit, layers = describe("deep_cnn")
    assert "Deotte" in credit
    assert sum(row["params"] for row in layers) == count_parameters(build_model("deep_cnn"))
    assert layers[0]["layer"] == "Conv2d 3x3" and layers[0]["output"] == (32, 26, 26)
    assert "Conv2d 5x5/2" in [row["layer"] for row in layers] and layers[-1]["output"] == (10,)
