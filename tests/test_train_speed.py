"""benchmarks/train_speed.py: how a time to an accuracy is read off a run."""

import math
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from train_speed import RECIPES, seconds_to  # noqa: E402  (a script, not a package)

from digit_utils.config import TrainConfig  # noqa: E402


def test_the_time_to_an_accuracy_is_the_first_epoch_that_reaches_it_or_the_finished_run():
    history = pd.DataFrame({"val_acc": [0.980, 0.992, 0.994], "seconds": [4.0, 5.0, 6.0]})
    assert seconds_to(history, 0.990) == 9.0  # epoch 2, training seconds summed
    assert math.isnan(seconds_to(history, 0.995))  # no epoch and no final score
    assert math.isnan(seconds_to(history, 0.995, final=0.9949))
    # the finished predictor (the recipe's TTA) reached it: all of the training counts
    assert seconds_to(history, 0.995, final=0.9950) == 15.0
    assert seconds_to(history, 0.990, final=0.9999) == 9.0  # an epoch got there first


def test_every_recipe_is_a_valid_training_config_of_a_registered_model():
    for name, recipe in RECIPES.items():
        cfg = TrainConfig.from_dict({"model": name, **recipe})
        assert cfg.model in ("simple_cnn", "fast_cnn", "deep_cnn", "se_vgg")
    assert RECIPES["fast_cnn_45s"]["model"] == "fast_cnn" and RECIPES["fast_cnn_45s"]["tta"] > 0
