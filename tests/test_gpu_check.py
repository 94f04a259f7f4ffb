"""`make gpu-check`'s script in its tiny CPU form, end to end in a subprocess: the table it writes
has the promised columns and a number wherever a figure belongs."""

from __future__ import annotations

import math
import os
import subprocess
import sys

from conftest import REPO

FIGURES = ["images/s", "s to 99.0%", "s to 99.5%", "seconds", "held-out accuracy"]
COLUMNS = ["GPU", "capability", "job", "precision", "compile", "batch", *FIGURES]


def _table(text: str) -> list[dict]:
    lines = [line for line in text.splitlines() if line.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert header == COLUMNS
    return [dict(zip(header, (c.strip() for c in line.strip("|").split("|")), strict=True))
            for line in lines[2:]]  # fmt: skip


def _number(cell: str) -> float:
    return float(cell.replace(",", ""))


def test_the_tiny_cpu_form_writes_one_table_of_numbers(tmp_path, sample_dir):
    path = os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "MPLBACKEND": "Agg", "DIGITS_ROOT": str(tmp_path), "PYTHONPATH": path}
    env.pop("DIGITS_OUTPUTS", None)
    env.pop("KAGGLE_KERNEL_RUN_TYPE", None)
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--device", "cpu",
         "--data", str(sample_dir), "--out", str(tmp_path / "bench"), "--only", "02"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    [written] = (tmp_path / "bench").glob("gpu_check-*.md")
    text = written.read_text()
    assert "CUDA tests:" in text and "skipped" in text  # no GPU here: they ran and skipped
    rows = _table(text)
    jobs = [row["job"] for row in rows]
    speed = ["train_speed fast_cnn", "train_speed deep_cnn"]
    assert jobs == [*speed, *speed, "notebook 02_augmentation"]  # recipe batch, then batch 512
    for row in rows:
        assert row["GPU"].startswith("CPU") and row["capability"] == "—"
        for column in FIGURES:  # a number, or the explicit marker of a figure that cannot exist
            cell = row[column]
            if cell not in ("—", "not reached"):
                assert math.isfinite(_number(cell)), (row["job"], column, cell)
        assert _number(row["seconds"]) > 0
    assert [row["batch"] for row in rows[:4]] == ["96", "128", "512, lr sqrt", "512, lr sqrt"]
    # the speed runs: fp32 (auto on a CPU without native bf16), no compile on a CPU
    for row in rows[:4]:
        assert (row["precision"], row["compile"]) == ("fp32", "off")
        assert _number(row["images/s"]) > 0
        assert 0 <= _number(row["held-out accuracy"]) <= 1
        # one epoch on 540 rows: 99% is out of reach, and the table says so rather than a time
        assert row["s to 99.0%"] == row["s to 99.5%"] == "not reached"
