"""The stage graph, the one typed checker, and parameters checked before any notebook runs."""

from __future__ import annotations

import pytest

from conftest import REPO
from digit_utils import notebook, paths, pipeline, stages, typed
from digit_utils.augment_policy import AugmentPolicy
from digit_utils.config import FIELDS, TrainConfig
from digit_utils.errors import ConfigError


def test_the_checker_coerces_ints_to_floats_and_never_takes_a_bool_for_a_number():
    schema = {"lr": float, "epochs": int, "augment": str | dict, "fold": int | None}
    got = typed.check({"lr": 1, "epochs": 3, "augment": {}, "fold": None}, schema)
    assert got == {"lr": 1.0, "epochs": 3, "augment": {}, "fold": None}
    assert isinstance(got["lr"], float)
    for bad, match in [
        ({"lr": True}, "lr: expected float, got True"),
        ({"epochs": 2.0}, "epochs: expected int, got 2.0"),
        ({"augment": 3}, "augment: expected str or dict, got 3"),
        ({"fold": "0"}, "fold: expected int or None, got '0'"),
    ]:
        with pytest.raises(ConfigError, match=match):
            typed.check({"lr": 1.0, "epochs": 1, "augment": "", "fold": None, **bad}, schema)


def test_one_checker_serves_config_policy_and_notebooks():
    """The same message shape from all three, so users learn one kind of error."""
    with pytest.raises(ConfigError, match="^epochs: expected int, got 'x'$"):
        TrainConfig.from_dict({"epochs": "x"})
    with pytest.raises(ConfigError, match="^augment.rotate: expected float, got 'x'$"):
        AugmentPolicy.from_dict({"rotate": "x"})
    params = {"data_dir": "", "tsne_samples": "x", "seed": 0}
    with pytest.raises(ConfigError, match=r"01_eda: tsne_samples: expected int, got 'x' \("):
        notebook.check_params("01_eda", params)
    with pytest.raises(ConfigError, match=r"parameters cell: tsne_samples = 'x'"):
        notebook.check_params("01_eda", params)


def test_a_stage_schema_takes_its_types_from_the_config():
    schema = stages.STAGES["04_train_cnn"].schema
    for name in stages.STAGES["04_train_cnn"].train_fields:
        assert schema[name] == FIELDS[name]
    assert schema["n_folds"] is int and schema["data_dir"] is str  # the stage's own


def test_train_config_from_a_stage_uses_its_fields(isolated, sample_dir):
    ns = {"data_dir": str(sample_dir), "model": "fast_cnn", "epochs": 3, "batch_size": 64}
    ns |= {"lr": 0.02, "policies": "none", "seeds": 1, "val_fraction": 0.1, "device": "cpu"}
    ns |= {"precision": "bf16"}
    ns |= {"tracking": "none", "tracking_artifacts": "small", "n_folds": 0, "rows": 0}
    # 04's recipe, which 02 compares augmentation with
    ns |= {"optimizer": "sgd", "schedule": "cosine", "weight_decay": 0.01}
    ns |= {"label_smoothing": 0.0, "ema": 0.99, "tta": 1}
    stage = notebook.start("02_augmentation", {**ns, "unrelated_global": object()})
    cfg = stage.train_config(augment="affine")
    assert (cfg.model, cfg.epochs, cfg.lr, cfg.optimizer) == ("fast_cnn", 3, 0.02, "sgd")
    assert (cfg.schedule, cfg.ema, cfg.tta, cfg.label_smoothing) == ("cosine", 0.99, 1, 0.0)
    assert cfg.augment == "affine" and cfg.device == "cpu" and cfg.precision == "bf16"
    assert stage.runs_dir() == paths.outputs_dir() / "02_augmentation" / "runs"


def test_upstream_stages_follow_from_declared_reads():
    for name, spec in stages.STAGES.items():
        order = list(stages.STAGES)
        assert all(order.index(up) < order.index(name) for up in spec.upstream)
    assert stages.STAGES["03_model_zoo"].upstream == ("02_augmentation",)
    assert stages.STAGES["04_train_cnn"].upstream == ("02_augmentation", "03_model_zoo")
    assert stages.STAGES["01_eda"].upstream == ()


@pytest.mark.parametrize(
    "selector, stem",
    [("03", "03_train_cnn"), ("03_train_cnn", "03_train_cnn"), ("x/05.ipynb", "05")],
)
def test_one_selector(selector, stem):
    stems = ["01_eda", "03_train_cnn", "05"]
    assert stages.match(stems, selector) == stem


def test_the_selector_refuses_unknown_and_partial_names():
    with pytest.raises(ConfigError, match="'0' names no notebook"):
        stages.match(["01_eda", "02_aug"], "0")
    with pytest.raises(ConfigError, match="'03_train' names no notebook"):
        stages.match(["03_train_cnn"], "03_train")


def test_a_bad_value_fails_before_any_notebook_starts(isolated, sample_dir):
    """A wrong type for the last notebook must not cost the first four notebooks' minutes."""
    for overrides, match in [
        (["05_ensemble_submission.tta=abc"], "05_ensemble_submission: tta: expected int"),
        (["epochs=abc"], "02_augmentation: epochs: expected int, got 'abc'"),
    ]:
        with pytest.raises(ConfigError, match=match):
            pipeline.run_pipeline(
                profile=None,
                overrides=[f"data_dir={sample_dir}", *overrides],
                notebooks_dir=REPO / "notebooks",
                render_html=False,
            )
        assert not (paths.outputs_dir() / "pipeline.json").exists()
        assert not (paths.outputs_dir() / "notebooks").exists()


@pytest.mark.parametrize("name", sorted(p.stem for p in (REPO / "params").glob("*.yaml")))
def test_every_shipped_profile_routes_to_the_notebooks_and_checks(name):
    """A profile's keys reach notebooks that declare them, with values their stages accept."""
    from digit_utils.pipeline import profiles

    books = pipeline.discover_notebooks(REPO / "notebooks")
    declared = {p.stem: pipeline.declared_parameters(p) for p in books}
    profile = profiles.load_profile(REPO / "params" / f"{name}.yaml")
    routed = profiles.route_parameters(declared, profile, {})
    for stem, values in routed.items():
        stages.check_values(stem, values)
    assert any(routed.values())


def test_values_are_checked_up_front_as_the_notebook_checks_them():
    """The stage's own parameters by their rules, the training fields by TrainConfig's; "auto"
    where the stage reads an earlier stage's choice."""
    stages.check_values("04_train_cnn", {"model": "auto", "augment": "auto", "n_folds": 0})
    stages.check_values("02_augmentation", {"policies": " none , affine "})
    for stage, values, match in [
        ("04_train_cnn", {"epochs": 0}, "04_train_cnn: epochs: 0 is too small"),
        ("04_train_cnn", {"weight_decay": float("nan")}, "weight_decay: nan must be a finite"),
        ("04_train_cnn", {"n_folds": 1}, "n_folds: 1 must be 0"),
        ("02_augmentation", {"policies": " , "}, "names no augmentation preset"),
        ("04_train_cnn", {"augment": "bogus"}, "augment: unknown preset 'bogus'"),
        ("05_ensemble_submission", {"device": "gpu"}, "device: 'gpu' is not a device name"),
        ("05_ensemble_submission", {"pseudo_threshold": float("nan")}, "must be in \\[0, 1\\]"),
        ("01_eda", {"seed": -1}, "01_eda: seed: -1 must be ≥ 0"),
    ]:
        with pytest.raises(ConfigError, match=match):
            stages.check_values(stage, values)
    with pytest.raises(ConfigError, match="01_eda: tsne_samples: 2 must be at least 3"):
        notebook.check_params("01_eda", {"data_dir": "", "tsne_samples": 2, "seed": 0})
