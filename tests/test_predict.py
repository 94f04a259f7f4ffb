"""Batched inference: the probability contract, TTA by shifts, input checks."""

import numpy as np
import pytest
import torch

from digit_utils.augment_policy import SHIFTS, tta_shifts
from digit_utils.errors import ConfigError, DataError
from digit_utils.train.inference import predict_proba, shift
from digit_utils.train.models import build_model


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model("fast_cnn").eval()


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(0).integers(0, 256, (23, 1, 28, 28), dtype=np.uint8)


def test_probabilities_contract(model, images):
    p = predict_proba(model, images)
    assert p.shape == (23, 10) and p.dtype == np.float32
    np.testing.assert_allclose(p.sum(1), 1, atol=1e-5)
    assert (p >= 0).all()


def test_numpy_and_tensor_inputs_and_batch_sizes_agree(model, images):
    a = predict_proba(model, images, batch_size=1000)
    b = predict_proba(model, torch.from_numpy(images), batch_size=5)
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_tta_averages_the_listed_shifts(model, images):
    x = torch.from_numpy(images)
    manual = np.mean(
        [predict_proba(model, shift(x, dy, dx).contiguous()) for dy, dx in tta_shifts(3)], axis=0
    )
    np.testing.assert_allclose(predict_proba(model, images, tta=3), manual, atol=1e-5)
    assert not np.allclose(predict_proba(model, images, tta=3), predict_proba(model, images))


def test_shifts_are_small_translations_never_flips():
    assert SHIFTS[0] == (0, 0)
    assert len(set(SHIFTS)) == len(SHIFTS)
    assert all(abs(dy) <= 1 and abs(dx) <= 1 for dy, dx in SHIFTS)
    x = torch.zeros(1, 1, 28, 28, dtype=torch.uint8)
    x[0, 0, 5, 7] = 200
    moved = shift(x, 1, -1)
    assert moved[0, 0, 6, 6] == 200 and moved.sum() == 200  # down one, left one
    edge = torch.zeros_like(x)
    edge[0, 0, 27, 0] = 9
    assert shift(edge, 1, 0).sum() == 0  # falls off the edge: no wrap-around


def test_mode_is_restored(model, images):
    model.train()
    predict_proba(model, images[:4])
    assert model.training
    model.eval()


@pytest.mark.parametrize(
    "bad",
    [
        np.zeros((2, 1, 28, 28), np.float32),
        np.zeros((2, 28, 28), np.uint8),
        np.zeros((2, 1, 27, 28), np.uint8),
        [[0] * 784],
    ],
)
def test_bad_images_raise_data_error(model, bad):
    with pytest.raises(DataError, match=r"uint8 \[N,1,28,28\]|numpy array or tensor"):
        predict_proba(model, bad)


@pytest.mark.parametrize("tta", [-1, 9, 1.5, True])
def test_bad_tta_raises(model, images, tta):
    # one check of a TTA value (augment_policy.tta_shifts), the same for configs and inference
    with pytest.raises(ConfigError, match="tta"):
        predict_proba(model, images, tta=tta)
