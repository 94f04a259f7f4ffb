"""Kernel builder: metadata rules, the self-contained notebook, and runs in a simulated Kaggle."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import numpy as np
import pandas as pd
import pytest

from digit_utils import data, paths, stages
from digit_utils.errors import CheckpointError, DigitsError, KaggleError
from digit_utils.kaggle import kernels, local_run

REPO = Path(__file__).resolve().parent.parent
REAL_NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))
PIPELINE = list(stages.STAGES)
GPU = {"02_augmentation", "03_model_zoo", "04_train_cnn", "05_ensemble_submission"}


def make_notebook(path: Path, *cells: str, parameters: str | None = None) -> Path:
    """A small notebook; ``parameters`` becomes its cell tagged `parameters`, after a title."""
    nb = nbformat.v4.new_notebook()
    nb.cells.append(nbformat.v4.new_markdown_cell(f"# {path.stem}"))
    if parameters is not None:
        cell = nbformat.v4.new_code_cell(parameters)
        cell.metadata["tags"] = ["parameters"]
        nb.cells.append(cell)
    nb.cells += [nbformat.v4.new_code_cell(c) for c in cells]
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)
    return path


def kaggle_input(root: Path, sample_dir: Path, layout: str) -> Path:
    """A tree laid out like /kaggle/input with 300 train / 100 test rows of the competition."""
    folder = root / ("competitions/digit-recognizer" if layout == "nested" else "digit-recognizer")
    data.copy_subset(data.DataSource(sample_dir, "sample"), folder, 300, 100)
    (folder / data.SAMPLE_TEST_LABELS).unlink()  # the real competition has no test labels
    return root


PROBE = """\
import json, sys
import digit_utils
from digit_utils import data, paths

source = data.locate()
images, labels = data.load_train(source)
try:
    import mlxtend  # noqa: F401
    has_mlxtend = True
except ImportError:
    has_mlxtend = False
record = {
    "file": digit_utils.__file__,
    "root": str(paths.project_root()),
    "outputs": str(paths.outputs_dir()),
    "data": str(source.path),
    "origin": source.origin,
    "shape": list(images.shape),
    "n_rows": n_rows,
    "has_mlxtend": has_mlxtend,
}
(paths.stage_dir("99_probe") / "probe.json").write_text(json.dumps(record))
"""


# --------------------------------------------------------------------------------------------
# Metadata (pure)


@pytest.mark.parametrize("stem", PIPELINE)
def test_metadata_follows_the_rules(stem):
    meta = kernels.kernel_metadata(f"notebooks/{stem}.ipynb", "alice")
    slug = kernels.kernel_slug(stem)
    assert meta["id"] == f"alice/{slug}"
    assert meta["title"] == kernels.kernel_title(stem)
    assert meta["code_file"] == f"{stem}.ipynb"
    assert (meta["language"], meta["kernel_type"]) == ("python", "notebook")
    assert meta["is_private"] is True
    assert meta["enable_internet"] is False
    assert meta["enable_gpu"] is (stem in GPU)
    # a GPU kernel names the T4 machine: without it Kaggle may give a P100 the image cannot use
    assert meta.get("machine_shape") == ("NvidiaTeslaT4" if stem in GPU else None)
    assert meta["competition_sources"] == ["digit-recognizer"]
    expected_sources = {
        "03_model_zoo": ["alice/digit-recognizer-02-augmentation"],
        "04_train_cnn": [
            "alice/digit-recognizer-02-augmentation",
            "alice/digit-recognizer-03-model-zoo",
        ],
        "05_ensemble_submission": [  # the zoo's runs join 04's as members on the same folds
            "alice/digit-recognizer-03-model-zoo",
            "alice/digit-recognizer-04-train-cnn",
        ],
    }
    assert meta["kernel_sources"] == expected_sources.get(stem, [])


@pytest.mark.parametrize("stem", PIPELINE)
def test_title_resolves_to_the_slug_kaggle_expects(stem):
    """`kaggle kernels push` warns when slugify(title) differs from the id's slug."""
    slugify = pytest.importorskip("slugify").slugify  # the kaggle CLI's own dependency
    assert slugify(kernels.kernel_title(stem)) == kernels.kernel_slug(stem)
    assert kernels.kernel_slug(stem).startswith(kernels.SLUG_PREFIX)
    assert 5 <= len(kernels.kernel_title(stem)) <= 50  # Kaggle's title length limits


def test_upstream_kernels_come_earlier_in_the_pipeline():
    for stem, spec in stages.STAGES.items():
        for up in spec.upstream:
            assert PIPELINE.index(up) < PIPELINE.index(stem), (stem, up)


def test_metadata_of_other_notebooks_public_and_bad_user():
    meta = kernels.kernel_metadata("extra/06_my_idea.ipynb", "bob", public=True)
    assert meta["id"] == "bob/digit-recognizer-06-my-idea"
    assert meta["is_private"] is False
    assert (meta["enable_gpu"], meta["kernel_sources"]) == (False, [])
    for bad in ("", "bob/evil", "a b"):
        with pytest.raises(KaggleError, match="user name"):
            kernels.kernel_metadata("01_eda.ipynb", bad)


def test_kernel_ref_accepts_owner_slug_slug_or_stem():
    assert kernels.kernel_ref("carol/some-kernel", None) == "carol/some-kernel"
    want = "alice/digit-recognizer-04-train-cnn"
    assert kernels.kernel_ref("digit-recognizer-04-train-cnn", "alice") == want
    assert kernels.kernel_ref("04_train_cnn", "alice") == want
    with pytest.raises(KaggleError, match="OWNER/SLUG"):
        kernels.kernel_ref("04_train_cnn", None)


def test_push_args_add_the_accelerator_only_for_gpu_kernels():
    assert kernels.push_args("k/x", gpu=False) == ["kernels", "push", "-p", "k/x"]
    assert kernels.push_args("k/x", gpu=True) == [
        "kernels",
        "push",
        "-p",
        "k/x",
        "--accelerator",
        "NvidiaTeslaT4",
    ]


# --------------------------------------------------------------------------------------------
# The self-contained notebook


def test_kernel_notebook_inlines_every_module_ahead_of_the_unchanged_cells(tmp_path):
    original = nbformat.read(
        make_notebook(tmp_path / "04_train_cnn.ipynb", "print(epochs)", parameters="epochs = 3"),
        as_version=4,
    )
    # plus an empty module: %%writefile refuses an empty cell body, so it is written in Python
    sources = {**kernels.package_sources(), "digit_utils/kaggle/empty_probe.py": ""}
    built = kernels.kernel_notebook(original, sources, notebook_name="04_train_cnn.ipynb")

    # Every module of the package as it is now, listed from disk (new modules are picked up).
    root = paths.PACKAGE_DIR.parent
    on_disk = {p.relative_to(root).as_posix() for p in paths.PACKAGE_DIR.rglob("*.py")}
    assert on_disk <= set(sources) and "digit_utils/kaggle/kernels.py" in sources
    # written under the kernel's scratch folder, found at run time (not /kaggle/working)
    prefix = '%%writefile "{_INLINE}/'
    heads = [c.source.split("\n", 1) for c in built.cells if c.source.startswith(prefix)]
    writes = {head.removeprefix(prefix).removesuffix('"'): body for head, body in heads}
    assert writes == {name: text for name, text in sources.items() if text}
    # an empty file (an __init__.py) is created in Python: %%writefile refuses an empty body
    empty = sorted(name for name, text in sources.items() if not text)
    assert empty == ["digit_utils/kaggle/empty_probe.py"]
    made = sorted(c.source.split('"')[1] for c in built.cells if c.source.startswith("open("))
    assert made == empty
    assert writes["digit_utils/paths.py"] == (paths.PACKAGE_DIR / "paths.py").read_text()

    n_added = len(built.cells) - len(original.cells)
    assert built.cells[0].cell_type == "markdown" and "%%writefile" in built.cells[0].source
    assert all(kernels.INLINE_TAG in c.metadata["tags"] for c in built.cells[:n_added])
    assert built.cells[n_added:] == original.cells  # sources, tags and metadata unchanged
    tagged = [i for i, c in enumerate(built.cells) if "parameters" in c.metadata.get("tags", [])]
    assert tagged == [n_added + 1]  # still the one parameters cell, after the package cells
    assert built.metadata["kernelspec"]["name"] == "python3"
    nbformat.validate(built)


def test_build_kernel_writes_notebook_and_metadata(tmp_path, isolated):
    notebook = make_notebook(tmp_path / "05_ensemble_submission.ipynb", "x = 1")
    folder = kernels.build_kernel(notebook, "alice")
    assert folder == isolated / "outputs" / "kernels" / "digit-recognizer-05-ensemble-submission"
    meta = json.loads((folder / "kernel-metadata.json").read_text())
    assert meta == kernels.kernel_metadata(notebook, "alice")
    built = nbformat.read(folder / meta["code_file"], as_version=4)
    assert built.cells[-1].source == "x = 1"
    assert not [p.name for p in folder.iterdir() if p.name.startswith(".")]  # no temp files


def test_build_kernel_rejects_a_broken_notebook(tmp_path):
    bad = tmp_path / "01_eda.ipynb"
    bad.write_text("{not json")
    with pytest.raises(DigitsError, match="01_eda.ipynb: cannot read notebook"):
        kernels.build_kernel(bad, "alice")


@pytest.mark.parametrize("notebook", REAL_NOTEBOOKS, ids=lambda p: p.stem)
def test_every_real_notebook_builds_into_a_kernel(notebook, tmp_path):
    from papermill.inspection import inspect_notebook

    folder = kernels.build_kernel(notebook, "alice", dest=tmp_path / "kernel")
    meta = json.loads((folder / "kernel-metadata.json").read_text())
    stem = notebook.stem
    assert stem in stages.STAGES, f"{stem} is not in stages.STAGES (GPU? upstream kernels?)"
    assert meta == kernels.kernel_metadata(notebook, "alice")
    assert meta["enable_gpu"] is (stem in GPU) and meta["enable_internet"] is False
    built = folder / meta["code_file"]
    # Papermill (and Kaggle's parameterised runs) still see the notebook's own parameters.
    assert inspect_notebook(str(built)) == inspect_notebook(str(notebook))
    original = nbformat.read(notebook, as_version=4)
    assert nbformat.read(built, as_version=4).cells[-len(original.cells) :] == original.cells


def test_real_notebooks_read_hand_offs_only_through_the_stage_graph():
    """A notebook quoting another stage's name ("04_train_cnn/runs.json") would read outputs
    that stages.py does not declare, so its Kaggle kernel would miss that upstream kernel."""
    for notebook in REAL_NOTEBOOKS:
        code = "\n".join(
            c.source for c in nbformat.read(notebook, as_version=4).cells if c.cell_type == "code"
        )
        for other in stages.STAGES:
            quoted = f'"{other}' in code or f"'{other}" in code
            assert other == notebook.stem or not quoted, f"{notebook.name} quotes {other}"


def test_kernel_sources_follow_the_declared_reads():
    assert stages.STAGES["05_ensemble_submission"].upstream == ("03_model_zoo", "04_train_cnn")
    assert stages.STAGES["04_train_cnn"].upstream == ("02_augmentation", "03_model_zoo")
    meta = kernels.kernel_metadata("05_ensemble_submission.ipynb", "alice")
    assert meta["kernel_sources"] == [
        "alice/digit-recognizer-03-model-zoo",
        "alice/digit-recognizer-04-train-cnn",
    ]


# --------------------------------------------------------------------------------------------
# Running built kernels in a simulated Kaggle


@pytest.mark.parametrize("layout", ["flat", "nested"])
def test_kernel_runs_self_contained_in_simulated_kaggle(tmp_path, sample_dir, layout, monkeypatch):
    monkeypatch.setenv("DIGITS_DATA_DIR", str(sample_dir))  # must not leak into the kernel
    notebook = make_notebook(tmp_path / "nb" / "99_probe.ipynb", PROBE, parameters="n_rows = 0")
    folder = kernels.build_kernel(notebook, "alice", dest=tmp_path / "kernel")
    input_root = kaggle_input(tmp_path / "input", sample_dir, layout)
    working, temp = tmp_path / "working", tmp_path / "kaggle-temp"
    executed = local_run.run_kernel_locally(
        folder, input_root, working, {"n_rows": 300}, temp_dir=temp
    )

    record = json.loads((working / "outputs" / "99_probe" / "probe.json").read_text())
    # The inlined copy, in the kernel's scratch space (/kaggle/temp), not the installed package,
    # and not in /kaggle/working, whose files become the kernel's output.
    assert Path(record["file"]).parent.parent.parent == temp
    assert Path(record["file"]).parts[-2:] == ("digit_utils", "__init__.py")
    assert not Path(record["file"]).is_relative_to(REPO)
    outputs = sorted(p.relative_to(working).as_posix() for p in working.rglob("*") if p.is_file())
    assert outputs == ["__notebook__.ipynb", "outputs/99_probe/probe.json"]  # no package, no cache
    assert list((temp / "digit_utils-cache").rglob("*.npz"))  # the parse cache went to scratch
    assert Path(record["root"]) == working and Path(record["outputs"]) == working / "outputs"
    competition = "competitions/digit-recognizer" if layout == "nested" else "digit-recognizer"
    assert (Path(record["data"]), record["origin"]) == (input_root / competition, "kaggle-input")
    assert record["shape"] == [300, 1, 28, 28]
    assert record["n_rows"] == 300  # papermill injected the parameter
    assert record["has_mlxtend"] is False  # not promised by Kaggle's image
    assert executed == working / "__notebook__.ipynb" and executed.is_file()
    assert not list(working.rglob("__pycache__"))


def test_submission_kernel_reads_upstream_kernel_outputs(tmp_path, sample_dir):
    """05 reads a run folder from the 03 kernel's mounted output; writes /kaggle/working/…csv."""
    body = """\
import numpy as np
from digit_utils import data, paths
from digit_utils.data import submission as submit

run = paths.upstream("04_train_cnn/runs/cnn_seed0")
proba = np.load(run / "test_proba.npy")  # (N,10) float32
assert proba.shape == (len(data.load_test(data.locate())), 10)
submit.write_submission(proba, paths.outputs_dir() / "submission.csv", expected_rows=len(proba))
"""
    notebook = make_notebook(tmp_path / "nb" / "05_ensemble_submission.ipynb", body)
    folder = kernels.build_kernel(notebook, "alice", dest=tmp_path / "kernel")
    input_root = kaggle_input(tmp_path / "input", sample_dir, "flat")
    # Kaggle mounts each kernel source's output folder at /kaggle/input/<slug>/.
    slug = kernels.kernel_metadata(notebook, "alice")["kernel_sources"][0].split("/")[1]
    run = input_root / slug / "outputs" / "04_train_cnn" / "runs" / "cnn_seed0"
    run.mkdir(parents=True)
    proba = np.zeros((100, 10), np.float32)  # (N,10): every test digit a 7
    proba[:, 7] = 1.0
    np.save(run / "test_proba.npy", proba)

    working = tmp_path / "working"
    local_run.run_kernel_locally(folder, input_root, working)
    submission = pd.read_csv(working / "submission.csv")
    assert list(submission.columns) == ["ImageId", "Label"]
    assert submission["ImageId"].tolist() == list(range(1, 101))
    assert set(submission["Label"]) == {7}
    assert (working / "outputs" / "submission.csv").is_file()


def test_a_failing_kernel_names_its_cell(tmp_path):
    notebook = make_notebook(tmp_path / "01_eda.ipynb", "x = 1", "raise ValueError('boom')")
    folder = kernels.build_kernel(notebook, "alice", dest=tmp_path / "kernel")
    (tmp_path / "input").mkdir()
    with pytest.raises(DigitsError, match=r"01_eda.ipynb failed in cell \d+: ValueError: boom"):
        local_run.run_kernel_locally(folder, tmp_path / "input", tmp_path / "working")


# --------------------------------------------------------------------------------------------
# A declared upstream missing inside a kernel is an error; locally the defaults stay


def _kernel_mount(root: Path, stage: str, relative: str, text: str) -> Path:
    """``relative`` (under outputs/) in the mounted output of ``stage``'s kernel."""
    path = root / kernels.kernel_slug(stage) / "outputs" / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_missing_upstreams_inside_a_kernel_name_the_kernel_and_its_mount(tmp_path, monkeypatch):
    from digit_utils.train import members

    root = tmp_path / "input"
    root.mkdir()
    # locally a notebook run alone gets the friendly defaults
    assert stages.chosen_augmentation("auto") == (
        "affine",
        "default (02_augmentation has not run)",
    )
    assert stages.chosen_model("auto")[0] == "deep_cnn"

    monkeypatch.setenv("DIGITS_KAGGLE_INPUT", str(root))
    monkeypatch.setenv("KAGGLE_KERNEL_RUN_TYPE", "Batch")
    for resolve, stage in (
        (stages.chosen_augmentation, "02_augmentation"),
        (stages.chosen_model, "03_model_zoo"),
    ):
        with pytest.raises(DigitsError) as e:
            resolve("auto")
        slug = kernels.kernel_slug(stage)
        message = str(e.value)
        assert f"it is the output of the {stage} kernel ({slug})" in message
        assert f"expected at {root}/{slug}/outputs/{stage}/" in message
        assert f"{root}/notebooks/<owner>/{slug}/" in message and "--wait" in message
    assert stages.chosen_model("wide_cnn") == ("wide_cnn", "parameter")  # given, not read

    # 05: 04's runs mounted, the zoo's missing is an error too (not 04's members alone)
    _kernel_mount(root, "04_train_cnn", "04_train_cnn/runs/cnn_seed0/config.json", "{}")
    _kernel_mount(
        root, "04_train_cnn", stages.TRAINED_RUNS,
        json.dumps({"models": {"cnn": ["04_train_cnn/runs/cnn_seed0"]}}),
    )  # fmt: skip
    with pytest.raises(DigitsError, match=r"03_model_zoo/runs.json is missing in this Kaggle"):
        members.ensemble_members("auto")
    assert members.refit_members() == {}  # 04 with refit=False writes no refit list

    _kernel_mount(root, "02_augmentation", stages.POLICY, '{"policy": "p", "augment": {}}')
    assert stages.chosen_augmentation("auto") == ({}, "02_augmentation chose 'p'")


# --------------------------------------------------------------------------------------------
# Checkpoints inside a kernel: the resumable one in scratch, the final weights in the output


def test_inside_a_kernel_the_resumable_checkpoint_stays_out_of_the_output(
    tmp_path, sample_dir, monkeypatch
):
    import torch

    from conftest import sample_arrays
    from digit_utils.config import TrainConfig
    from digit_utils.train import checkpoints, loop, runs

    images, labels, _, _ = sample_arrays(sample_dir)
    images, labels = images[:300], labels[:300]
    scratch, working = tmp_path / "kaggle-temp", tmp_path / "working"
    monkeypatch.setenv("KAGGLE_KERNEL_RUN_TYPE", "Batch")
    monkeypatch.setenv("DIGITS_KAGGLE_TEMP", str(scratch))
    cfg = TrainConfig.from_dict(
        {"model": "fast_cnn", "epochs": 2, "batch_size": 64, "device": "cpu", "ema": 0.9,
         "val_fraction": 0.2, "name": "cnn_seed0"}
    )  # fmt: skip
    run_dir = working / "outputs" / "04_train_cnn" / "runs" / "cnn_seed0"
    result = loop.train(cfg, images, labels, run_dir=run_dir, quiet=True)

    resumable = runs.resume_path(run_dir)
    assert resumable.is_relative_to(scratch) and not resumable.is_relative_to(working)
    full = torch.load(resumable, weights_only=True)
    final = torch.load(run_dir / runs.LAST, weights_only=True)
    assert "optimizer" in full and "optimizer" not in final and final["ema"] is None
    # the output's last.pt holds the evaluated (EMA) weights, in fp16: what every reader loads
    for k, v in full["ema"].items():
        assert final["model"][k].dtype == (torch.float16 if v.is_floating_point() else v.dtype)
        assert torch.allclose(final["model"][k].to(v.dtype), v, rtol=1e-3, atol=1e-4)
    # the folder keeps what readers need; best.pt went to scratch with the resumable last.pt
    assert sorted(p.name for p in run_dir.iterdir()) == sorted(runs.OUTPUT_FILES)
    assert runs.best_path(run_dir).is_relative_to(scratch) and runs.best_path(run_dir).is_file()
    with pytest.raises(CheckpointError, match="not kept.*which='last'"):
        checkpoints.load_run(run_dir, "best")
    model, _ = checkpoints.load_run(run_dir, "last")  # complete.json covers the slim file
    assert sum(p.numel() for p in model.parameters()) == result.metrics["params"]
    size = lambda p: p.stat().st_size  # noqa: E731
    assert size(run_dir / runs.LAST) < size(resumable) / 5  # fp16 weights, no moments

    # resuming reads the scratch checkpoint (the slim one has no optimizer state to load)
    resumed = loop.train(cfg, images, labels, run_dir=run_dir, resume=True, quiet=True)
    assert resumed.history["epoch"].tolist() == [1, 2]
    assert (resumed.val_proba == result.val_proba).all()

    monkeypatch.delenv("KAGGLE_KERNEL_RUN_TYPE")  # locally one last.pt, resumable, in the folder
    assert runs.resume_path(run_dir) == run_dir / runs.LAST


def test_a_stage_reports_its_output_size(sample_dir, isolated):
    from digit_utils import notebook as nb

    stage = nb.start("01_eda", {"data_dir": str(sample_dir), "tsne_samples": 10, "seed": 0})
    (stage.out / "runs" / "a").mkdir(parents=True)
    (stage.out / "runs" / "a" / "last.pt").write_bytes(b"x" * 1234)
    (stage.out / "table.csv").write_text("a,b\n")
    record = stage.finish(rows=1)
    on_disk = json.loads((isolated / "outputs" / "01_eda" / "metrics.json").read_text())
    assert record["output_bytes"] == on_disk["output_bytes"] == 1234 + 4


def test_a_run_list_records_runs_from_an_upstream_mount(tmp_path, isolated, monkeypatch):
    # 05 submits 04's runs, which live in 04's mounted output: its run list must name them so
    # that paths.upstream finds them again (relative_to(outputs) raised a ValueError there)
    from digit_utils.errors import DigitsError
    from digit_utils.train import runs

    root = tmp_path / "input"
    run = _kernel_mount(root, "04_train_cnn", "04_train_cnn/runs/cnn-s0-f0/config.json", "{}")
    monkeypatch.setenv("DIGITS_KAGGLE_INPUT", str(root))
    monkeypatch.setenv("KAGGLE_KERNEL_RUN_TYPE", "Batch")
    listed = tmp_path / "runs.json"
    runs.save_run_list({"cnn-s0": [run.parent]}, listed)
    recorded = json.loads(listed.read_text())["models"]
    assert recorded == {"cnn-s0": ["04_train_cnn/runs/cnn-s0-f0"]}
    assert paths.upstream("04_train_cnn/runs/cnn-s0-f0") == run.parent
    with pytest.raises(DigitsError, match="outside the outputs folder"):
        runs.save_run_list({"x": [tmp_path / "elsewhere"]}, listed)
