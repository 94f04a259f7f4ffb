"""The GPU budget of a pipeline run, before anything is pushed: each stage's training work (runs
× epochs × rows per architecture, from its parameters and the stage graph) and a range of T4
GPU-hours, against Kaggle's 12-hour session and ~30-hour weekly quota.

The cost of an architecture is its images/s on a T4 (the table is :mod:`digit_utils.gpu_cost`'s,
which 05 reads too to fit its second round into ``max_gpu_hours``). None is measured on a GPU yet
(``MEASURED_T4`` is empty): until then it is derived from the model's forward FLOPs and layer
count (``MODEL_COST``) under stated assumptions, and the plan says so. The estimate counts
training and the per-epoch evaluation only (a forward pass costs a third of a training step);
inference, TTA, t-SNE and kernel start-up are not counted.

Just over 300 lines: each stage's work (03's screening at its worst, 05's cap), the selection
of stages and the plan's report are one calculation, read together.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from digit_utils import screening, stages
from digit_utils.data.checks import EXPECTED_ROWS
from digit_utils.gpu_cost import MEASURED_T4, MODEL_COST, t4_images_per_s  # noqa: F401

SESSION_HOURS = 12.0  # Kaggle stops a kernel's session after 12 hours
WEEKLY_QUOTA_HOURS = 30.0  # Kaggle's weekly GPU quota (about 30 h; it varies a little)
KAGGLE_GPUS = 2  # T4 ×2: the device pool trains two independent runs at once


def costs_of(model: str) -> tuple[float, int]:
    """``(forward MFLOPs per image, layers)`` of a registered model, counted now (slow for the
    big ones): what ``MODEL_COST`` holds."""
    import torch  # here: the plan itself reads the table and never loads torch for it
    from torch.utils.flop_counter import FlopCounterMode

    from digit_utils.train.models import build_model

    net = build_model(model).eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        net(torch.zeros(1, 1, 28, 28))
    layers = sum(1 for m in net.modules() if not list(m.children()))
    return counter.get_total_flops() / 1e6, layers


@dataclass(frozen=True)
class Work:
    """Training runs of one architecture (or a choice among several) in one stage."""

    stage: str
    models: tuple[str, ...]  # one, or the candidates when the stage picks at run time
    runs: tuple[int, int]  # (fewest, most): a stage whose members depend on the data varies
    epochs: int
    train_rows: int  # training rows per run and epoch (extra rows included)
    eval_rows: int  # validation rows per run and epoch
    batch_size: int
    what: str

    def gpu_seconds(self) -> tuple[float, float]:
        """(low, high) T4 GPU-seconds: the fewest runs of the cheapest candidate at the fast
        assumption, the most runs of the dearest at the slow one."""
        rates = [t4_images_per_s(m, self.batch_size) for m in self.models]
        images = self.epochs * (self.train_rows + self.eval_rows / 3)  # a forward is 1/3 step
        return (
            self.runs[0] * images / max(r[0] for r in rates),
            self.runs[1] * images / min(r[1] for r in rates),
        )

    def describe(self, models: Sequence[str] | None = None) -> str:
        """One line; ``models`` names several architectures that each do this work."""
        lo, hi = self.runs
        runs = f"{lo}" if lo == hi else f"{lo}–{hi}"
        if models:
            name, runs = ", ".join(models), f"{runs} runs each"
        else:
            many = f"one of {len(self.models)} models"
            name, runs = (self.models[0] if len(self.models) == 1 else many), f"{runs} runs"
        return (
            f"{name}: {runs} × {self.epochs} epochs × {self.train_rows:,} rows "
            f"(+{self.eval_rows:,} evaluated) — {self.what}"
        )


def _lines(work: Sequence[Work]) -> list[str]:
    """One line per kind of work: architectures doing the same work share a line."""
    groups: dict[tuple, list[Work]] = {}
    for w in work:
        key = (w.runs, w.epochs, w.train_rows, w.eval_rows, w.what, len(w.models) == 1)
        groups.setdefault(key, []).append(w)
    return [
        ws[0].describe([w.models[0] for w in ws]) if len(ws) > 1 else ws[0].describe()
        for ws in groups.values()
    ]


def _split_rows(params: Mapping, n: int) -> tuple[int, int, int]:
    """(runs per variant, training rows, validation rows) of one k-fold or holdout split."""
    k = int(params["n_folds"])
    if k >= 2:
        return k, n - n // k, n // k
    val = round(n * float(params["val_fraction"]))
    return 1, n - val, val


def _sampled(params: Mapping, n: int) -> int:
    """The labelled rows a comparison stage uses: its stratified sample (``rows``) or all."""
    sample = int(params.get("rows") or 0)
    return min(sample, n) if sample else n


def _names(text: str, every: Sequence[str]) -> tuple[str, ...]:
    names = [n.strip() for n in str(text).split(",") if n.strip()]
    return tuple(every) if names == ["all"] else tuple(names)


def stage_work(params: Mapping[str, Mapping], every_model: Sequence[str]) -> list[Work]:
    """The training work of each stage, from every stage's full parameters ``{stem: {name:
    value}}`` (notebook defaults with the profile's values over them)."""
    n, n_test = EXPECTED_ROWS["train"], EXPECTED_ROWS["test"]
    work = []
    if p := params.get("02_augmentation"):
        folds, rows, val = _split_rows(p, _sampled(p, n))
        policies = _names(p["policies"], [])
        runs = len(policies) * int(p["seeds"]) * folds
        work.append(Work("02_augmentation", (p["model"],), (runs, runs), int(p["epochs"]), rows,
                         val, int(p["batch_size"]), f"{len(policies)} policies"))  # fmt: skip
    zoo = params.get("03_model_zoo")
    zoo_models = _names(zoo["models"], every_model) if zoo else ()
    if zoo:
        work += _screen_work(zoo, zoo_models, _sampled(zoo, n))
        finalists = [w.models[0] for w in work if w.what.startswith(LAST_RUNG)]
    main = params.get("04_train_cnn")
    if main:
        models = (main["model"],) if main["model"] != "auto" else zoo_models or tuple(every_model)
        picked = "" if len(models) == 1 else " (model=auto: 03's choice)"
        folds, rows, val = _split_rows(main, n)
        seeds, epochs, batch = int(main["seeds"]), int(main["epochs"]), int(main["batch_size"])
        work.append(Work("04_train_cnn", models, (seeds * folds,) * 2, epochs, rows, val, batch,
                         f"{seeds} seed(s) × {folds} fold(s){picked}"))  # fmt: skip
        if main["refit"]:
            work.append(Work("04_train_cnn", models, (seeds, seeds), epochs, n, 0, batch,
                             "refits on every labelled row"))  # fmt: skip
    last_stage = "05_ensemble_submission"
    last = params.get(last_stage)
    if last and main and float(last["pseudo_threshold"]) > 0:
        # every member retrained with its own recipe plus the test rows its teachers are sure
        # of: counted as all of them (the most there can be)
        what = "second round, + every test row as pseudo-labels"
        work.append(Work(last_stage, models, (seeds * folds,) * 2, epochs,
                         rows + n_test, val, batch, f"{what}: 04's runs"))  # fmt: skip
        # the zoo's runs join only on 04's folds of every row (never from a sample)
        if zoo and int(zoo["n_folds"]) == int(main["n_folds"]) >= 2 and _sampled(zoo, n) == n:
            z_folds, z_rows, z_val = _split_rows(zoo, n)
            for model in finalists:  # a zoo model joins only when 04's best does not beat it
                work.append(Work(last_stage, (model,), (0, z_folds),
                                 int(zoo["epochs"]), z_rows + n_test, z_val,
                                 int(zoo["batch_size"]),
                                 f"{what}: the zoo's ties (its last rung at worst)"))  # fmt: skip
        cap = float(last["max_gpu_hours"])  # 05 retrains fewer members past it, best first
        if sum(w.gpu_seconds()[1] for w in work if w.stage == last_stage) > cap * 3600:
            work = [replace(w, what=f"{w.what}; at most {cap:g} GPU-h in all (max_gpu_hours)")
                    if w.stage == last_stage else w for w in work]  # fmt: skip
    return work


def epoch_seconds(models: Sequence[str], params: Mapping, n: int) -> dict[str, float]:
    """``{model: T4 GPU-seconds}`` of one epoch of one fold's run on ``n`` labelled rows at the
    slow assumption: the costs 03's screening pays its ``max_gpu_hours`` from."""
    _, rows, val = _split_rows(params, n)
    one = {m: Work("", (m,), (1, 1), 1, rows, val, int(params["batch_size"]), "") for m in models}
    return {m: w.gpu_seconds()[1] for m, w in one.items()}


def zoo_schedule(params: Mapping, models: Sequence[str], n: int):
    """03's rungs, the T4 seconds per model-epoch and the budget in seconds, from its params."""
    rungs = screening.schedule(
        len(models), min_epochs=int(params["min_epochs"]), eta=int(params["eta"]),
        epochs=int(params["epochs"]), n_folds=int(params["n_folds"]),
    )  # fmt: skip
    return rungs, epoch_seconds(models, params, n), float(params["max_gpu_hours"]) * 3600


LAST_RUNG = "screening's last rung"


def _screen_work(zoo: Mapping, models: Sequence[str], n: int) -> list[Work]:
    """03's screening at worst: every model at rung 0, then the dearest promoted at each rung,
    as many as ties and ``max_gpu_hours`` allow (``screening.worst_case``)."""
    _, rows, val = _split_rows(zoo, n)
    rungs, seconds, max_s = zoo_schedule(zoo, models, n)
    at, _ = screening.worst_case(models, rungs, seconds, max_s)
    work = []
    for rung, group in zip(rungs, at, strict=True):
        runs = (rung.folds,) * 2 if rung.index == 0 else (0, rung.folds)
        name = LAST_RUNG if rung.index == len(rungs) - 1 else f"screening rung {rung.index}"
        what = name + (
            ": every model" if rung.index == 0 else " (worst case: the dearest promoted)"
        )
        work += [Work("03_model_zoo", (m,), runs, rung.epochs, rows, val,
                      int(zoo["batch_size"]), what) for m in group]  # fmt: skip
    return work


@dataclass(frozen=True)
class Plan:
    work: list[Work]
    parameters: dict[str, dict]

    def stage_hours(self) -> dict[str, tuple[float, float]]:
        """{stage: (low, high) T4 GPU-hours}, in pipeline order."""
        hours: dict[str, list[float]] = {}
        for w in self.work:
            low, high = w.gpu_seconds()
            total = hours.setdefault(w.stage, [0.0, 0.0])
            total[0] += low / 3600
            total[1] += high / 3600
        # a stage with a GPU budget (05's max_gpu_hours) trains no more than it allows
        caps = {s: float(self.parameters.get(s, {}).get("max_gpu_hours", "inf")) for s in hours}
        return {s: (min(h[0], caps[s]), min(h[1], caps[s])) for s, h in hours.items()}

    def session_hours(self) -> dict[str, tuple[float, float]]:
        """{stage: (low, high) hours of its Kaggle session}: its runs shared by two T4s."""
        return {
            s: (lo / KAGGLE_GPUS, hi / KAGGLE_GPUS) for s, (lo, hi) in self.stage_hours().items()
        }

    def warnings(self) -> list[str]:
        out = []
        if zoo := self.parameters.get("03_model_zoo"):
            models = _names(zoo["models"], sorted(MODEL_COST))
            rungs, seconds, max_s = zoo_schedule(
                zoo, models, _sampled(zoo, EXPECTED_ROWS["train"])
            )
            if screening.worst_case(models, rungs, seconds, max_s)[1]:
                out.append(f"03_model_zoo: max_gpu_hours={zoo['max_gpu_hours']:g} may promote "
                           "fewer models than a rung keeps when the dearest lead")  # fmt: skip
        for stage, (_, high) in self.session_hours().items():
            if high > SESSION_HOURS:
                out.append(
                    f"{stage} may need {high:.1f} h of session, over Kaggle's "
                    f"{SESSION_HOURS:g}-hour limit: fewer epochs, folds or models"
                )
        total = sum(hi for _, hi in self.session_hours().values())
        if total > WEEKLY_QUOTA_HOURS:
            out.append(f"the whole run may need {total:.1f} h of T4×2 sessions, over the weekly "
                       f"GPU quota of about {WEEKLY_QUOTA_HOURS:g} h")  # fmt: skip
        return out

    def report(self) -> str:
        models = sorted({m for w in self.work for m in w.models})
        how = {t4_images_per_s(m)[2] for m in models}
        lines = [
            f"GPU budget: {EXPECTED_ROWS['train']:,} training rows, {EXPECTED_ROWS['test']:,} "
            f"test rows; a T4×2 kernel trains two runs at once.",
            "Cost per architecture (T4 images/s, batch 128): "
            + ("measured by make gpu-check" if how == {"measured"} else
               "DERIVED FROM FLOPs, not measured on a GPU yet (gpu_cost.MODEL_COST)")
            + ": " + ", ".join(
                f"{m} {t4_images_per_s(m)[1]:,.0f}–{t4_images_per_s(m)[0]:,.0f}" for m in models
            ),
            "",
        ]  # fmt: skip
        sessions = self.session_hours()
        for stage, (low, high) in self.stage_hours().items():
            s_low, s_high = sessions[stage]
            lines.append(f"{stage}: {low:.2f}–{high:.2f} GPU-h, {s_low:.2f}–{s_high:.2f} h of "
                         "session")  # fmt: skip
            lines += [f"    {line}" for line in _lines([w for w in self.work if w.stage == stage])]
        trained = set(self.stage_hours())
        idle = [s for s in self.parameters if s not in trained]
        if idle:
            lines.append(f"no training: {', '.join(idle)}")
        total = [sum(h[i] for h in sessions.values()) for i in (0, 1)]
        lines.append(
            f"total: {total[0]:.1f}–{total[1]:.1f} h of T4×2 sessions (limits: "
            f"{SESSION_HOURS:g} h a session, ~{WEEKLY_QUOTA_HOURS:g} h a week)"
        )
        lines += [f"WARNING: {w}" for w in self.warnings()]
        return "\n".join(lines)


def full_parameters(declared: Mapping[str, Mapping], given: Mapping[str, Mapping]) -> dict:
    """``{stem: {name: value}}``: each notebook's parameters cell defaults, ``given`` over them."""
    from digit_utils.pipeline.profiles import parse_value

    return {
        stem: {**{k: parse_value(d["default"]) for k, d in cell.items()}, **given.get(stem, {})}
        for stem, cell in declared.items()
    }


def plan_budget(
    notebooks_dir: str | Path | None = None,
    profile: str | Path | None = None,
    overrides=None,
    only: str | None = None,
    start: str | None = None,
) -> Plan:
    """The budget of running the notebooks with ``profile`` and ``overrides`` (None: the
    notebooks' own defaults, what a Kaggle kernel runs): every notebook, or those ``only`` and
    ``start`` select as ``digits pipeline`` would (their work still reads the others' settings,
    e.g. 04's ``model=auto`` is any of 03's models)."""
    from digit_utils.pipeline.request import discover_notebooks, plan
    from digit_utils.train.models import list_models

    found = discover_notebooks(notebooks_dir)
    request = plan(found, profile, None, None, overrides)
    params = full_parameters(request.declared, request.parameters)
    params = {s: p for s, p in params.items() if s in stages.STAGES}
    chosen = {p.stem for p in plan(found, profile, only, start, overrides).selected}
    work = [w for w in stage_work(params, list_models()) if w.stage in chosen]
    return Plan(work, {s: p for s, p in params.items() if s in chosen})
