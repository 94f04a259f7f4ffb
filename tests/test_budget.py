"""The GPU budget before a push: each stage's work from the notebooks' parameters and the stage
graph, T4 hours from the cost table, and the warnings against Kaggle's limits."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from conftest import REPO
from digit_utils import cli
from digit_utils.pipeline import budget
from digit_utils.train.models import build_model, list_models

SHIPPED = sorted(p.stem for p in (REPO / "params").glob("*.yaml"))  # every profile we ship

# What the T4 estimate assumes, restated here: (TFLOP/s, µs per launch) fast and slow; a
# training step is 3 forward passes; launches are 6 per layer plus 40 per step.
FAST, SLOW = (16e12, 10e-6), (6e12, 20e-6)


def _flops_and_layers(name: str) -> tuple[float, int]:
    net = build_model(name).eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        net(torch.zeros(1, 1, 28, 28))
    return counter.get_total_flops(), sum(1 for m in net.modules() if not list(m.children()))


def _rate(name: str, flops_per_s: float, launch_s: float, batch: int = 128) -> float:
    flops, layers = _flops_and_layers(name)
    step = max(3 * flops * batch / flops_per_s, (6 * layers + 40) * launch_s)
    return batch / step


def _plan(profile: str, overrides=None) -> budget.Plan:
    """The repository's notebooks and profile (each test has its own empty project root)."""
    path = REPO / "params" / f"{profile}.yaml"
    return budget.plan_budget(REPO / "notebooks", profile=path, overrides=overrides)


@pytest.fixture(scope="module")
def full():
    return _plan("full")


def test_every_registered_model_has_a_cost_and_the_cheap_ones_match_a_fresh_count():
    assert sorted(budget.MODEL_COST) == sorted(list_models())
    for name in ("simple_cnn", "fast_cnn", "deep_cnn"):
        flops, layers = _flops_and_layers(name)
        mflops, table_layers = budget.MODEL_COST[name]
        assert mflops == pytest.approx(flops / 1e6, rel=1e-3) and table_layers == layers


def test_the_full_profile_plan_counts_02s_work_and_hours_independently(full):
    # 02's defaults: fast_cnn, 5 policies × 1 seed × 5 folds, 04's 30 epochs on 4/5 of 42,000
    [work] = [w for w in full.work if w.stage == "02_augmentation"]
    assert (work.models, work.runs, work.epochs) == (("fast_cnn",), (25, 25), 30)
    assert (work.train_rows, work.eval_rows) == (33_600, 8_400)
    images = 25 * 30 * (33_600 + 8_400 / 3)  # an evaluated image costs a third of a step
    low, high = full.stage_hours()["02_augmentation"]
    assert low == pytest.approx(images / _rate("fast_cnn", *FAST) / 3600, rel=1e-3)
    assert high == pytest.approx(images / _rate("fast_cnn", *SLOW) / 3600, rel=1e-3)
    # 04: 3 seeds × 5 folds and 3 refits on every row, 30 epochs, model auto: any zoo model
    main = [w for w in full.work if w.stage == "04_train_cnn"]
    assert [(w.runs, w.epochs, w.train_rows) for w in main] == [
        ((15, 15), 30, 33_600),
        ((3, 3), 30, 42_000),
    ]
    assert set(main[0].models) == set(list_models())
    # 05's second round: 04's 15 runs, plus up to 5 folds of each model of the zoo's last rung
    # (at its worst), with the test rows
    second = [w for w in full.work if w.stage == "05_ensemble_submission"]
    assert second[0].runs == (15, 15) and second[0].train_rows == 33_600 + 28_000
    last_rung = [w.models for w in full.work if w.stage == "03_model_zoo" and w.epochs == 30]
    assert {w.runs for w in second[1:]} == {(0, 5)} and [w.models for w in second[1:]] == last_rung


def test_the_report_says_the_costs_are_flop_derived_and_warns_past_kaggles_limits(full):
    text = full.report()
    assert "DERIVED FROM FLOPs, not measured on a GPU" in text
    assert "fast_cnn: 25 runs × 30 epochs × 33,600 rows" in text
    sessions = full.session_hours()
    assert sessions["02_augmentation"][1] == pytest.approx(
        full.stage_hours()["02_augmentation"][1] / 2
    )
    over = [s for s, (_, hi) in sessions.items() if hi > 12]
    assert [w for w in full.warnings() if "12-hour" in w] == [
        w for w in full.warnings() if w.split()[0] in over
    ]
    assert "05_ensemble_submission" not in over  # its max_gpu_hours keeps it within a session
    # without that cap, wrn28_10 as 04's choice and every zoo tie retrained: past a session
    roomy = _plan("full", overrides={"05_ensemble_submission": {"max_gpu_hours": 1000.0}})
    assert any(w.startswith("05_ensemble_submission may need") for w in roomy.warnings())
    calm = _plan("cpu")
    assert calm.warnings() == [] and "WARNING" not in calm.report()
    long = _plan("cpu", overrides={"02_augmentation": {"epochs": 400_000}})
    assert any(w.startswith("02_augmentation may need") for w in long.warnings())


def test_the_plan_flags_print_and_run_nothing(capsys, monkeypatch):
    monkeypatch.setenv("DIGITS_ROOT", str(REPO))  # the repository's notebooks; nothing is written
    assert cli.main(["pipeline", "--plan", "--profile", "full"]) == 0
    assert "03_model_zoo:" in capsys.readouterr().out
    assert cli.main(["kaggle", "kernel", "push", "--plan"]) == 0  # no credentials needed
    out = capsys.readouterr().out
    assert "total:" in out and "h of T4×2 sessions" in out


@pytest.mark.parametrize("profile", SHIPPED)
def test_02_and_03_choose_with_the_recipe_04_trains_with_in_every_profile(profile):
    # a choice made at another budget picks the wrong option (augmentation loses at 1 epoch)
    params = _plan(profile).parameters
    main = params["04_train_cnn"]
    recipe = ("epochs", "batch_size", "optimizer", "lr", "schedule", "weight_decay",
              "label_smoothing", "ema", "precision")  # fmt: skip
    for stem in ("02_augmentation", "03_model_zoo"):
        assert {k: params[stem][k] for k in recipe} == {k: main[k] for k in recipe}, stem
    assert params["02_augmentation"]["tta"] == main["tta"]
    # 04 follows the zoo's choice
    assert main["model"] == "auto"


def test_05s_second_round_is_capped_by_its_max_gpu_hours(full):
    hours = lambda plan: sum(w.gpu_seconds()[1] for w in plan.work  # noqa: E731
                             if w.stage == "05_ensemble_submission") / 3600  # fmt: skip
    cap = full.parameters["05_ensemble_submission"]["max_gpu_hours"]
    assert hours(full) > cap  # a dear zoo model could join: the uncapped work passes the budget
    assert full.stage_hours()["05_ensemble_submission"][1] == cap
    assert f"at most {cap:g} GPU-h in all (max_gpu_hours)" in full.report()
    roomy = _plan("full", overrides={"05_ensemble_submission": {"max_gpu_hours": 1000.0}})
    assert roomy.stage_hours()["05_ensemble_submission"][1] == pytest.approx(hours(roomy))
    assert "GPU-h in all (max_gpu_hours)" not in roomy.report()  # 05 is not capped


def test_the_plan_of_selected_notebooks_counts_only_their_work():
    full = REPO / "params" / "full.yaml"
    only = budget.plan_budget(REPO / "notebooks", profile=full, only="04")
    assert {w.stage for w in only.work} == {"04_train_cnn"} and list(only.parameters) == [
        "04_train_cnn"
    ]
    assert set(only.work[0].models) == set(list_models())  # model=auto: any of 03's, all of them
    later = budget.plan_budget(REPO / "notebooks", profile=full, start="04")
    assert {w.stage for w in later.work} == {"04_train_cnn", "05_ensemble_submission"}
    whole = _plan("full")
    assert later.stage_hours()["04_train_cnn"] == whole.stage_hours()["04_train_cnn"]
