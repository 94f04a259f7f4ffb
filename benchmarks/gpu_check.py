"""`make gpu-check`: prove the GPU path on whatever GPU this machine has, in at most 8 minutes.

Three steps, then one markdown table under outputs/benchmarks/:

1. the CUDA-marked tests (tests/test_cuda.py; they skip, with the reason, where there is no GPU);
2. train_speed's measured run of fast_cnn and deep_cnn on a 10% holdout in fp32 and the auto
   precision, compiled (``compile="forward"``) in the auto precision, and at batch 512 with the
   learning rate scaled by sqrt(512/128); deep_cnn also with the whole step compiled
   (``compile="step"``) and replayed as CUDA graphs (``"graphs"``): VARIANTS below;
3. a scaled-down full-profile chain: every notebook through `digits pipeline`'s runner (the real
   code paths, the device pool over every GPU), with a small profile of its own (FORMS below).

The data is the competition's files as `data.locate` finds them (``--data`` or DIGITS_DATA_DIR,
e.g. the replica zip copied to data/replica/). ``--device cpu`` is the tiny form the test suite
runs: a few hundred rows, one epoch, no compile (on a CPU it needs a C++ toolchain and tens of
seconds), so only the eager variants. Its five notebooks still take about two minutes on a
2-core CPU (kernel start, imports, figures), so the suite's test runs the chain with
``--only 02`` and leaves all five to tests/test_notebooks.py. It keeps the script working where
there is no GPU:

    make gpu-check                                   # on a GPU machine
    python benchmarks/gpu_check.py --device cpu      # tiny, on a CPU
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import torch

from digit_utils import data, paths, pipeline
from digit_utils.train import devices

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_speed import RECIPES, measure  # noqa: E402  (a sibling script, not a package)

REPO = Path(__file__).resolve().parents[1]
LIMIT_S = 480  # the promise: the whole check in at most 8 minutes on a GPU
MODELS = ("fast_cnn", "deep_cnn")
# Per form: rows of train.csv / test.csv (None: all), epochs of each speed run, and the chain's
# profile. The GPU chain is the full profile's graph (zoo on 04's folds, refit, pseudo-label
# second round) with fewer models, folds and epochs; the CPU one is the notebook test's tiny run.
FORMS = {
    "gpu": {
        "rows": (None, None),
        "epochs": {"fast_cnn": 2, "deep_cnn": 6},
        "chain": {
            "01_eda": {"tsne_samples": 2000},
            "02_augmentation": {"model": "fast_cnn", "epochs": 2, "n_folds": 2, "seeds": 1,
                                "policies": "none, affine"},
            "03_model_zoo": {"models": "fast_cnn, deep_cnn", "epochs": 2, "n_folds": 2},
            "04_train_cnn": {"epochs": 3, "n_folds": 2, "seeds": 1, "tta": 1, "refit": True},
            "05_ensemble_submission": {"tta": 1, "cv_folds": 3, "pseudo_threshold": 0.995},
        },
    },
    "cpu": {
        "rows": (600, 200),
        "epochs": {"fast_cnn": 1, "deep_cnn": 1},
        "chain": {
            "01_eda": {"tsne_samples": 150},
            "02_augmentation": {"model": "fast_cnn", "epochs": 1, "n_folds": 2, "seeds": 1,
                                "policies": "none, affine"},
            "03_model_zoo": {"models": "simple_cnn, fast_cnn", "epochs": 1, "n_folds": 2},
            "04_train_cnn": {"epochs": 1, "n_folds": 2, "seeds": 1, "tta": 0, "refit": True},
            # after one epoch on 300 rows no model is sure of much: a low bar keeps round two
            "05_ensemble_submission": {"tta": 0, "cv_folds": 2, "pseudo_threshold": 0.15},
        },
    },
}  # fmt: skip
# The speed runs: (label, models, settings over the recipe). "auto" is this device's precision.
# Four compiled runs as before (each compile costs tens of seconds): the step and graphs modes
# on deep_cnn only, the net the launch counts are about. Every option here is unmeasured on a
# GPU until this check has run on one; none is a default.
LARGE_BATCH = {"batch_size": 512, "lr_scaling": "sqrt"}
VARIANTS = (
    (MODELS, {"precision": "fp32"}),
    (MODELS, {"precision": "auto"}),
    (MODELS, {"precision": "auto", "compile": "forward"}),
    (("deep_cnn",), {"precision": "auto", "compile": "step"}),
    (("deep_cnn",), {"precision": "auto", "compile": "graphs"}),
    (MODELS, {"precision": "auto", **LARGE_BATCH}),
)
COLUMNS = ["GPU", "capability", "job", "precision", "compile", "batch", "images/s", "s to 99.0%",
           "s to 99.5%", "seconds", "held-out accuracy"]  # fmt: skip
FIGURES = COLUMNS[6:]
NOT_APPLICABLE, NOT_REACHED = "—", "not reached"


def machine(device: torch.device) -> tuple[str, str]:
    """(name, compute capability) of the device; the CPU's name and "—" without a GPU."""
    if device.type == "cuda":
        count = torch.cuda.device_count()
        name = torch.cuda.get_device_name(device) + (f" ×{count}" if count > 1 else "")
        return name, "{}.{}".format(*devices.capability(device))
    cpu = platform.processor() or platform.machine()
    return f"CPU ({cpu}, {os.cpu_count()} cores)", NOT_APPLICABLE


def cuda_tests() -> tuple[str, bool]:
    """Run the CUDA-marked tests in a subprocess: their pytest summary line, and whether none
    failed (all skipped, on a machine without a GPU, is not a failure)."""
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-m", "cuda", "-p", "no:cacheprovider", "-rs",
         str(REPO / "tests" / "test_cuda.py")],
        cwd=REPO, capture_output=True, text=True, check=False,
    )  # fmt: skip
    lines = [
        line
        for line in done.stdout.splitlines()
        if re.search(r"\d+ (passed|skipped|failed)", line)
    ]
    summary = lines[-1].strip("= ") if lines else "no summary"
    return f"{summary} (exit status {done.returncode})", done.returncode == 0


def figure(value, *, reached: bool = False) -> str:
    """A table cell: the number, "not reached" for a threshold never met, "—" when absent."""
    if value is None:
        return NOT_APPLICABLE
    if isinstance(value, float) and math.isnan(value):
        return NOT_REACHED if reached else NOT_APPLICABLE
    return f"{value:.4f}" if isinstance(value, float) and value < 1 else f"{value:,.1f}"


def batch_cell(recipe: dict) -> str:
    """The batch size, and how the learning rate was scaled to it when it was."""
    scaling = recipe.get("lr_scaling", "none")
    return str(recipe["batch_size"]) + (f", lr {scaling}" if scaling != "none" else "")


def speed_plan(device: torch.device) -> list[tuple[str, dict]]:
    """(model, settings) of each speed run on ``device``, in VARIANTS' order, without repeats
    (on a CPU "auto" is fp32) and without compiling off CUDA."""
    auto = devices.resolve_precision("auto", device)
    plan = []
    for models, settings in VARIANTS:
        settings = {**settings, "precision": settings["precision"].replace("auto", auto)}
        if device.type != "cuda" and settings.get("compile", "off") != "off":
            continue
        plan += [(m, settings) for m in models if (m, settings) not in plan]
    return plan


def speed_rows(form: dict, device: torch.device, images, labels, tmp: Path) -> list[dict]:
    """One measured run per entry of speed_plan, a row each."""
    rows = []
    for model, settings in speed_plan(device):
        recipe = {**RECIPES[model], "epochs": form["epochs"][model], **settings}
        r = measure(model, 0, recipe, str(device), images, labels, tmp)
        rows.append({
            "job": f"train_speed {model}", "precision": r["precision"],
            "compile": recipe.get("compile", "off"), "batch": batch_cell(recipe),
            "images/s": r["images_per_s"], "s to 99.0%": r["s_to_99"],
            "s to 99.5%": r["s_to_99.5"], "seconds": r["train_s"],
            "held-out accuracy": r["final_acc"],
        })  # fmt: skip
    return rows


def chain_rows(
    form: dict, device: torch.device, source: Path, tmp: Path, only: str | None = None
) -> list[dict]:
    """Every notebook (or ``only`` these) in order through the pipeline runner; a row each."""
    profile = tmp / "gpu_check.yaml"
    where = "auto" if device.type == "cuda" else "cpu"  # auto: every GPU through the pool
    profile.write_text(json.dumps({"device": where, "data_dir": str(source), **form["chain"]}))
    out = tmp / "outputs"
    record = pipeline.run_pipeline(
        profile=str(profile),
        only=only,
        notebooks_dir=REPO / "notebooks",
        outputs=out,
        render_html=False,
    )
    ran = [entry for entry in record["notebooks"] if entry["status"] == "ok"]
    if not ran:
        raise SystemExit(f"gpu-check: no notebook ran (notebooks in {REPO / 'notebooks'}?)")
    rows = []
    for entry in ran:
        metrics = json.loads((out / entry["name"] / "metrics.json").read_text())["metrics"]
        rows.append({
            "job": f"notebook {entry['name']}", "precision": "auto", "compile": "off",
            "batch": "profile's",
            "seconds": float(entry["seconds"]),
            # 05's out-of-fold accuracy: every labelled row scored by models that never saw it
            "held-out accuracy": metrics.get("cv_accuracy"),
        })  # fmt: skip
    return rows


def table(rows: list[dict], gpu: str, capability: str) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + " --- |" * len(COLUMNS)]
    for row in rows:
        cells = [gpu, capability, row["job"], row["precision"], row["compile"], row["batch"]]
        cells += [figure(row.get(c), reached=c.startswith("s to")) for c in FIGURES]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="auto (the GPU), cuda, cuda:1 or cpu")
    parser.add_argument(
        "--data",
        default=os.environ.get("DIGITS_DATA_DIR"),
        help="folder or zip with the competition files (default: data.locate)",
    )
    parser.add_argument(
        "--out", type=Path, default=None, help="folder of the table (default outputs/benchmarks)"
    )
    parser.add_argument(
        "--only", default=None, help="only these notebooks of the chain, e.g. 02 (default: all)"
    )
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    device = devices.resolve_device(args.device)
    form = FORMS["gpu" if device.type == "cuda" else "cpu"]
    gpu, capability = machine(device)
    print(f"gpu-check on {gpu} (capability {capability}), torch {torch.__version__}", flush=True)
    tests, tests_ok = cuda_tests()
    print(f"CUDA tests: {tests}", flush=True)
    with tempfile.TemporaryDirectory(prefix="gpu_check-") as tmp:
        tmp = Path(tmp)
        source = data.locate(args.data)
        n_train, n_test = form["rows"]
        if n_train is not None:
            source = data.DataSource(
                data.copy_subset(source, tmp / "data", n_train, n_test), "subset"
            )
        images, labels = data.load_train(source)
        rows = speed_rows(form, device, images, labels, tmp)
        rows += chain_rows(form, device, source.path, tmp, args.only)
    seconds = time.perf_counter() - t0
    verdict = "within" if seconds <= LIMIT_S else "OVER"
    header = (
        f"# gpu-check, {datetime.now():%Y-%m-%d %H:%M}\n\n"
        f"{gpu}, capability {capability}; torch {torch.__version__}; {len(labels):,} training "
        f"rows; {seconds:.0f} s in all ({verdict} the {LIMIT_S} s limit). CUDA tests: {tests}. "
        "Held-out accuracy: the final epoch on a 10% holdout (train_speed), the submitted "
        "ensemble out of fold (05). Seconds: training only (train_speed), the whole notebook "
        "(chain).\n\n"
    )
    folder = args.out or paths.outputs_dir() / "benchmarks"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"gpu_check-{datetime.now():%Y%m%d-%H%M%S}.md"
    path.write_text(header + table(rows, gpu, capability))
    print(path.read_text())
    print(f"wrote {path}")
    if device.type == "cuda" and "T4" in gpu:  # the budget's cost table wants these figures
        fp16 = {r["job"].split()[-1]: round(r["images/s"]) for r in rows
                if r["job"].startswith("train_speed") and r["precision"] == "fp16"
                and r["compile"] == "off" and "lr" not in r["batch"]}  # fmt: skip
        print(f"measured on a T4, for digit_utils/gpu_cost.py MEASURED_T4: {fp16}")
    if not tests_ok:
        raise SystemExit(f"gpu-check: the CUDA tests failed: {tests}")
    return path


if __name__ == "__main__":
    main()
