"""The papermill runner: parameter routing, selection, the run record, failure reporting.

Toy notebooks stand in for the real ones. Each execution costs a kernel start (2-4 s), so only
three tests execute notebooks (six executions in all); everything else calls the pure parts.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest

import digit_utils
from digit_utils import cli, pipeline
from digit_utils.errors import ConfigError
from digit_utils.pipeline import PipelineError, profiles

REPO = Path(__file__).resolve().parent.parent
DIGITS = Path(sys.executable).parent / "digits"

# A code cell that records what the notebook received, in its own outputs folder.
WRITE_METRICS = """\
import json
from digit_utils import paths
record = {{"metrics": {{{fields}}}, "params": {{}}}}
(paths.stage_dir("{stem}") / "metrics.json").write_text(json.dumps(record))"""


def make_notebook(folder: Path, stem: str, parameters: str, *cells: str) -> Path:
    """A notebook with a markdown title, a cell tagged `parameters` and the given code cells."""
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    params = nbformat.v4.new_code_cell(parameters)
    params.metadata["tags"] = ["parameters"]
    nb.cells = [nbformat.v4.new_markdown_cell(f"# {stem}"), params]
    nb.cells += [nbformat.v4.new_code_cell(c) for c in cells]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{stem}.ipynb"
    nbformat.write(nb, path)
    return path


@pytest.fixture
def toy(isolated, sample_dir, monkeypatch) -> Path:
    """Three toy notebooks in <root>/notebooks, a quick profile, and the sample as the data."""
    folder = isolated / "notebooks"
    make_notebook(
        folder,
        "01_alpha",
        'data_dir = ""\nscale = 1  # a multiplier',
        WRITE_METRICS.format(stem="01_alpha", fields='"data_dir": data_dir, "scale": scale'),
    )
    make_notebook(
        folder,
        "02_beta",
        "epochs = 1\nlr = 0.5\nfail = False\nname = 'b'",
        "print('reached the cell before the failure')",
        "if fail:\n    raise ValueError(f'asked to fail after {epochs} epochs')",
        WRITE_METRICS.format(
            stem="02_beta", fields='"epochs": epochs, "lr": lr, "fail": fail, "name": name'
        ),
    )
    make_notebook(
        folder,
        "03_gamma",
        "label = 'x'\nscale = 1",
        WRITE_METRICS.format(stem="03_gamma", fields='"label": label, "scale": scale'),
    )
    (folder / "notes.ipynb").write_text("not part of the pipeline")  # no NN_ prefix: ignored
    (isolated / "params").mkdir()
    (isolated / "params" / "quick.yaml").write_text(
        "scale: 2\n02_beta:\n  epochs: 3\n03_gamma:\n  scale: 5\n"
    )
    monkeypatch.setenv("DIGITS_DATA_DIR", str(sample_dir))
    return folder


# --------------------------------------------------------------------------------------------
# Pure parts: discovery, profiles, -p parsing, routing, selection


def test_discover_and_declared_parameters(toy):
    found = pipeline.discover_notebooks()
    assert [p.stem for p in found] == ["01_alpha", "02_beta", "03_gamma"]
    declared = pipeline.declared_parameters(found[1])
    assert list(declared) == ["epochs", "lr", "fail", "name"]
    assert declared["lr"]["default"] == "0.5"
    with pytest.raises(ConfigError, match="nope.ipynb"):
        pipeline.declared_parameters(toy / "nope.ipynb")


def test_load_profile_by_name_or_path_and_errors(toy, isolated, tmp_path):
    assert profiles.load_profile("quick")["02_beta"] == {"epochs": 3}
    assert profiles.load_profile(None) == {}
    other = tmp_path / "mine.yaml"
    other.write_text("when: 2026-11-22\nscale: 3\n")
    # A YAML date would reach the notebook as `2026-11-22` (an int expression); it stays text.
    assert profiles.load_profile(other) == {"when": "2026-11-22", "scale": 3}
    with pytest.raises(ConfigError, match=r"unknown profile 'fast'; available: quick"):
        profiles.load_profile("fast")
    with pytest.raises(ConfigError, match="does not exist"):
        profiles.load_profile(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("scale: [1, 2\n")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        profiles.load_profile(bad)
    bad.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="bad.yaml: a profile must be a mapping"):
        profiles.load_profile(bad)


def test_parse_overrides_reads_yaml_values():
    got = profiles.parse_overrides(
        ["epochs=2", "lr=0.1", "fail=true", "name=resnet18", "03_gamma.label=7", "msg=a=b"]
        + ["wd=5e-4", "when=2026-11-22"]
    )
    assert got == {
        "epochs": 2,
        "lr": 0.1,
        "wd": 0.0005,  # PyYAML alone would give the string '5e-4'
        "when": "2026-11-22",
        "fail": True,
        "name": "resnet18",
        "03_gamma": {"label": 7},
        "msg": "a=b",
    }
    assert type(got["epochs"]) is int and type(got["lr"]) is float
    with pytest.raises(ConfigError, match="'epochs'.*key=value"):
        profiles.parse_overrides(["epochs"])


DECLARED = {
    "01_alpha": {"data_dir": {}, "scale": {}},
    "02_beta": {"epochs": {}, "lr": {}, "fail": {}, "name": {}},
    "03_gamma": {"label": {}, "scale": {}},
}


def test_route_gives_each_notebook_only_what_it_declares():
    routed = profiles.route_parameters(DECLARED, {"scale": 2, "epochs": 4}, {"label": "y"})
    assert routed == {
        "01_alpha": {"scale": 2},
        "02_beta": {"epochs": 4},
        "03_gamma": {
            "scale": 2,
            "label": "y",
        },
    }


def test_route_precedence_profile_global_section_then_p_global_section():
    stage = {"03_gamma": DECLARED["03_gamma"]}

    def label(profile, overrides):
        return profiles.route_parameters(stage, profile, overrides)["03_gamma"]["label"]

    assert label({"label": "pg"}, {}) == "pg"
    assert label({"label": "pg", "03_gamma": {"label": "pn"}}, {}) == "pn"
    # Order inside the mapping must not matter: the section still beats the global key.
    assert label({"03_gamma": {"label": "pn"}, "label": "pg"}, {}) == "pn"
    assert label({"label": "pg", "03_gamma": {"label": "pn"}}, {"label": "cg"}) == "cg"
    overrides = {"03_gamma": {"label": "cn"}, "label": "cg"}
    assert label({"label": "pg", "03_gamma": {"label": "pn"}}, overrides) == "cn"
    # A two-digit prefix names the notebook too (`-p 03.label=...`).
    assert label({}, profiles.parse_overrides(["03.label=z"])) == "z"


def test_route_rejects_unknown_keys_naming_them_and_listing_declared():
    with pytest.raises(ConfigError) as e:
        profiles.route_parameters(DECLARED, {}, {"epoch": 2})
    assert "'epoch'" in str(e.value) and "02_beta: epochs, lr, fail, name" in str(e.value)
    with pytest.raises(ConfigError, match=r"profile parameter '02_beta.label' is unknown.*epochs"):
        profiles.route_parameters(DECLARED, {"02_beta": {"label": 1}}, {})
    with pytest.raises(ConfigError, match=r"section '04_delta' names no notebook.*01_alpha"):
        profiles.route_parameters(DECLARED, {"04_delta": {"x": 1}}, {})
    with pytest.raises(ConfigError, match="'02_beta' must be a mapping"):
        profiles.route_parameters(DECLARED, {"02_beta": 3}, {})


def test_route_with_a_selection_skips_profile_keys_of_other_notebooks_only():
    chosen = {"03_gamma": DECLARED["03_gamma"]}
    others = {k: v for k, v in DECLARED.items() if k != "03_gamma"}
    # A profile is written for the whole pipeline: its keys for 02 are fine when 02 is not run.
    profile = {"epochs": 9, "02_beta": {"lr": 0.1}, "scale": 2}
    assert profiles.route_parameters(chosen, profile, {}, unselected=others) == {
        "03_gamma": {"scale": 2}
    }
    # ... but a -p key meant for a notebook that will not run is a mistake.
    with pytest.raises(ConfigError, match="'epochs' is declared only by 02_beta"):
        profiles.route_parameters(chosen, {}, {"epochs": 9}, unselected=others)
    with pytest.raises(ConfigError, match="targets 02_beta, which is not among the selected"):
        profiles.route_parameters(chosen, {}, {"02_beta": {"lr": 1}}, unselected=others)
    with pytest.raises(ConfigError, match="'nope' is unknown"):
        profiles.route_parameters(chosen, {"nope": 1}, {}, unselected=others)


def test_select_by_prefix_or_stem(toy):
    nbs = pipeline.discover_notebooks()

    def stems(**kw):
        return [p.stem for p in pipeline.select(nbs, **kw)]

    assert stems() == ["01_alpha", "02_beta", "03_gamma"]
    assert stems(only="03,01") == ["01_alpha", "03_gamma"]  # pipeline order, not argument order
    assert stems(only=["02_beta"]) == ["02_beta"]
    assert stems(start="02") == ["02_beta", "03_gamma"]
    assert stems(start="02_beta", only="01,03") == ["03_gamma"]
    with pytest.raises(ConfigError, match=r"'04' names no notebook; .*01_alpha, 02_beta"):
        stems(only="01,04")
    with pytest.raises(ConfigError, match="leaves no notebook"):
        stems(start="03", only="01")


# --------------------------------------------------------------------------------------------
# Nothing runs when the request is wrong, or when there is nothing to run


def test_unknown_key_is_rejected_before_anything_runs(toy, isolated, capsys, monkeypatch):
    from digit_utils import data

    def no_locate(*a, **k):
        raise AssertionError("data.locate ran before the parameters were checked")

    monkeypatch.setattr(data, "locate", no_locate)
    assert cli.main(["pipeline", "-p", "epocs=2"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: -p parameter 'epocs' is unknown")
    assert "02_beta: epochs, lr, fail, name" in err and "Traceback" not in err
    outputs = isolated / "outputs"
    assert not (outputs / "pipeline.json").exists() and not (outputs / "notebooks").exists()


def test_no_notebooks_is_an_error(isolated, capsys):
    assert cli.main(["pipeline"]) == 1
    assert "no notebooks folder: nothing to run" in capsys.readouterr().err
    (isolated / "notebooks").mkdir()
    assert cli.main(["pipeline"]) == 1
    assert "no notebooks (NN_*.ipynb) in" in capsys.readouterr().err
    assert not (isolated / "outputs").exists()


# --------------------------------------------------------------------------------------------
# Real runs (kernel start-ups): six executions in all


def test_run_pipeline_routes_records_and_renders(toy, isolated, sample_dir, capsys):
    # (stale outputs of an earlier run must not be reported as this run's)
    stale = isolated / "outputs" / "03_gamma"
    stale.mkdir(parents=True)
    (stale / "metrics.json").write_text('{"metrics": {"stale": true}}')
    os.utime(stale / "metrics.json", (1e9, 1e9))

    record = pipeline.run_pipeline(
        overrides=["epochs=2", "lr=0.1", "fail=false", "name=resnet18", "03_gamma.label=7"]
    )
    out = isolated / "outputs"
    on_disk = json.loads((out / "pipeline.json").read_text())
    assert on_disk == json.loads(json.dumps(record))
    assert record["status"] == "ok" and record["profile"] == "quick"
    assert record["version"] == digit_utils.__version__ and record["started"].startswith("20")
    assert record["data"] == {"path": str(sample_dir), "origin": "env", "is_sample": True}
    by_name = {e["name"]: e for e in record["notebooks"]}
    assert list(by_name) == ["01_alpha", "02_beta", "03_gamma"]
    assert all(e["status"] == "ok" and e["seconds"] > 0 for e in by_name.values())
    assert record["seconds"] >= sum(e["seconds"] for e in by_name.values())

    # Only declared parameters, with the profile < -p precedence, reached each kernel intact.
    alpha, beta, gamma = (by_name[s] for s in ("01_alpha", "02_beta", "03_gamma"))
    assert alpha["parameters"] == {"scale": 2, "data_dir": str(sample_dir)}
    assert alpha["metrics"] == {"data_dir": str(sample_dir), "scale": 2}
    assert alpha["data"] == record["data"] and beta["data"] is None
    assert beta["parameters"] == {"epochs": 2, "lr": 0.1, "fail": False, "name": "resnet18"}
    assert beta["metrics"] == beta["parameters"]  # types survived: int, float, bool, str
    assert gamma["parameters"] == {"scale": 5, "label": 7}
    assert gamma["metrics"] == {"label": 7, "scale": 5}  # this run's, not the stale file

    for stem in by_name:
        executed = out / "notebooks" / f"{stem}.ipynb"
        assert by_name[stem]["executed"] == str(executed)
        tags = [c.metadata.get("tags", []) for c in nbformat.read(executed, 4).cells]
        assert ["injected-parameters"] in tags
        html = out / "reports" / f"{stem}.html"
        assert by_name[stem]["report"] == str(html) and "<html" in html.read_text()[:2000]
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temp files left

    printed = capsys.readouterr().out
    assert "[02_beta] running with epochs=2, lr=0.1" in printed
    for stem in by_name:
        assert f"[{stem}] ok in " in printed


def test_failure_names_notebook_and_cell_keeps_partial_notebook_and_earlier_outputs(
    toy, isolated, capsys
):
    code = cli.main(["pipeline", "--only", "01,02,03", "-p", "fail=yes", "--profile", "quick"])
    assert code == 1
    captured = capsys.readouterr()
    err = captured.err[captured.err.index("error: ") :]  # after papermill's progress bars
    assert err.startswith("error: 02_beta failed in cell 3 (In [4]): ValueError: asked to fail")
    assert "after 3 epochs" in err and "Traceback" not in err
    assert "[02_beta] FAILED after" in captured.out and "[03_gamma]" not in captured.out

    out = isolated / "outputs"
    record = json.loads((out / "pipeline.json").read_text())
    assert record["status"] == "failed"
    status = {e["name"]: e["status"] for e in record["notebooks"]}
    assert status == {"01_alpha": "ok", "02_beta": "failed", "03_gamma": "skipped"}
    beta = record["notebooks"][1]
    assert beta["error"] == {
        "cell_index": 3,
        "exec_count": 4,
        "ename": "ValueError",
        "evalue": "asked to fail after 3 epochs",
        "source": "if fail:",
    }
    assert beta["metrics"] is None  # the cell that writes them never ran

    # The partly executed notebook is kept, with the output of the cell before the failure ...
    partial = nbformat.read(out / "notebooks" / "02_beta.ipynb", 4)
    text = json.dumps(partial)
    assert "reached the cell before the failure" in text and "ValueError" in text
    assert (out / "reports" / "02_beta.html").is_file()
    # ... and what the earlier notebook wrote is intact; the skipped one wrote nothing.
    assert json.loads((out / "01_alpha" / "metrics.json").read_text())["metrics"]["scale"] == 2
    assert (out / "notebooks" / "01_alpha.ipynb").is_file()
    assert not (out / "notebooks" / "03_gamma.ipynb").exists()


def test_cli_from_another_directory_with_only_and_a_profile_path(toy, isolated, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    profile = elsewhere / "mine.yaml"
    profile.write_text("label: from-profile\n")
    done = subprocess.run(
        [str(DIGITS), "pipeline", "--only", "03_gamma", "--profile", "mine.yaml", "--no-html"],
        cwd=elsewhere,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "[03_gamma] ok in" in done.stdout
    record = json.loads((isolated / "outputs" / "pipeline.json").read_text())
    status = {e["name"]: e["status"] for e in record["notebooks"]}
    assert status == {"01_alpha": "skipped", "02_beta": "skipped", "03_gamma": "ok"}
    assert record["notebooks"][2]["metrics"] == {"label": "from-profile", "scale": 1}
    assert not (isolated / "outputs" / "reports").exists()


def test_a_kernel_that_cannot_start_is_a_recorded_failure(toy, isolated):
    nb = nbformat.read(toy / "03_gamma.ipynb", 4)
    nb.metadata["kernelspec"]["name"] = "no-such-kernel"  # kernel_name comes from the metadata
    nbformat.write(nb, toy / "03_gamma.ipynb")
    with pytest.raises(PipelineError, match="03_gamma failed: NoSuchKernel.*no-such-kernel"):
        pipeline.run_pipeline(only="03", profile=None, overrides={"label": "z"})
    record = json.loads((isolated / "outputs" / "pipeline.json").read_text())
    gamma = record["notebooks"][2]
    assert record["status"] == "failed" and gamma["status"] == "failed"
    assert gamma["error"]["ename"] == "NoSuchKernel"
    # papermill writes the parameterised notebook before it starts the kernel; it is kept
    assert ["injected-parameters"] in [
        c.metadata.get("tags") for c in nbformat.read(gamma["executed"], 4).cells
    ]


def test_a_killed_pipeline_is_reported_interrupted_and_a_rerun_completes(tmp_path, sample_dir):
    """SIGKILL leaves pipeline.json saying "running"; --status and the next run say what died."""
    root = tmp_path / "proj"
    make_notebook(root / "notebooks", "01_wait", "seconds = 0", "import time\ntime.sleep(seconds)")
    make_notebook(root / "notebooks", "02_after", "x = 1", "print(x)")
    (root / "params").mkdir()
    (root / "params" / "quick.yaml").write_text("{}\n")
    env = {**os.environ, "DIGITS_ROOT": str(root), "DIGITS_DATA_DIR": str(sample_dir)}
    cli_args = [sys.executable, "-m", "digit_utils.cli", "pipeline", "--no-html"]
    record = root / "outputs" / "pipeline.json"
    proc = subprocess.Popen(
        [*cli_args, "-p", "01_wait.seconds=120"], env=env, start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not (record.exists() and notebook_status(record) == "running"):
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.2)
        time.sleep(2)  # inside the notebook's sleep
        os.killpg(proc.pid, signal.SIGKILL)  # the runner and its kernel, as `kill -9` would
        proc.wait(30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert json.loads(record.read_text())["status"] == "running"  # what the dead runner left

    status = subprocess.run([*cli_args, "--status"], env=env, capture_output=True, text=True)
    assert status.returncode == 0
    assert "pipeline interrupted" in status.stdout and f"process {proc.pid}" in status.stdout
    lines = {line.split()[0]: line.split()[1] for line in status.stdout.splitlines()[1:]}
    assert lines == {"01_wait": "interrupted", "02_after": "pending"}

    rerun = subprocess.run(cli_args, env=env, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    assert "pipeline interrupted" in rerun.stdout  # the rerun says what the last one left
    final = json.loads(record.read_text())
    assert final["status"] == "ok" and final["pid"] != proc.pid
    assert [e["status"] for e in final["notebooks"]] == ["ok", "ok"]


def notebook_status(record: Path, index: int = 0) -> str | None:
    try:
        return json.loads(record.read_text())["notebooks"][index]["status"]
    except (OSError, ValueError):  # written atomically, but it may not exist yet
        return None
