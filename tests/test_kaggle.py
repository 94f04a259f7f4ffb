"""`digits kaggle ...` against a fake `kaggle` executable: exact command lines, clear errors."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from digit_utils import cli, paths, stages
from digit_utils.errors import KaggleError
from digit_utils.kaggle import kernels, remote
from digit_utils.kaggle import push as kernel_push

KEY = "s3cr3t-key-value"  # what FakeKaggle.login puts in KAGGLE_KEY


def digits(*argv: str, capsys) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def write_submission(path: Path, rows: int = 28_000, edit=None) -> Path:
    lines = ["ImageId,Label", *(f"{i},{i % 10}" for i in range(1, rows + 1))]
    if edit:
        lines = edit(lines)
    path.write_text("\n".join(lines) + "\n")
    return path


def notebooks(root: Path, *stems: str) -> Path:
    """Small notebooks in the project's notebooks/ folder."""
    for stem in stems:
        nb = nbformat.v4.new_notebook()
        nb.cells = [nbformat.v4.new_code_cell("print('hello')")]
        (root / "notebooks").mkdir(exist_ok=True)
        nbformat.write(nb, root / "notebooks" / f"{stem}.ipynb")
    return root / "notebooks"


def assert_no_secret(*texts: str, tree: Path) -> None:
    for text in texts:
        assert KEY not in text
    for path in tree.rglob("*"):
        if path.is_file():
            assert KEY.encode() not in path.read_bytes(), path


# --------------------------------------------------------------------------------------------
# submit / submissions


def test_submit_validates_then_calls_the_cli(fake_kaggle, tmp_path, capsys):
    fake_kaggle.login()
    path = write_submission(tmp_path / "submission.csv")
    code, out, err = digits("kaggle", "submit", str(path), "-m", "cnn ensemble", capsys=capsys)
    assert (code, err) == (0, "")
    assert "Successfully submitted" in out
    assert fake_kaggle.calls == [
        ["competitions", "submit", "digit-recognizer", "-f", str(path), "-m", "cnn ensemble"]
    ]


def _swap(lines, i, j):
    lines[i], lines[j] = lines[j], lines[i]
    return lines


@pytest.mark.parametrize(
    ("edit", "rows", "reason"),
    [
        (lambda lines: ["imageid,label", *lines[1:]], 28_000, "header is 'imageid,label'"),
        (lambda lines: ["Label,ImageId", *lines[1:]], 28_000, "expected exactly 'ImageId,Label'"),
        (None, 27_999, "has 27,999 rows, expected 28,000"),
        (None, 1_000, "has 1,000 rows, expected 28,000"),  # the offline sample's size
        (lambda lines: _swap(lines, 5, 6), 28_000, "row 5 (line 6), column 'ImageId'"),
        (lambda lines: [*lines[:9], "9,10", *lines[10:]], 28_000, "label 10 is outside 0–9"),
        (lambda lines: [*lines[:3], "", *lines[3:]], 28_000, "row 3 (line 4): blank line"),
        (lambda lines: [*lines[:3], "3,", *lines[4:]], 28_000, "column 'Label': empty cell"),
        (lambda lines: [*lines[:3], "3,seven", *lines[4:]], 28_000, "'seven' is not an integer"),
    ],
)
def test_submit_refuses_an_invalid_file_before_any_call(
    fake_kaggle, tmp_path, capsys, edit, rows, reason
):
    fake_kaggle.login()
    path = write_submission(tmp_path / "submission.csv", rows, edit)
    code, out, err = digits("kaggle", "submit", str(path), "-m", "x", capsys=capsys)
    assert code == 1 and out == ""
    assert err.startswith(f"error: {path}") and reason in err
    assert err.count("\n") == 1
    assert fake_kaggle.calls == []


def test_submit_refuses_a_missing_file_and_an_empty_message(fake_kaggle, tmp_path, capsys):
    fake_kaggle.login()
    code, _, err = digits("kaggle", "submit", str(tmp_path / "nope.csv"), "-m", "x", capsys=capsys)
    assert code == 1 and "nope.csv: file not found" in err
    path = write_submission(tmp_path / "submission.csv")
    code, _, err = digits("kaggle", "submit", str(path), "-m", " ", capsys=capsys)
    assert code == 1 and "message is empty" in err
    assert fake_kaggle.calls == []


def test_submit_reports_a_refusal_the_cli_prints_with_exit_status_0(fake_kaggle, tmp_path, capsys):
    fake_kaggle.login()
    fake_kaggle.fail_with("submit-rejected")
    path = write_submission(tmp_path / "submission.csv")
    code, _, err = digits("kaggle", "submit", str(path), "-m", "x", capsys=capsys)
    assert code == 1
    assert err == "error: Kaggle did not accept submission.csv: Could not submit to competition\n"


def test_submissions_lists_past_scores(fake_kaggle, capsys):
    fake_kaggle.login()
    code, out, _ = digits("kaggle", "submissions", capsys=capsys)
    assert code == 0
    assert fake_kaggle.calls == [["competitions", "submissions", "digit-recognizer", "-v"]]
    assert "0.99757" in out and "ensemble" in out and "2026-11-20" in out


# --------------------------------------------------------------------------------------------
# kernels


def test_kernel_build_needs_a_user_name(isolated, capsys):
    notebooks(isolated, "01_eda")
    code, _, err = digits("kaggle", "kernel", "build", capsys=capsys)
    assert code == 1 and "--user NAME" in err
    code, out, _ = digits("kaggle", "kernel", "build", "--user", "dana", capsys=capsys)
    assert code == 0 and "dana/digit-recognizer-01-eda" in out
    meta = json.loads(
        (isolated / "outputs/kernels/digit-recognizer-01-eda/kernel-metadata.json").read_text()
    )
    assert meta["id"] == "dana/digit-recognizer-01-eda" and meta["is_private"] is True


def test_kernel_build_selects_notebooks_by_stem_or_prefix(isolated, capsys):
    notebooks(isolated, "01_eda", "04_train_cnn", "05_ensemble_submission")
    code, out, _ = digits("kaggle", "kernel", "build", "04", "--user", "dana", capsys=capsys)
    assert code == 0 and out.count("built ") == 1 and "digit-recognizer-04-train-cnn" in out
    assert "reads dana/digit-recognizer-02-augmentation" in out and "(GPU;" in out
    assert "dana/digit-recognizer-03-model-zoo" in out  # its second upstream kernel
    code, _, err = digits("kaggle", "kernel", "build", "0", "--user", "dana", capsys=capsys)
    assert code == 1 and "'0' names no notebook" in err
    code, _, err = digits("kaggle", "kernel", "build", "07", "--user", "dana", capsys=capsys)
    assert code == 1 and "'07' names no notebook" in err and "01_eda" in err


def test_kernel_push_builds_and_pushes_in_order_with_the_accelerator(
    fake_kaggle, isolated, capsys
):
    fake_kaggle.login()
    notebooks(isolated, "01_eda", "04_train_cnn")
    code, out, err = digits("kaggle", "kernel", "push", capsys=capsys)
    assert (code, err) == (0, "")
    root = isolated / "outputs" / "kernels"
    assert fake_kaggle.calls == [
        # 04 reads 02 and 03, not pushed here: their latest runs must be complete before
        # anything is sent
        ["kernels", "status", "alice/digit-recognizer-02-augmentation"],
        ["kernels", "status", "alice/digit-recognizer-03-model-zoo"],
        ["kernels", "push", "-p", str(root / "digit-recognizer-01-eda")],
        [
            "kernels",
            "push",
            "-p",
            str(root / "digit-recognizer-04-train-cnn"),
            "--accelerator",
            "NvidiaTeslaT4",
        ],
    ]
    assert "https://www.kaggle.com/code/alice/digit-recognizer-04-train-cnn" in out
    built = nbformat.read(root / "digit-recognizer-04-train-cnn" / "04_train_cnn.ipynb", 4)
    assert built.cells[-1].source == "print('hello')"


def test_kernel_push_refuses_the_p100_before_anything_is_built(fake_kaggle, isolated, capsys):
    fake_kaggle.login()
    notebooks(isolated, "04_train_cnn")
    argv = ("kaggle", "kernel", "push", "04_train_cnn", "--accelerator", "NvidiaTeslaP100")
    code, out, err = digits(*argv, capsys=capsys)
    assert code == 1 and out == ""
    assert err.startswith("error: --accelerator NvidiaTeslaP100: ") and "sm_60" in err
    assert "use NvidiaTeslaT4" in err and err.count("\n") == 1
    assert fake_kaggle.calls == [] and not (isolated / "outputs" / "kernels").exists()


def test_kernel_push_help_offers_the_t4_only(capsys):
    with pytest.raises(SystemExit):
        cli.main(["kaggle", "kernel", "push", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "NvidiaTeslaT4" in text and "--wait" in text
    assert "the P100 is refused" in text  # named only as refused


def test_gpu_kernels_ask_for_the_t4_machine_shape(isolated, capsys):
    notebooks(isolated, "01_eda", "04_train_cnn")
    assert digits("kaggle", "kernel", "build", "--user", "alice", capsys=capsys)[0] == 0
    root = isolated / "outputs" / "kernels"
    gpu = json.loads((root / "digit-recognizer-04-train-cnn/kernel-metadata.json").read_text())
    cpu = json.loads((root / "digit-recognizer-01-eda/kernel-metadata.json").read_text())
    assert gpu["machine_shape"] == "NvidiaTeslaT4" and gpu["enable_gpu"] is True
    assert "machine_shape" not in cpu and cpu["enable_gpu"] is False


def test_an_old_cli_without_accelerator_is_named(fake_kaggle, isolated, capsys):
    """The fake answers `--accelerator` with argparse's error, as kaggle < 1.8.4 does."""
    fake_kaggle.login()
    fake_kaggle.fail_with("old-cli")
    notebooks(isolated, "01_eda", "02_augmentation")
    code, out, err = digits("kaggle", "kernel", "push", "01", capsys=capsys)
    assert code == 0  # a CPU kernel needs no --accelerator, so an old CLI still pushes it
    code, out, err = digits("kaggle", "kernel", "push", "02", capsys=capsys)
    assert code == 1 and err.count("\n") == 1
    assert "older than 1.8.4" in err and "pip install -U 'kaggle>=1.8.4'" in err


def test_a_dropped_upstream_is_a_push_error(fake_kaggle, isolated, capsys):
    """The fake prints the real CLI's 'not valid kernel sources' line and exits 0."""
    fake_kaggle.login()
    fake_kaggle.fail_with("dropped-sources")
    notebooks(isolated, "05_ensemble_submission")
    code, out, err = digits("kaggle", "kernel", "push", "05", capsys=capsys)
    assert code == 1 and err.count("\n") == 1
    assert err.startswith(
        "error: Kaggle dropped the upstream kernel(s) alice/digit-recognizer-03-model-zoo, "
        "alice/digit-recognizer-04-train-cnn of "
        "alice/digit-recognizer-05-ensemble-submission"
    )
    assert "not valid kernel sources" in err and "--wait" in err


def test_a_dropped_competition_is_a_push_error(fake_kaggle, isolated, capsys):
    """The real CLI prints 'not valid competition sources' (rules not accepted, or a typo) and
    exits 0; the kernel would then find no data."""
    fake_kaggle.login()
    fake_kaggle.fail_with("dropped-competition")
    notebooks(isolated, "01_eda")
    code, out, err = digits("kaggle", "kernel", "push", "01", capsys=capsys)
    assert code == 1 and err.count("\n") == 1
    assert err.startswith(
        "error: Kaggle dropped the competition digit-recognizer from alice/digit-recognizer-01-eda"
    )
    assert "accept the rules at https://www.kaggle.com/competitions/digit-recognizer/rules" in (
        " ".join(err.split()).replace("Accept", "accept")
    )
    assert "check the slug" in err


def test_push_without_wait_refuses_an_upstream_pushed_alongside(fake_kaggle, isolated, capsys):
    fake_kaggle.login()
    notebooks(isolated, "01_eda", "02_augmentation", "04_train_cnn")
    code, out, err = digits("kaggle", "kernel", "push", capsys=capsys)
    assert code == 1 and err.count("\n") == 1
    assert "digit-recognizer-04-train-cnn reads alice/digit-recognizer-02-augmentation" in err
    assert "which this push starts" in err and "--wait" in err
    assert fake_kaggle.calls == []  # refused before anything was sent


def test_push_without_wait_refuses_an_upstream_that_is_not_complete(fake_kaggle, isolated, capsys):
    fake_kaggle.login()
    fake_kaggle.kernel_statuses(s02="RUNNING")
    notebooks(isolated, "04_train_cnn", "03_model_zoo")
    code, out, err = digits("kaggle", "kernel", "push", capsys=capsys)
    assert code == 1 and err.count("\n") == 1
    assert "reads alice/digit-recognizer-02-augmentation, whose latest run is running" in err
    assert [c[:2] for c in fake_kaggle.calls] == [["kernels", "status"]]  # nothing pushed


def test_push_wait_goes_stage_by_stage(fake_kaggle, isolated, capsys):
    """Status sequences stand in for runs moving on after each push (see fake_kaggle.py)."""
    fake_kaggle.login()
    fake_kaggle.kernel_statuses(s02="QUEUED,RUNNING,COMPLETE", s03="RUNNING,COMPLETE")
    notebooks(isolated, *stages.STAGES)
    argv = ("kaggle", "kernel", "push", "--wait", "--poll", "0.001")
    code, out, err = digits(*argv, capsys=capsys)
    assert (code, err) == (0, "")
    assert fake_kaggle.calls[0] == ["--version"]  # before anything is sent
    short = [
        (c[1], re.sub(r".*digit-recognizer-(\d\d).*", r"\1", c[-1] if c[1] == "status" else c[3]))
        for c in fake_kaggle.calls[1:]
    ]
    # every kernel pushed here is followed by the version the push made
    assert {c[2].rsplit("/", 1)[1] for c in fake_kaggle.calls if c[1:2] == ["status"]} == {"1"}
    assert short == [
        ("push", "01"),
        ("push", "02"),
        *[("status", "02")] * 3,  # queued, running, complete: only then its readers
        ("push", "03"),
        *[("status", "03")] * 2,  # 04 reads 02 (complete) and 03: running, then complete
        ("push", "04"),
        ("status", "04"),  # 05 reads 04
        ("push", "05"),
        ("status", "01"),  # finally every pushed kernel not yet seen complete is followed
        ("status", "05"),
    ]
    assert "alice/digit-recognizer-02-augmentation: queued (0 min), waiting…" in out
    assert "alice/digit-recognizer-02-augmentation: running (0 min), waiting…" in out
    assert "alice/digit-recognizer-05-ensemble-submission: complete" in out


def test_push_wait_stops_at_a_failed_upstream(fake_kaggle, isolated, capsys, monkeypatch):
    fake_kaggle.login()
    fake_kaggle.kernel_statuses(s02="RUNNING,ERROR")
    monkeypatch.setenv("FAKE_KAGGLE_KERNEL_FAILURE", "no kernel image is available")
    notebooks(isolated, "02_augmentation", "04_train_cnn")
    argv = ("kaggle", "kernel", "push", "--wait", "--poll", "0.001")
    code, out, err = digits(*argv, capsys=capsys)
    assert code == 1 and err.count("\n") == 1
    assert err.startswith(
        "error: kernel alice/digit-recognizer-02-augmentation did not complete: no kernel image"
    )
    assert "https://www.kaggle.com/code/alice/digit-recognizer-02-augmentation/log" in err
    pushed = [c for c in fake_kaggle.calls if c[1:2] == ["push"]]
    assert len(pushed) == 1 and pushed[0][3].endswith("digit-recognizer-02-augmentation")


def test_push_wait_is_bounded(fake_kaggle, isolated, capsys):
    fake_kaggle.login()
    fake_kaggle.kernel_statuses(s02="RUNNING")
    notebooks(isolated, "04_train_cnn")
    argv = ("kaggle", "kernel", "push", "--wait", "--poll", "0.001", "--timeout", "0")
    code, out, err = digits(*argv, capsys=capsys)
    assert code == 1
    assert "kernel alice/digit-recognizer-02-augmentation is still running after 0 min" in err
    assert not [c for c in fake_kaggle.calls if c[1:2] == ["push"]]


def test_push_wait_follows_the_version_it_pushed(fake_kaggle, isolated, capsys, monkeypatch):
    """A status without a version may still be the previous version's COMPLETE: the poller asks
    for the version the push made, and 04 waits for 02's new run."""
    fake_kaggle.login()
    monkeypatch.setenv("FAKE_KAGGLE_STALE", "1")
    fake_kaggle.kernel_statuses(s02="QUEUED,RUNNING,COMPLETE")
    notebooks(isolated, "02_augmentation", "03_model_zoo")
    argv = ("kaggle", "kernel", "push", "02", "--wait", "--poll", "0.001")
    assert digits(*argv, capsys=capsys)[0] == 0  # version 1 of 02
    argv = ("kaggle", "kernel", "push", "02", "03", "--wait", "--poll", "0.001")
    code, out, err = digits(*argv, capsys=capsys)
    assert (code, err) == (0, "")
    after = fake_kaggle.calls[fake_kaggle.calls.index(["--version"], 1) :]
    order = [c[2] if c[1] == "status" else "push " + c[3].rsplit("/", 1)[1] for c in after[1:]]
    v2 = "alice/digit-recognizer-02-augmentation/2"
    assert order[:5] == ["push digit-recognizer-02-augmentation", v2, v2, v2,
                         "push digit-recognizer-03-model-zoo"]  # fmt: skip
    assert "alice/digit-recognizer-02-augmentation: queued (0 min), waiting…" in out


@pytest.mark.parametrize(
    "option",
    [("--timeout", "nan"), ("--timeout", "-1"), ("--timeout", "inf"), ("--poll", "-1"),
     ("--poll", "0"), ("--poll", "nan"), ("--poll", "soon")],
)  # fmt: skip
def test_push_refuses_a_wait_that_cannot_end_at_the_parser(fake_kaggle, isolated, capsys, option):
    fake_kaggle.login()
    notebooks(isolated, "01_eda")
    with pytest.raises(SystemExit) as e:
        cli.main(["kaggle", "kernel", "push", "--wait", *option])
    err = capsys.readouterr().err
    assert e.value.code == 2 and fake_kaggle.calls == []
    [line] = [x for x in err.splitlines() if not x.startswith(("usage:", " "))]
    assert line.endswith(
        f"error: argument {option[0]}: expected a finite number, "
        + ("zero or more" if option[0] == "--timeout" else "more than zero")
        + f"; got {option[1]!r}"
    )


def test_push_checks_what_it_can_before_sending_anything(fake_kaggle, isolated, capsys):
    notebooks(isolated, "01_eda", "04_train_cnn")
    code, _, err = digits("kaggle", "kernel", "push", "--user", "alice", capsys=capsys)
    assert code == 1 and err.startswith("error: no Kaggle credentials found")
    assert fake_kaggle.calls == []

    fake_kaggle.login()
    assert digits("kaggle", "kernel", "build", capsys=capsys)[0] == 0
    folder = isolated / "outputs/kernels/digit-recognizer-04-train-cnn"
    meta = json.loads((folder / "kernel-metadata.json").read_text())
    edited = {**meta, "kernel_sources": meta["kernel_sources"][:1], "competition_sources": []}
    (folder / "kernel-metadata.json").write_text(json.dumps(edited))
    with pytest.raises(KaggleError) as e:
        kernel_push.push_in_order([folder])
    message = str(e.value)
    assert "competition_sources is [], not ['digit-recognizer']" in message
    assert "Rebuild it with `digits kaggle kernel build`" in message
    (folder / "kernel-metadata.json").write_text(json.dumps({**edited, "competition_sources": [
        "digit-recognizer"]}))  # fmt: skip
    with pytest.raises(KaggleError, match="kernel_sources is .* but the stage graph gives 04"):
        kernel_push.push_in_order([folder])
    (folder / "04_train_cnn.ipynb").unlink()
    (folder / "kernel-metadata.json").write_text(json.dumps(meta))
    with pytest.raises(KaggleError, match="its notebook 04_train_cnn.ipynb is missing"):
        kernel_push.push_in_order([folder])
    assert fake_kaggle.calls == []  # nothing sent, not even a status call


def test_poller_reports_progress_and_times_out_on_its_clock(fake_kaggle):
    """The Poller with a fake clock: a progress line per state change, the timeout honoured."""
    fake_kaggle.login()
    fake_kaggle.kernel_statuses(s02="QUEUED,QUEUED,QUEUED,RUNNING")
    now, said = [0.0], []
    poller = kernel_push.Poller(
        poll=60, timeout=30 * 60, say=said.append, sleep=lambda s: now.__setitem__(0, now[0] + s),
        clock=lambda: now[0], every=100,
    )  # fmt: skip
    with pytest.raises(KaggleError, match="still running after 30 min"):
        poller.wait("alice/digit-recognizer-02-augmentation")
    assert said == [
        "alice/digit-recognizer-02-augmentation: queued (0 min), waiting…",
        "alice/digit-recognizer-02-augmentation: running (3 min), waiting…",
    ]
    assert len(fake_kaggle.calls) == 31  # one status call a minute for 30 minutes, then one more


def test_kernel_push_rejected(fake_kaggle, isolated, capsys):
    fake_kaggle.login()
    fake_kaggle.fail_with("push-rejected")
    notebooks(isolated, "01_eda")
    code, _, err = digits("kaggle", "kernel", "push", capsys=capsys)
    assert code == 1
    assert err == (
        "error: Kaggle rejected the push of alice/digit-recognizer-01-eda: "
        "Notebook exceeds the maximum size of 1 MB\n"
    )


def test_kernel_status(fake_kaggle, capsys, monkeypatch):
    fake_kaggle.login()
    code, out, _ = digits("kaggle", "kernel", "status", "04_train_cnn", capsys=capsys)
    assert code == 0 and out == "alice/digit-recognizer-04-train-cnn: complete\n"
    assert fake_kaggle.calls == [["kernels", "status", "alice/digit-recognizer-04-train-cnn"]]

    monkeypatch.setenv("FAKE_KAGGLE_KERNEL_STATUS", "ERROR")
    monkeypatch.setenv("FAKE_KAGGLE_KERNEL_FAILURE", "CUDA out of memory")
    code, out, err = digits("kaggle", "kernel", "status", "carol/other", capsys=capsys)
    assert code == 1 and out == "carol/other: error\n"
    assert "did not complete: CUDA out of memory" in err and err.count("\n") == 1


def test_kernel_status_and_output_read_a_prefix_as_build_does(
    fake_kaggle, isolated, capsys, monkeypatch
):
    # `status 03` used to ask for alice/digit-recognizer-03.
    fake_kaggle.login()
    monkeypatch.setenv("FAKE_KAGGLE_OUTPUT", json.dumps(["outputs/04_train_cnn/runs.json"]))
    notebooks(isolated, "01_eda", "04_train_cnn")
    code, out, _ = digits("kaggle", "kernel", "status", "04", capsys=capsys)
    assert code == 0 and out == "alice/digit-recognizer-04-train-cnn: complete\n"
    assert digits("kaggle", "kernel", "output", "04", capsys=capsys)[0] == 0
    kernel_calls = [c for c in fake_kaggle.calls if c != ["--version"]]
    assert [c[2] for c in kernel_calls] == ["alice/digit-recognizer-04-train-cnn"] * 2
    code, _, err = digits("kaggle", "kernel", "status", "0", capsys=capsys)
    assert code == 1 and "'0' names no notebook" in err and "04_train_cnn" in err


def test_kernel_output_downloads_into_the_kernel_folder(fake_kaggle, isolated, capsys):
    fake_kaggle.login()
    code, out, _ = digits("kaggle", "kernel", "output", "05_ensemble_submission", capsys=capsys)
    dest = isolated / "outputs/kernels/digit-recognizer-05-ensemble-submission/output"
    assert code == 0 and (dest / "submission.csv").is_file()
    # the CLI's version first (it must page), then a forced download into a fresh folder
    partial = dest.parent / ".output.partial"
    assert fake_kaggle.calls == [
        ["--version"],
        ["kernels", "output", "alice/digit-recognizer-05-ensemble-submission", "-p", str(partial)]
        + ["-o", "--file-pattern", remote.needed_pattern("05_ensemble_submission")],
    ]
    assert "2 output file(s)" in out and "submission.csv" in out and not partial.exists()
    other = isolated / "elsewhere"
    assert digits("kaggle", "kernel", "output", "bob/x", "-p", str(other), capsys=capsys)[0] == 0
    assert fake_kaggle.calls[-1] == [
        "kernels",
        "output",
        "bob/x",
        "-p",
        str(other.parent / ".elsewhere.partial"),
        "-o",
    ]  # fmt: skip  (a kernel outside the stage graph: all of its files)
    assert (other / "submission.csv").is_file()


def test_kernel_output_refuses_a_cli_that_does_not_page(
    fake_kaggle, isolated, capsys, monkeypatch
):
    """kaggle 1.8.4–2.2.1 download only the first page (about 20 files) and exit 0."""
    fake_kaggle.login()
    monkeypatch.setenv("FAKE_KAGGLE_VERSION", "2.2.1")
    code, out, err = digits("kaggle", "kernel", "output", "05", capsys=capsys)
    assert code == 1 and out == "" and err.count("\n") == 1
    assert "the installed kaggle CLI is 2.2.1, older than 2.2.2" in err
    assert "pip install -U 'kaggle>=2.2.2'" in err
    assert fake_kaggle.calls == [["--version"]]  # nothing downloaded


def test_kernel_output_replaces_stale_files_and_checks_the_promised_ones(
    fake_kaggle, isolated, capsys, monkeypatch
):
    fake_kaggle.login()
    dest = isolated / "outputs/kernels/digit-recognizer-04-train-cnn/output"
    (dest / "outputs/04_train_cnn/runs/old_seed9").mkdir(parents=True)  # an older version's run
    # 04 promises its run list (stages.STAGES writes; refit_runs.json only with refit=True)
    monkeypatch.setenv("FAKE_KAGGLE_OUTPUT", json.dumps(["outputs/04_train_cnn/leaderboard.png"]))
    code, out, err = digits("kaggle", "kernel", "output", "04", capsys=capsys)
    assert code == 1 and err.count("\n") == 1
    assert (
        "its output lacks outputs/04_train_cnn/runs.json, which 04_train_cnn always writes" in err
    )
    assert (dest / "outputs/04_train_cnn/runs/old_seed9").is_dir()  # left as it was

    monkeypatch.setenv("FAKE_KAGGLE_OUTPUT", json.dumps(["outputs/04_train_cnn/runs.json"]))
    code, out, err = digits("kaggle", "kernel", "output", "04", capsys=capsys)
    assert (code, err) == (0, "") and "1 output file(s)" in out
    files = sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file())
    assert files == [".digits-kernel-output", "outputs/04_train_cnn/runs.json"]  # no stale run

    mine = isolated / "mine"
    (mine / "notes.txt").parent.mkdir()
    (mine / "notes.txt").write_text("keep me")
    code, out, err = digits("kaggle", "kernel", "output", "04", "-p", str(mine), capsys=capsys)
    assert code == 1 and "is not empty and holds no earlier kernel output" in err
    assert (mine / "notes.txt").read_text() == "keep me"


ZOO_OUTPUT = [
    "outputs/03_model_zoo/choice.json",
    "outputs/03_model_zoo/leaderboard.json",
    "outputs/03_model_zoo/runs.json",
    "outputs/03_model_zoo/metrics.json",
    "outputs/03_model_zoo/leaderboard.png",
    "outputs/03_model_zoo/runs/runs.csv",
    *(f"outputs/03_model_zoo/runs/cnn-f0/{name}" for name in (
        "config.json", "history.csv", "last.pt", "best.pt", "val_indices.npy", "val_proba.npy",
        "metrics.json", "complete.json")),
]  # fmt: skip


def downloaded(dest: Path) -> list[str]:
    return sorted(
        p.relative_to(dest).as_posix()
        for p in dest.rglob("*")
        if p.is_file() and p.name != remote.OUTPUT_MARKER
    )


def test_kernel_output_fetches_what_later_stages_read_or_what_is_asked(
    fake_kaggle, isolated, capsys, monkeypatch
):
    """By default only the hand-off files, metrics.json and the run folders without best.pt come
    (no figures, no runs.csv); --all brings everything, --files what its pattern matches."""
    fake_kaggle.login()
    monkeypatch.setenv("FAKE_KAGGLE_OUTPUT", json.dumps(ZOO_OUTPUT))
    dest = isolated / "outputs/kernels/digit-recognizer-03-model-zoo/output"
    assert digits("kaggle", "kernel", "output", "03_model_zoo", capsys=capsys)[0] == 0
    skipped = {"leaderboard.png", "runs.csv", "best.pt"}
    assert downloaded(dest) == sorted(f for f in ZOO_OUTPUT if f.rsplit("/", 1)[1] not in skipped)
    assert "--file-pattern" in fake_kaggle.calls[-1]

    assert digits("kaggle", "kernel", "output", "03_model_zoo", "--all", capsys=capsys)[0] == 0
    assert downloaded(dest) == sorted(ZOO_OUTPUT) and "--file-pattern" not in fake_kaggle.calls[-1]

    # what the user asks for; the promised files it does not cover are not required
    argv = ("kaggle", "kernel", "output", "03", "--files", r"choice\.json$")
    assert digits(*argv, capsys=capsys)[0] == 0
    assert downloaded(dest) == ["outputs/03_model_zoo/choice.json"]
    assert fake_kaggle.calls[-1][-2:] == ["--file-pattern", r"choice\.json$"]
    # ...and those it covers still are
    monkeypatch.setenv("FAKE_KAGGLE_OUTPUT", json.dumps(ZOO_OUTPUT[1:]))
    code, _, err = digits(*argv[:-1], r"\.json$", capsys=capsys)
    assert code == 1 and "lacks outputs/03_model_zoo/choice.json" in err

    calls = len(fake_kaggle.calls)
    code, out, err = digits("kaggle", "kernel", "output", "03", "--files", "(", capsys=capsys)
    assert code == 1 and err.count("\n") == 1 and "files: '(' is not a regular expression" in err
    assert len(fake_kaggle.calls) == calls  # refused before the CLI ran
    with pytest.raises(SystemExit) as stop:  # argparse: one or the other
        digits("kaggle", "kernel", "output", "03", "--all", "--files", "x", capsys=capsys)
    assert stop.value.code == 2 and "not allowed with argument" in capsys.readouterr().err


def test_kernel_output_timeout_follows_the_stage_output_size(isolated, monkeypatch):
    import shutil

    from digit_utils.cli import kaggle as cli_kaggle
    from digit_utils.errors import ConfigError
    from digit_utils.pipeline import output_size

    shutil.copytree(Path(__file__).parents[1] / "notebooks", isolated / "notebooks")
    sizes = output_size.plan_output_bytes()
    waits = {s: cli_kaggle._download_timeout(f"alice/{paths.kernel_slug(s)}") for s in sizes}
    assert waits == {s: output_size.download_seconds(hi) for s, (_, hi) in sizes.items()}
    assert waits["03_model_zoo"] > waits["01_eda"] >= output_size.BASE_DOWNLOAD_S
    assert cli_kaggle._download_timeout("bob/not-a-stage") is None  # the kind's default then
    for bad in (0, -5, float("nan"), float("inf"), "60"):
        with pytest.raises(ConfigError, match="timeout: expected a finite number of seconds"):
            remote.output("bob/x", isolated / "out", timeout=bad)


def test_promised_files_follow_the_stage_graph():
    assert stages.STAGES["05_ensemble_submission"].promised == (
        "submission.csv",
        "outputs/05_ensemble_submission/runs.json",
    )
    assert "outputs/04_train_cnn/refit_runs.json" not in stages.STAGES["04_train_cnn"].promised
    assert "outputs/03_model_zoo/choice.json" in stages.STAGES["03_model_zoo"].promised
    assert remote.output_timeout("03_model_zoo") > remote.output_timeout("01_eda")


# --------------------------------------------------------------------------------------------
# Failures: one line, exit 1, no traceback, no credential value anywhere


COMMANDS = {
    "submit": ("kaggle", "submit", "{sub}", "-m", "x"),
    "submissions": ("kaggle", "submissions"),
    "push": ("kaggle", "kernel", "push", "01_eda"),
    "status": ("kaggle", "kernel", "status", "01_eda"),
    "output": ("kaggle", "kernel", "output", "01_eda"),
}
EXPECTED = {
    "403": "accept the competition rules",
    "401": "rejected the credentials",
    "404": "does not know that resource",
    "network": "cannot reach kaggle.com",
    "proxy-403": "a proxy refused the connection",  # not "accept the rules"
    "leak": "the Kaggle CLI failed: Error: bad request with key ***",  # echoed, redacted
}


@pytest.mark.parametrize("failure", list(EXPECTED))
@pytest.mark.parametrize("command", list(COMMANDS))
def test_cli_failures_are_one_clear_line_without_secrets(
    fake_kaggle, isolated, tmp_path, capsys, command, failure
):
    fake_kaggle.login(key=KEY)
    fake_kaggle.fail_with(failure)
    notebooks(isolated, "01_eda")
    sub = write_submission(tmp_path / "submission.csv")
    argv = [a.format(sub=sub) for a in COMMANDS[command]]
    code, out, err = digits(*argv, capsys=capsys)
    assert code == 1
    if command != "push":  # push first says what it built
        assert out == ""
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert EXPECTED[failure] in err
    if command in ("status", "output"):
        assert "kernel alice/digit-recognizer-01-eda: " in err
    assert len(fake_kaggle.calls) == 1
    assert_no_secret(out, err, tree=tmp_path)


def test_no_credentials_is_one_line_without_traceback(fake_kaggle, isolated, tmp_path):
    """End to end through the `digits` entry point in a fresh process."""
    sub = write_submission(tmp_path / "submission.csv")
    for argv in (["kaggle", "submit", str(sub), "-m", "x"], ["kaggle", "kernel", "status", "a/b"]):
        done = subprocess.run(
            [sys.executable, "-m", "digit_utils.cli", *argv], capture_output=True, text=True
        )
        assert done.returncode == 1
        assert done.stderr.startswith("error: no Kaggle credentials found")
        assert "Traceback" not in done.stderr and done.stderr.count("\n") == 1
    assert fake_kaggle.calls == []


def test_built_kernels_hold_no_credentials(fake_kaggle, isolated, tmp_path, capsys):
    fake_kaggle.login(key=KEY)
    notebooks(isolated, "01_eda", "05_ensemble_submission")
    code, out, err = digits("kaggle", "kernel", "push", capsys=capsys)
    assert code == 0
    assert_no_secret(out, err, tree=tmp_path)
    folder = isolated / "outputs/kernels" / kernels.kernel_slug("05_ensemble_submission")
    assert json.loads((folder / "kernel-metadata.json").read_text())["kernel_sources"] == [
        "alice/digit-recognizer-03-model-zoo",  # 05 reads 03's and 04's runs (stages.STAGES)
        "alice/digit-recognizer-04-train-cnn",
    ]


# --------------------------------------------------------------------------------------------
# Credentials the real CLI accepts besides kaggle.json and the environment


def _token_file(home: Path) -> None:
    (home / ".kaggle").mkdir()
    (home / ".kaggle" / "access_token.txt").write_text("KGAT_0123456789abcdef\n")


def _oauth_file(home: Path) -> None:
    (home / ".kaggle").mkdir()
    (home / ".kaggle" / "credentials.json").write_text('{"refresh_token": "rt-0123456789abc"}')


def _xdg_kaggle_json(home: Path) -> None:  # no ~/.kaggle at all
    (home / ".config" / "kaggle").mkdir(parents=True)
    (home / ".config" / "kaggle" / "kaggle.json").write_text(
        '{"username": "xena", "key": "0123456789abcdef"}'
    )


@pytest.mark.parametrize("write", [_token_file, _oauth_file, _xdg_kaggle_json])
def test_every_credential_file_the_cli_reads_counts(fake_kaggle, tmp_path, capsys, write):
    write(tmp_path / "home")  # the isolated HOME
    code, out, err = digits("kaggle", "submissions", capsys=capsys)
    assert (code, err) == (0, "") and len(fake_kaggle.calls) == 1


def test_token_users_name_the_owner_with_user(fake_kaggle, isolated, tmp_path, capsys):
    _token_file(tmp_path / "home")
    notebooks(isolated, "01_eda")
    code, _, err = digits("kaggle", "kernel", "build", capsys=capsys)
    assert code == 1 and "pass --user NAME" in err
    assert "access_token.txt" in err and "`kaggle auth login` store none" in err
    code, _, err = digits("kaggle", "kernel", "status", "01_eda", capsys=capsys)
    assert code == 1 and "write OWNER/SLUG" in err and "store none" in err
    assert digits("kaggle", "kernel", "build", "--user", "dana", capsys=capsys)[0] == 0


def test_the_user_name_comes_from_xdg_kaggle_json(fake_kaggle, isolated, tmp_path, capsys):
    _xdg_kaggle_json(tmp_path / "home")
    notebooks(isolated, "01_eda")
    code, out, _ = digits("kaggle", "kernel", "build", capsys=capsys)
    assert code == 0 and "xena/digit-recognizer-01-eda" in out


def test_token_and_oauth_values_are_redacted(tmp_path):
    from digit_utils.kaggle import client as kaggle

    _token_file(tmp_path / "home")
    (tmp_path / "home" / ".kaggle" / "credentials.json").write_text(
        '{"refresh_token": "rt-0123456789abc", "scope": "x"}'
    )
    text = "token KGAT_0123456789abcdef and rt-0123456789abc"
    assert kaggle.redact(text) == "token *** and ***"


def test_submit_true_inside_a_kernel_says_why_instead_of_calling(
    fake_kaggle, tmp_path, monkeypatch
):
    """The 05 notebook's last step; a kernel has the internet off (and no credentials)."""
    from digit_utils.data import submission as submit

    fake_kaggle.login()
    path = write_submission(tmp_path / "submission.csv")
    monkeypatch.setenv("KAGGLE_KERNEL_RUN_TYPE", "Batch")
    said = submit.submit_if_asked(path, "x", True)
    assert said.startswith("not submitted: a Kaggle kernel runs with the internet off")
    assert "Output tab" in said and "digits kaggle submit" in said
    assert fake_kaggle.calls == []
    assert submit.submit_if_asked(path, "x", False) == f"not submitted (submit=False): {path}"
    monkeypatch.delenv("KAGGLE_KERNEL_RUN_TYPE")
    assert "Successfully submitted" in submit.submit_if_asked(path, "x", True)
    assert len(fake_kaggle.calls) == 1


# --------------------------------------------------------------------------------------------
# Small ones: a token file, a kaggle.json user name that is not a string, bytes that are not UTF-8


def test_a_token_read_from_the_file_kaggle_api_token_names_is_redacted(
    fake_kaggle, tmp_path, capsys, monkeypatch
):
    token = "KGAT_fromfile0123456789"
    path = tmp_path / "token.txt"
    path.write_text(token + "\n")
    monkeypatch.setenv("KAGGLE_API_TOKEN", str(path))
    fake_kaggle.fail_with("leak-token")
    code, out, err = digits("kaggle", "submissions", capsys=capsys)
    assert code == 1 and err == "error: the Kaggle CLI failed: Error: token *** was refused\n"
    assert token not in out + err


@pytest.mark.parametrize("name", [["a"], 7, "", None])
def test_a_kaggle_json_user_name_that_is_not_a_string_is_a_clear_error(
    fake_kaggle, isolated, tmp_path, capsys, name
):
    (tmp_path / "home" / ".kaggle").mkdir()
    fields = {"username": name, "key": "0123456789abcdef"}
    (tmp_path / "home" / ".kaggle" / "kaggle.json").write_text(json.dumps(fields))
    notebooks(isolated, "01_eda")
    code, out, err = digits("kaggle", "kernel", "build", capsys=capsys)
    assert code == 1 and err.count("\n") == 1 and "Traceback" not in err
    if name is None:  # no user name at all: the usual advice
        assert "pass --user NAME" in err
    else:
        assert f'kaggle.json: "username" is {json.dumps(name)}, not a user name' in err
        assert "digit-recognizer-01-eda" not in out  # no kernel owned by "['a']"
    assert digits("kaggle", "kernel", "build", "--user", "dana", capsys=capsys)[0] == 0


def test_output_that_is_not_utf8_is_decoded_with_replacement(fake_kaggle, capsys):
    fake_kaggle.login()
    fake_kaggle.fail_with("non-utf8")
    code, out, err = digits("kaggle", "submissions", capsys=capsys)
    assert (code, err) == (0, "") and "caf\ufffd \ufffd" in out and "0.99757" in out
    fake_kaggle.fail_with("non-utf8-error")
    code, out, err = digits("kaggle", "submissions", capsys=capsys)
    assert (
        code == 1
        and err == "error: the Kaggle CLI failed: Error: caf\ufffd \ufffd\ufffd refused\n"
    )
