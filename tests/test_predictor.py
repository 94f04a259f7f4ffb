"""The Predictor on real (tiny) trained runs: every input kind, MNIST-like preprocessing, the CLI,
and the ensemble path from run folders to a submission."""

from __future__ import annotations

import io
import json
import os
import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage

from conftest import sample_arrays, train_tiny
from digit_utils import cli, data, ensemble
from digit_utils.data import submission as submit
from digit_utils.errors import ConfigError, DataError, DataWarning
from digit_utils.serve.predictor import CENTRE, Predictor, is_mnist_style, preprocess
from digit_utils.train import inference

# Recipes that reach ~95% (fast_cnn) and ~80% (simple_cnn) on 1,600 sample rows in a few CPU
# seconds; two different models make the ensemble tests meaningful.
RECIPES = {
    "s0": {"model": "fast_cnn", "epochs": 3, "batch_size": 64, "optimizer": "adamw", "lr": 3e-3},
    "s1": {"model": "simple_cnn", "epochs": 2, "batch_size": 64, "optimizer": "adamw", "lr": 2e-3},
}


@pytest.fixture(scope="module")
def world(tmp_path_factory, sample_dir):
    """Two tiny runs trained on 2,000 sample rows, plus test digits they get right."""
    root = tmp_path_factory.mktemp("predictor")
    images, labels, test_images, test_labels = sample_arrays(sample_dir)
    runs = [
        train_tiny(recipe, images, labels, root / name, seed=seed, val_fraction=0.2, name=name)
        for seed, (name, recipe) in enumerate(RECIPES.items())
    ]
    predictor = Predictor.from_run(runs[0], device="cpu")
    proba = predictor.predict_images(test_images[:200])
    sure = np.nonzero((proba.argmax(1) == test_labels[:200]) & (proba.max(1) > 0.9))[0][:4]
    assert len(sure) == 4, "the tiny run should get a few digits right"
    return {
        "root": root,
        "runs": runs,
        "predictor": predictor,
        "train": (images[:2000], labels[:2000]),
        "digits": test_images[sure],  # (4,1,28,28)
        "labels": test_labels[sure],
    }


def test_same_digit_from_path_pil_numpy_and_tensor(world, tmp_path):
    predictor, digit = world["predictor"], world["digits"][0]  # (1,28,28) uint8
    png = tmp_path / "digit.png"
    Image.fromarray(digit[0]).save(png)
    results = [
        predictor.predict(png),
        predictor.predict(str(png)),
        predictor.predict(Image.fromarray(digit[0])),
        predictor.predict(digit[0]),  # numpy [28,28]
        predictor.predict(torch.from_numpy(digit).float() / 255),  # tensor [1,28,28] in 0..1
        predictor.predict(torch.from_numpy(digit)),  # uint8 tensor
    ]
    assert {r.digit for r in results} == {int(world["labels"][0])}
    for r in results:
        assert len(r.probabilities) == 10
        assert r.confidence == max(r.probabilities)
        np.testing.assert_allclose(r.probabilities, results[0].probabilities, atol=1e-5)
    assert results[0].source == str(png)
    assert [d for d, _ in results[0].top(3)][0] == results[0].digit


def test_batches_give_one_prediction_each(world, tmp_path):
    predictor, digits, labels = world["predictor"], world["digits"], world["labels"]
    batch = predictor.predict(digits)  # numpy [N,1,28,28]
    assert [p.digit for p in batch] == labels.tolist()
    assert [p.digit for p in predictor.predict(torch.from_numpy(digits))] == labels.tolist()
    assert [p.digit for p in predictor.predict(digits[:, 0])] == labels.tolist()  # [N,28,28]
    colour = torch.from_numpy(digits[0]).repeat(3, 1, 1)  # one RGB tensor [3,28,28]
    assert predictor.predict(colour).digit == labels[0]
    with pytest.raises(DataError, match=r"3-D tensor is one \[C,H,W\] image"):
        predictor.predict(torch.from_numpy(digits[:, 0]))
    files = []
    for i, d in enumerate(digits):
        files.append(tmp_path / f"{i}.jpg")
        Image.fromarray(d[0]).save(files[-1], quality=95)
    assert [p.digit for p in predictor.predict(files)] == labels.tolist()
    mixed = predictor.predict([files[0], Image.fromarray(digits[1, 0]), digits[2, 0]])
    assert [p.digit for p in mixed] == labels[:3].tolist()
    assert [p.source for p in mixed] == [str(files[0]), "#1", "#2"]


def photo_of(digit: np.ndarray, seed: int = 0) -> np.ndarray:
    """The digit 7x larger, dark ink on grey-white noisy paper, far off-centre: uint8 [300,420]."""
    big = np.asarray(Image.fromarray(digit).resize((196, 196), Image.Resampling.BICUBIC))
    rng = np.random.default_rng(seed)
    paper = np.clip(rng.normal(225, 6, (300, 420)), 0, 255)
    paper[20:216, 200:396] = np.minimum(paper[20:216, 200:396], 255 - big.astype(float))
    return paper.astype(np.uint8)


def test_preprocessing_turns_a_photo_back_into_an_mnist_digit(world):
    predictor = world["predictor"]
    for digit, label in zip(world["digits"][:, 0], world["labels"], strict=True):
        photo = photo_of(digit)
        assert not is_mnist_style(photo.astype(np.float32))
        x = preprocess(photo)
        assert x.shape == (1, 28, 28) and x.dtype == np.uint8
        rows, cols = np.nonzero(x[0].any(1))[0], np.nonzero(x[0].any(0))[0]
        assert max(rows[-1] - rows[0], cols[-1] - cols[0]) + 1 == 20  # longest side 20 px
        yy, xx = np.indices((28, 28))
        mass = x[0].astype(float).sum()
        com = ((yy * x[0]).sum() / mass, (xx * x[0]).sum() / mass)
        assert np.allclose(com, CENTRE, atol=0.6)
        assert x[0, 0].max() == 0 and x[0, :, 0].max() == 0  # a black MNIST background
        # Up to the one-pixel rounding of the centring, it is the original digit again.
        best = max(
            np.corrcoef(np.roll(x[0], (dy, dx), (0, 1)).ravel(), digit.ravel())[0, 1]
            for dy in (-1, 0, 1)
            for dx in (-1, 0, 1)
        )
        assert best > 0.9
        assert predictor.predict(Image.fromarray(photo)).digit == label


def test_mnist_style_input_passes_through_untouched(world):
    digit = world["digits"][1]
    np.testing.assert_array_equal(preprocess(digit), digit)
    np.testing.assert_array_equal(preprocess(digit[0]), digit)


def test_transparent_png_is_read_as_ink_on_white(world, tmp_path):
    digit, label = world["digits"][2, 0], world["labels"][2]
    rgba = np.zeros((28, 28, 4), np.uint8)  # black strokes whose alpha is the ink
    rgba[..., 3] = digit
    path = tmp_path / "drawn.png"
    Image.fromarray(rgba, "RGBA").save(path)
    assert world["predictor"].predict(path).digit == label
    rgb = np.repeat((255 - photo_of(digit, 1))[..., None], 3, axis=2)  # light ink, dark photo
    assert world["predictor"].predict(rgb).digit == label


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: np.full((50, 40), 240, np.uint8), "blank image"),
        (lambda p: Image.new("L", (28, 28), 0), "blank image"),
        (lambda p: (p.write_text("not a png"), p)[1], "not an image PIL can read"),
        (lambda p: p.parent / "missing.png", "file not found"),
        (lambda p: np.zeros((2, 3, 4, 5, 6), np.uint8), "cannot read an array of shape"),
        (lambda p: np.zeros((4, 28, 28, 2), np.uint8), "cannot read an array"),
        (lambda p: np.full((28, 28), 300.0), "0..255"),
        (lambda p: [], "empty list"),
        (lambda p: {"a": 1}, "got dict"),
    ],
)
def test_bad_inputs_give_our_clear_error(world, tmp_path, make, message):
    x = make(tmp_path / "fake.png")
    with pytest.raises(DataError, match=message):
        world["predictor"].predict(x)


def test_preprocess_wants_one_image(world):
    with pytest.raises(DataError, match="batch of 4"):
        preprocess(world["digits"])


def test_an_ensemble_of_runs_averages_their_probabilities(world):
    runs, digits = world["runs"], world["digits"]
    both = Predictor.from_run(runs, device="cpu").predict_images(digits)
    each = [Predictor.from_run(r, device="cpu").predict_images(digits) for r in runs]
    np.testing.assert_allclose(both, (each[0] + each[1]) / 2, atol=1e-6)
    assert not np.allclose(each[0], each[1])  # two runs really are two models


def save_pngs(world, tmp_path):
    files = []
    for i, d in enumerate(world["digits"][:2]):
        files.append(tmp_path / f"d{i}.png")
        Image.fromarray(d[0]).save(files[-1])
    return files


def test_cli_prints_a_table(world, tmp_path, capsys):
    files = save_pngs(world, tmp_path)
    args = ["predict", *map(str, files), "--run", str(world["runs"][0]), "--device", "cpu"]
    assert cli.main(args) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["file", "digit", "confidence", "top-3"]
    for line, path, label in zip(lines[1:], files, world["labels"], strict=False):
        cells = line.split()
        assert cells[0] == str(path) and cells[1] == str(label)
        assert cells[3].startswith(f"{label}:")  # top-3 starts with the predicted digit


def test_cli_json_ensemble_and_figures(world, tmp_path, capsys):
    files = save_pngs(world, tmp_path)
    runs = [a for r in world["runs"] for a in ("--run", str(r))]
    figures = tmp_path / "figs"
    args = ["predict", *map(str, files), *runs, "--json", "--show", "--figures", str(figures)]
    assert cli.main([*args, "--tta", "2", "--device", "cpu"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["runs"] == [str(r) for r in world["runs"]] and record["tta"] == 2
    preds = record["predictions"]
    assert [p["digit"] for p in preds] == world["labels"][:2].tolist()
    assert all(len(p["probabilities"]) == 10 for p in preds)
    assert [p["source"] for p in preds] == [str(f) for f in files]
    assert len(record["figures"]) == 2
    for f in record["figures"]:
        assert f.startswith(str(figures))
        with Image.open(f) as figure:
            assert figure.size[0] > 100


def test_cli_reports_a_bad_image_cleanly(world, tmp_path, capsys):
    bad = tmp_path / "notes.png"
    bad.write_text("hello")
    assert cli.main(["predict", str(bad), "--run", str(world["runs"][0])]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error:") and "notes.png" in err and "not an image" in err


def test_from_run_folders_to_a_valid_submission(world, tmp_path):
    """The ensemble notebook's path: runs -> OOF -> compare -> combine -> submission.csv."""
    images, labels = world["train"]
    oof = inference.load_oof(world["runs"])
    assert oof.names == ["s0", "s1"] and oof.probas.shape == (2, len(oof.indices), 10)
    table = ensemble.compare_methods(oof.probas, labels[oof.indices], names=oof.names, folds=3)
    method, accuracy = ensemble.pick_best(table)
    assert accuracy > 0.85
    # Re-predicting the validation rows with TTA goes through the checkpoints themselves.
    again = inference.load_oof(world["runs"], images=images, tta=0, device="cpu")
    np.testing.assert_allclose(again.probas, oof.probas, atol=1e-4)
    test = inference.predict_runs(world["runs"], world["digits"], tta=1, device="cpu")
    assert test.shape == (2, 4, 10)
    pred, _ = ensemble.combine(
        method, test, oof_probas=oof.probas, oof_labels=labels[oof.indices], names=oof.names
    )
    path = submit.write_submission(
        pred,
        tmp_path / "submission.csv",
        expected_rows=4,
        provenance={"method": method, "cv_accuracy": accuracy},
    )
    assert submit.validate_submission(path, 4)["Label"].tolist() == world["labels"].tolist()
    assert json.loads(path.with_suffix(".json").read_text())["method"] == method


# --------------------------------------------------------------------------------------------
# Odd images, and photos that look like photos


def phone_photo(digit: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """An MNIST digit as a phone photo: dark ink on paper lit from one side, off-centre, blurred,
    noisy and JPEG-compressed. uint8 [H,W]."""
    h, w = rng.integers(180, 260), rng.integers(200, 300)
    side = int(rng.integers(80, min(h, w) - 20))
    big = np.asarray(Image.fromarray(digit).resize((side, side), Image.Resampling.BICUBIC), float)
    ink = np.zeros((h, w))
    top, left = rng.integers(0, h - side), rng.integers(0, w - side)
    ink[top : top + side, left : left + side] = big / 255.0
    angle = rng.uniform(0, 2 * np.pi)  # light falls off from 235 to ~110 across the page
    yy, xx = np.mgrid[0:h, 0:w]
    ramp = (np.cos(angle) * xx / w + np.sin(angle) * yy / h) + 1
    light = 235 - 125 * ramp / ramp.max()
    photo = light * (1 - 0.75 * ink)  # ink reflects a quarter of the light on it
    photo = ndimage.gaussian_filter(photo, 1.2)
    photo = np.clip(photo + rng.normal(0, 4, photo.shape), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(photo).save(buf, "JPEG", quality=70)
    return np.asarray(Image.open(buf))


def test_photos_with_uneven_light_score_like_the_arrays(world, sample_dir):
    """The photo-like set against the same digits as 28×28 arrays (the figure of merit)."""
    source = data.DataSource(sample_dir, "sample")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        digits = data.load_test(source)[:N_PHOTOS, 0]
    labels = data.load_test_labels(source)[:N_PHOTOS]
    rng = np.random.default_rng(14)
    photos = [phone_photo(d, rng) for d in digits]
    predictor = world["predictor"]
    from_arrays = np.array([p.digit for p in predictor.predict(digits[:, None])])
    from_photos = np.array([p.digit for p in predictor.predict(photos)])
    acc_arrays, acc_photos = (from_arrays == labels).mean(), (from_photos == labels).mean()
    print(f"\nN={N_PHOTOS}: arrays {acc_arrays:.2%}, photos {acc_photos:.2%}")
    assert acc_arrays - acc_photos <= 0.01, (acc_arrays, acc_photos)
    assert (from_arrays == from_photos).mean() >= 0.97


N_PHOTOS = 400


def test_a_sixteen_bit_png_keeps_its_dark_grey_ink(world, tmp_path):
    # Item 8: I;16 -> L clipped every value above 255 to white, so grey ink looked blank.
    digit, label = world["digits"][0, 0], world["labels"][0]
    paper = np.full((60, 60), 60000, np.uint16)
    big = np.asarray(Image.fromarray(digit).resize((44, 44), Image.Resampling.BICUBIC), float)
    paper[8:52, 8:52] = (60000 - big / 255 * 40000).astype(np.uint16)  # ink at 20000 of 65535
    path = tmp_path / "sixteen.png"
    Image.fromarray(paper).save(path)
    with Image.open(path) as img:
        assert img.mode.startswith("I;16")
    assert world["predictor"].predict(path).digit == label


def test_white_ink_on_a_transparent_background(world, tmp_path):
    # Item 11: laid on white, white strokes vanished and the image was called blank.
    digit, label = world["digits"][1, 0], world["labels"][1]
    rgba = np.full((28, 28, 4), 255, np.uint8)
    rgba[..., 3] = digit
    path = tmp_path / "white.png"
    Image.fromarray(rgba, "RGBA").save(path)
    assert world["predictor"].predict(path).digit == label
    assert world["predictor"].predict(rgba).digit == label


def test_an_animated_gif_says_it_uses_the_first_frame(world, tmp_path):
    frames = [Image.fromarray(world["digits"][i, 0]) for i in range(2)]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:])
    with pytest.warns(DataWarning, match="animated image of 2 frames; using the first"):
        assert world["predictor"].predict(path).digit == world["labels"][0]


def test_folders_huge_images_and_unknown_devices_are_named(world, tmp_path):
    with pytest.raises(DataError, match="is a folder, not an image file"):
        preprocess(tmp_path)
    huge = tmp_path / "huge.png"
    Image.new("L", (12_000, 12_000), 255).save(huge)  # 144 MP: refused before decoding
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # and without PIL's DecompressionBombWarning
        with pytest.raises(DataError, match="144 megapixels, over the 64-megapixel limit"):
            preprocess(huge)
    for device, message in (("banana", "not a device name"), ("cuda:7", "CUDA is not available")):
        with pytest.raises(ConfigError, match=message):
            Predictor.from_run(world["runs"][0], device=device)


def test_cli_goes_on_past_a_blank_image(world, tmp_path, capsys):
    # Item 11: one blank image stopped the whole batch.
    good, blank = tmp_path / "good.png", tmp_path / "blank.png"
    Image.fromarray(world["digits"][0, 0]).save(good)
    Image.new("L", (40, 40), 230).save(blank)
    code = cli.main(["predict", str(good), str(blank), "--run", str(world["runs"][0])])
    out, err = capsys.readouterr()
    assert code == 1 and "good.png" in out and f"{world['labels'][0]:>5}" in out
    assert err.count("error:") == 1 and "1 of 2 image(s)" in err and "blank.png" in err


def test_a_fifo_or_a_float_tiff_with_nan_is_named(world, tmp_path, capsys):
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)  # reading it would wait for ever; "file not found" was wrong
    with pytest.raises(DataError, match="pipe.png: is a named pipe"):
        preprocess(fifo)
    nan = tmp_path / "nan.tif"
    pixels = np.full((28, 28), 200.0, np.float32)
    pixels[3, 4] = np.nan
    Image.fromarray(pixels, mode="F").save(nan)  # np.bincount raised a ValueError here
    with pytest.raises(DataError, match="nan.tif: has pixels that are not numbers"):
        preprocess(nan)
    assert cli.main(["predict", str(nan), "--run", str(world["runs"][0])]) == 1
    err = capsys.readouterr().err
    assert "nan.tif" in err and "Traceback" not in err
