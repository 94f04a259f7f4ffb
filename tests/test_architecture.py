"""docs/architecture.md's layer table against the package's real imports: the map cannot drift."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from conftest import REPO

PACKAGE = REPO / "digit_utils"
PAGE = REPO / "docs" / "architecture.md"


def module_name(path: Path) -> str:
    """``digit_utils/train/loop.py`` -> ``train/loop``; a wing's ``__init__`` is the wing."""
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return "/".join(parts) or "__init__"


def package_modules() -> dict[str, Path]:
    return {module_name(p): p for p in PACKAGE.rglob("*.py") if p.name != "__main__.py"}


def layer_table() -> tuple[dict[str, str], dict[str, set[str]]]:
    """``({module: wing}, {wing: wings it may import})`` from the page's table."""
    text = PAGE.read_text()
    section = text.split("## The wings, as layers", 1)[1].split("\n## ", 1)[0]
    wing_of, allowed = {}, {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 4 or cells[0] in ("wing", "---") or set(cells[0]) <= {"-"}:
            continue
        wing = cells[0]
        for module in re.findall(r"`([\w/]+)`", cells[1]):
            wing_of[module] = wing
        allowed[wing] = {w.strip() for w in cells[2].split(",") if w.strip() not in ("", "—")}
    return wing_of, allowed


def imports_of(path: Path, modules: dict[str, Path]) -> set[str]:
    """Every package module ``path`` imports, at the top or inside a function."""
    here = module_name(path).split("/")
    package = here if path.name == "__init__.py" else here[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1] if node.level > 1 else package
                base = [*base, *(node.module.split(".") if node.module else [])]
            elif node.module and node.module.split(".")[0] == "digit_utils":
                base = node.module.split(".")[1:]
            else:
                continue
            for alias in node.names:
                candidate = "/".join([*base, alias.name])
                found.add(candidate if candidate in modules else "/".join(base))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "digit_utils":
                    found.add("/".join(alias.name.split(".")[1:]))
    return {m or "__init__" for m in found if (m or "__init__") in modules}


def wing(module: str, wing_of: dict[str, str]) -> str:
    return wing_of.get(module) or wing_of.get(module.split("/")[0], "?")


def test_every_module_has_a_row_and_every_row_a_module():
    wing_of, allowed = layer_table()
    modules = package_modules()
    # a wing's __init__ re-exports its own modules and belongs to the wing itself
    listed = set(wing_of) | {m for m in modules if m == "__init__" or m in allowed}
    assert sorted(set(modules) - listed) == [], "modules missing from docs/architecture.md"
    assert sorted(set(wing_of) - set(modules)) == [], "the page names modules that do not exist"
    assert all(w in allowed for deps in allowed.values() for w in deps), "an unknown wing"


def test_no_import_breaks_the_stated_layering():
    wing_of, allowed = layer_table()
    wing_of = {**wing_of, **{w: w for w in allowed if w in package_modules()}}
    modules = package_modules()
    broken = []
    for module, path in modules.items():
        if module == "__init__":
            continue
        mine = wing(module, wing_of)
        for target in imports_of(path, modules):
            theirs = wing(target, wing_of)
            if target != "__init__" and theirs != mine and theirs not in allowed[mine]:
                broken.append(f"{module} ({mine}) imports {target} ({theirs})")
    assert broken == []


def test_the_checker_sees_function_level_imports(tmp_path, monkeypatch):
    # a late import of a higher wing from a foundation is caught like a top-level one
    wing_of, allowed = layer_table()
    modules = package_modules()
    probe = PACKAGE / "stages.py"
    source = probe.read_text() + "\n\ndef _late():\n    from digit_utils.train import runs\n"
    fake = tmp_path / "digit_utils" / "stages.py"
    fake.parent.mkdir()
    fake.write_text(source)
    monkeypatch.setattr(__import__(__name__), "PACKAGE", tmp_path / "digit_utils")
    assert "train/runs" in imports_of(fake, modules)
    assert wing("train/runs", wing_of) not in allowed[wing("stages", wing_of)]


def test_no_import_cycles():
    modules = package_modules()
    graph = {m: imports_of(p, modules) - {m} for m, p in modules.items()}
    done: set[str] = set()

    def visit(m, path):
        for n in graph[m]:
            if n in path:
                pytest.fail("import cycle: " + " -> ".join([*path[path.index(n) :], n]))
            if n not in done:
                visit(n, [*path, n])
        done.add(m)

    for m in graph:
        visit(m, [m])


def test_the_page_names_real_files_and_stages():
    text = PAGE.read_text()
    for rel in re.findall(r"`(digit_utils/[\w/]+\.py)`", text):
        assert (REPO / rel).is_file(), rel
    for stem in re.findall(r"\b(\d\d_[a-z_]+)\b", text):
        if stem != "NN_name":
            assert (REPO / "notebooks" / f"{stem}.ipynb").is_file(), stem
    quick = (REPO / "params" / "quick.yaml").read_text()
    epochs = re.search(r"`params/quick.yaml` sets `epochs: (\d+)` at top level", text)
    assert epochs and re.search(rf"^epochs: {epochs.group(1)}\b", quick, re.MULTILINE)


# --------------------------------------------------------------------------------------------
# The page's "to add a notebook" recipe, followed in a copy of the project


PROBE_SPEC = """        StageSpec(
            "06_probe",
            gpu=False,
            extras={"rows": int},
            reads=(TRAINED_RUNS,),
            writes=("probe.json",),
        ),
"""


def _probe_notebook(path: Path) -> None:
    import nbformat

    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell('data_dir = ""  # the data\nrows = 5  # rows to count')
    params.metadata["tags"] = ["parameters"]
    body = (
        "from digit_utils import data\nfrom digit_utils import notebook as nb\n\n"
        'stage = nb.start("06_probe", globals())\n'
        "images, labels = data.load_train(stage.source)\n"
        'stage.save_json({"rows": min(rows, len(labels))}, "probe.json")\n'
        "stage.finish(rows=min(rows, len(labels)))"
    )
    title, code = nbformat.v4.new_markdown_cell("# 06 · probe"), nbformat.v4.new_code_cell(body)
    nb.cells = [title, params, code]
    nb.metadata["kernelspec"] = {
        "name": "python3", "display_name": "Python 3", "language": "python"
    }  # fmt: skip
    nbformat.write(nb, path)


def test_the_add_a_notebook_recipe_is_complete(tmp_path, sample_dir):
    """The three edits the page lists are all a new stage needs: the pipeline runs it, the
    kernel builder derives its upstream kernels, and the notebook tests' table covers it."""
    import shutil
    import subprocess
    import sys

    copy = tmp_path / "project"
    shutil.copytree(PACKAGE, copy / "digit_utils", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO / "notebooks", copy / "notebooks")
    (copy / "tests").mkdir()
    # edit 1: the notebook
    _probe_notebook(copy / "notebooks" / "06_probe.ipynb")
    # edit 2: its StageSpec, last in STAGES
    stages_py = copy / "digit_utils" / "stages.py"
    text = stages_py.read_text()
    end = text.index("    )\n}\n", text.index("STAGES: dict[str, StageSpec]"))
    stages_py.write_text(text[:end] + PROBE_SPEC + text[end:])
    # edit 3: its tiny parameters in the notebook tests' table
    tests_py = (REPO / "tests" / "test_notebooks.py").read_text()
    tests_py = tests_py.replace("TINY = {\n", 'TINY = {\n    "06_probe": {"rows": 3},\n', 1)
    (copy / "tests" / "test_notebooks.py").write_text(tests_py)

    tiny = copy / "tiny"
    tiny.mkdir()
    for name in ("train.csv", "test.csv", "sample_submission.csv"):
        shutil.copy(sample_dir / name, tiny / name)
    check = f"""
import ast, json, sys
from digit_utils import pipeline, stages
from digit_utils.kaggle import kernels
tiny = ast.literal_eval(open("tests/test_notebooks.py").read().split("TINY = ", 1)[1]
                        .split("\\n}}\\n", 1)[0] + "\\n}}")
stems = [p.stem for p in pipeline.discover_notebooks()]
assert stems == list(stages.STAGES) == sorted(tiny), (stems, list(tiny))
record = pipeline.run_pipeline(profile=None, only="06", render_html=False,
                               overrides={{"data_dir": {str(tiny)!r}, "rows": 3}})
assert record["status"] == "ok", record
meta = kernels.kernel_metadata("notebooks/06_probe.ipynb", "alice")
print(json.dumps({{"probe": json.load(open("outputs/06_probe/probe.json")),
                  "sources": meta["kernel_sources"]}}))
"""
    env = {
        **__import__("os").environ,
        "PYTHONPATH": str(copy),
        "DIGITS_ROOT": str(copy),
        "MPLBACKEND": "Agg",
    }
    env.pop("DIGITS_OUTPUTS", None)
    done = subprocess.run(
        [sys.executable, "-c", check], cwd=copy, env=env, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    result = __import__("json").loads(done.stdout.strip().splitlines()[-1])
    assert result["probe"] == {"rows": 3}
    assert result["sources"] == ["alice/digit-recognizer-04-train-cnn"]
