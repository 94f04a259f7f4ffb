"""Per-image batched augmentation: shapes, per-image draws, determinism, identity, validation."""

import numpy as np
import pytest
import torch

from digit_utils.augment_policy import PRESETS, AugmentPolicy
from digit_utils.errors import ConfigError
from digit_utils.train.augment import augment_batch, augmentation_gallery


def _digit_batch(n: int = 16) -> torch.Tensor:
    """n copies of one synthetic 'digit': a bright bar plus a blob, floats on [0, 1]."""
    x = torch.zeros(n, 1, 28, 28)
    x[:, :, 6:22, 12:15] = 1.0
    x[:, :, 8:12, 16:20] = 0.7
    return x


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_keep_shape_dtype_device_and_input(name):
    x = _digit_batch()
    before = x.clone()
    out = augment_batch(x, AugmentPolicy.preset(name), torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.dtype == x.dtype and out.device == x.device
    assert torch.isfinite(out).all() and out.min() >= 0 and out.max() <= 1 + 1e-5
    assert torch.equal(x, before)  # the input is not modified in place


@pytest.mark.parametrize("name", [n for n in sorted(PRESETS) if n != "none"])
def test_parameters_are_drawn_per_image(name):
    out = augment_batch(
        _digit_batch(16), AugmentPolicy.preset(name), torch.Generator().manual_seed(1)
    )
    flat = out.flatten(1)
    distinct = {tuple(row.round(decimals=4).tolist()) for row in flat}
    assert len(distinct) == 16  # one draw per batch would make all 16 copies identical


def test_translation_moves_each_image_within_its_range():
    x = torch.zeros(64, 1, 28, 28)
    x[:, :, 13:15, 13:15] = 1.0  # a centred 2x2 square
    policy = AugmentPolicy(translate=0.1)  # at most 2.8 px per axis
    out = augment_batch(x, policy, torch.Generator().manual_seed(0))
    grid = torch.arange(28.0)
    mass = out.sum(dim=(1, 2, 3))
    cy = (out.sum(dim=3).squeeze(1) * grid).sum(1) / mass
    cx = (out.sum(dim=2).squeeze(1) * grid).sum(1) / mass
    assert (cy - 13.5).abs().max() <= 2.8 + 1e-3 and (cx - 13.5).abs().max() <= 2.8 + 1e-3
    assert (cy - 13.5).abs().max() > 1.5  # and the range is actually used
    assert len({round(v, 3) for v in cx.tolist()}) > 50


def test_same_seed_same_output_other_seed_other_output():
    policy = AugmentPolicy.preset("affine_elastic")
    a = augment_batch(_digit_batch(), policy, torch.Generator().manual_seed(7))
    b = augment_batch(_digit_batch(), policy, torch.Generator().manual_seed(7))
    c = augment_batch(_digit_batch(), policy, torch.Generator().manual_seed(8))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_empty_policy_is_the_identity():
    x = _digit_batch()
    for policy in (AugmentPolicy(), AugmentPolicy.preset("none"), AugmentPolicy.from_dict({})):
        assert policy.is_identity
        assert torch.equal(augment_batch(x, policy), x)


def test_zero_ranges_with_affine_path_are_numerically_the_identity():
    # elastic alone runs grid_sample; with a near-zero displacement the image must survive
    x = _digit_batch(4)
    out = augment_batch(x, AugmentPolicy(elastic_alpha=1e-4), torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, x, atol=1e-3, rtol=0)


def test_erasing_removes_a_bounded_rectangle_from_every_image():
    x = torch.ones(32, 1, 28, 28)
    policy = AugmentPolicy(erase_p=1.0, erase_max=0.2)
    out = augment_batch(x, policy, torch.Generator().manual_seed(0))
    erased = (out == 0).float().mean(dim=(1, 2, 3))
    assert (erased > 0).all()
    assert erased.max() <= 0.2 + 0.05  # area ≤ erase_max (plus rounding to whole pixels)


@pytest.mark.parametrize(
    "bad, match",
    [
        ({"rotation": 10}, "unknown key"),
        ({"rotate": -1}, "augment.rotate"),
        ({"erase_p": 1.5}, "augment.erase_p"),
        ({"scale": "0.1"}, "augment.scale: expected float"),
        ({"shear": True}, "augment.shear: expected float"),
    ],
)
def test_policy_rejects_bad_dicts(bad, match):
    with pytest.raises(ConfigError, match=match):
        AugmentPolicy.from_dict(bad)


def test_unknown_preset_lists_the_known_ones():
    with pytest.raises(ConfigError, match="affine_strong"):
        AugmentPolicy.preset("heavy")


def test_policy_round_trips_through_a_dict():
    policy = AugmentPolicy.preset("affine_erasing")
    assert AugmentPolicy.from_dict(policy.to_dict()) == policy
    assert AugmentPolicy.from_dict({"rotate": 10}).rotate == 10.0  # ints accepted


def test_gallery_shape_dtype_and_seed():
    images = (_digit_batch(3) * 255).to(torch.uint8).numpy()
    g = augmentation_gallery(images, "affine", n_draws=5, seed=0)
    assert g.shape == (3, 5, 28, 28) and g.dtype == np.uint8
    assert np.array_equal(g, augmentation_gallery(images, "affine", n_draws=5, seed=0))
    assert np.array_equal(g[:, 0], images[:, 0])  # column 0: the original
    assert len({g[0, d].tobytes() for d in range(5)}) == 5  # four different draws besides it
    same = augmentation_gallery(images, "none", n_draws=2, seed=0)
    assert np.array_equal(same[:, 1], images[:, 0])
