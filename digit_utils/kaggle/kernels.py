"""Every notebook as a self-contained Kaggle kernel: metadata, the inlined package, build (a
built kernel on Kaggle: :mod:`remote`; run here as Kaggle would: :mod:`local_run`).

``kaggle kernels push`` uploads the notebook file and nothing else, and our kernels run with the
internet off, so a built kernel notebook starts with ``%%writefile`` cells that recreate
``digit_utils`` (every file of it, as it is at build time) in the kernel's scratch space (not in
/kaggle/working, whose files become the kernel's output and are mounted into every downstream
kernel), followed by the original notebook's cells, unchanged. Metadata and command lines are pure
functions; the few functions that write or run something are thin.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from pathlib import Path

from digit_utils import __version__, atomic, paths, stages
from digit_utils.errors import DigitsError, KaggleError
from digit_utils.kaggle import client as kaggle

SLUG_PREFIX = "digit-recognizer-"  # every kernel slug starts so (kernel_slug of the title prefix)
# Two T4s (sm_75). Kaggle's current image ships a torch without sm_60 kernels, so a P100 (what a
# kernel gets when no accelerator is named) fails at the first CUDA operation.
ACCELERATOR = "NvidiaTeslaT4"  # `kaggle kernels push --accelerator` and metadata `machine_shape`
REFUSED_ACCELERATORS = {
    "NvidiaTeslaP100": "Kaggle's current image has no torch kernels for the P100 (sm_60): the "
    "kernel would fail at its first CUDA operation; use NvidiaTeslaT4",
}
MIN_CLI = "1.8.4"  # the first kaggle CLI with `kernels push --accelerator` and `machine_shape`
INLINE_TAG = "digit_utils-inline"  # marks the cells the builder adds
METADATA_FILE = "kernel-metadata.json"
# The package files a kernel needs; caches and editor debris stay behind.
INLINE_SUFFIXES = (".py", ".json", ".yaml", ".yml", ".txt")

# --------------------------------------------------------------------------------------------
# Pure builders


# The one rule of a notebook's kernel title and slug lives in paths (a kernel names the mount of
# its upstream's output by it); these names keep the kernel API in one place.
kernel_title = paths.kernel_title
kernel_slug = paths.kernel_slug


def kernel_metadata(notebook: str | Path, username: str, *, public: bool = False) -> dict:
    """The ``kernel-metadata.json`` of a notebook's kernel."""
    if not username or not re.fullmatch(r"[A-Za-z0-9_-]+", username):
        raise KaggleError(f"invalid Kaggle user name {username!r}")
    stem = Path(notebook).stem
    spec = stages.STAGES.get(stem)
    gpu, needs = (spec.gpu, spec.upstream) if spec else (False, ())
    meta = {
        "id": f"{username}/{kernel_slug(stem)}",
        "title": kernel_title(stem),
        "code_file": f"{stem}.ipynb",
        "language": "python",
        "kernel_type": "notebook",
        "is_private": not public,
        "enable_gpu": gpu,
        "enable_tpu": False,
        "enable_internet": False,
        "dataset_sources": [],
        "competition_sources": [kaggle.COMPETITION],
        "kernel_sources": [f"{username}/{kernel_slug(up)}" for up in needs],
        "model_sources": [],
    }
    if gpu:  # without it Kaggle may hand the kernel a P100, which today's image cannot use
        meta["machine_shape"] = ACCELERATOR
    return meta


def package_sources(package_dir: Path = paths.PACKAGE_DIR) -> dict[str, str]:
    """Every file of the package a kernel needs, ``{"digit_utils/x.py": text}``, sorted."""
    files = sorted(
        p
        for p in package_dir.rglob("*")
        if p.is_file() and p.suffix in INLINE_SUFFIXES and "__pycache__" not in p.parts
    )
    root = package_dir.parent
    return {p.relative_to(root).as_posix(): p.read_text(encoding="utf-8") for p in files}


def sources_fingerprint(sources: dict[str, str]) -> str:
    h = hashlib.blake2b(digest_size=6)
    for name, text in sorted(sources.items()):
        h.update(name.encode() + b"\0" + text.encode() + b"\0")
    return h.hexdigest()


def _cell(kind: str, source: str, *, hide: bool = False) -> dict:
    import nbformat

    make = nbformat.v4.new_code_cell if kind == "code" else nbformat.v4.new_markdown_cell
    cell = make(source)
    cell.metadata["tags"] = [INLINE_TAG]
    if hide:  # Kaggle's viewer folds these away; the story starts with the original cells
        cell.metadata["_kg_hide-input"] = True
        cell.metadata["_kg_hide-output"] = True
    return cell


# Where the package is written: scratch space, by the rule of paths.kaggle_temp_root (which
# cannot be imported before the package exists), so it is imported but never saved as output.
_LOCATE = """\
import os, tempfile

_INLINE = os.path.join(
    os.environ.get("DIGITS_KAGGLE_TEMP")
    or ("/kaggle/temp" if os.path.isdir("/kaggle/temp") else tempfile.gettempdir()),
    "digit_utils-{FINGERPRINT}",
)
for _d in {FOLDERS}:
    os.makedirs(os.path.join(_INLINE, _d), exist_ok=True)
"""

# Makes the freshly written copy win over any installed digit_utils and proves that it did.
_ACTIVATE = """\
import importlib, sys
from pathlib import Path

sys.dont_write_bytecode = True  # no __pycache__ beside the inlined copy
sys.path.insert(0, _INLINE)
for _name in [m for m in sys.modules if m.split(".")[0] == "digit_utils"]:
    del sys.modules[_name]
importlib.invalidate_caches()
import digit_utils

assert Path(digit_utils.__file__).resolve().parent == (Path(_INLINE) / "digit_utils").resolve(), (
    f"imported {digit_utils.__file__}, not the inlined copy"
)
print(f"digit_utils {digit_utils.__version__} ({FINGERPRINT}) from {digit_utils.__file__}")
"""


def _write_cell(name: str, text: str) -> str:
    """The cell that writes one package file. IPython refuses ``%%writefile`` with an empty body
    (a UsageError that stops the kernel), so an empty file is written in Python."""
    if not text.strip():
        return f'open(os.path.join(_INLINE, "{name}"), "w").write({text!r})  # an empty {name}'
    return f'%%writefile "{{_INLINE}}/{name}"\n{text}'


def kernel_notebook(nb, sources: dict[str, str], *, notebook_name: str):
    """The self-contained kernel notebook: intro, package cells, then ``nb``'s cells unchanged."""
    fingerprint = sources_fingerprint(sources)
    folders = sorted({str(Path(name).parent) for name in sources})
    locate = _LOCATE.replace("{FINGERPRINT}", fingerprint).replace("{FOLDERS}", repr(folders))
    intro = (
        f"## Self-contained Kaggle kernel of `{notebook_name}`\n\n"
        f"`kaggle kernels push` uploads only this notebook and the kernel runs with the internet "
        f"off, so the next {len(sources) + 2} code cells recreate the `digit_utils` package "
        f"(version {__version__}, source fingerprint `{fingerprint}`, {len(sources)} files) in "
        "scratch space outside `/kaggle/working` (so it is not saved as the kernel's output) with "
        "`%%writefile`, then import it from there. The "
        f"original notebook follows them unchanged. Built by `digits kaggle kernel build`; "
        "rebuild rather than edit these cells."
    )
    cells = [
        _cell("markdown", intro),
        _cell("code", locate),
    ]
    cells += [_cell("code", _write_cell(n, t), hide=True) for n, t in sources.items()]
    cells.append(_cell("code", _ACTIVATE.replace("{FINGERPRINT}", fingerprint)))
    out = copy.deepcopy(nb)
    out.cells = cells + out.cells
    # Kaggle runs notebooks on its own Python 3 kernel, whatever this one was saved with.
    out.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    out.metadata.setdefault("language_info", {})["name"] = "python"
    return out


def check_accelerator(accelerator: str) -> str:
    """The accelerator, or KaggleError saying why it cannot run our kernels."""
    if reason := REFUSED_ACCELERATORS.get(accelerator):
        raise KaggleError(f"--accelerator {accelerator}: {reason}")
    return accelerator


def push_args(kernel_dir: str | Path, *, gpu: bool, accelerator: str = ACCELERATOR) -> list[str]:
    """The ``kaggle`` arguments that push a built kernel (and pick its accelerator)."""
    check_accelerator(accelerator)
    args = ["kernels", "push", "-p", str(kernel_dir)]
    return args + ["--accelerator", accelerator] if gpu else args


def kernel_ref(ref: str, username: str | None) -> str:
    """``owner/slug`` from ``owner/slug``, a bare slug, or a notebook stem (``04_train_cnn``)."""
    if "/" in ref:
        return ref
    if not username:
        raise KaggleError(
            f"{ref!r} names no owner and no Kaggle user name is known: write OWNER/SLUG "
            f"({kaggle.USERNAME_SOURCES})"
        )
    if ref.startswith(SLUG_PREFIX):
        return f"{username}/{ref}"
    stems = sorted({*stages.STAGES, *(p.stem for p in paths.notebooks_dir().glob("*.ipynb"))})
    return f"{username}/{kernel_slug(stages.match(stems, ref))}"


# --------------------------------------------------------------------------------------------
# Side effects: finding notebooks, writing kernels, calling the CLI


def find_notebooks(names: list[str] | None = None) -> list[Path]:
    """Notebook files from paths, stems or prefixes (``03``); all of notebooks/ when none given."""
    folder = paths.notebooks_dir()
    known = sorted(folder.glob("*.ipynb"))
    if not names:
        if not known:
            raise DigitsError(f"no notebooks in {folder}")
        return known
    found = []
    for name in names:
        path = Path(name)
        if path.suffix == ".ipynb" and path.is_file():
            found.append(path)
        else:
            found.append(folder / f"{stages.match([p.stem for p in known], name)}.ipynb")
    return found


def build_kernel(
    notebook: str | Path, username: str, *, public: bool = False, dest: Path | None = None
) -> Path:
    """Write ``outputs/kernels/<slug>/`` (kernel notebook + metadata); returns that folder."""
    import nbformat

    notebook = Path(notebook)
    try:
        nb = nbformat.read(notebook, as_version=4)
    except Exception as e:  # the user's file: not JSON (ValueError), `[]` (AttributeError),
        why = " ".join(f"{e.__class__.__name__}: {e}".split())  # cells a string (ValidationError)
        raise DigitsError(f"{notebook}: cannot read notebook ({why[:200]})") from None
    meta = kernel_metadata(notebook, username, public=public)
    built = kernel_notebook(nb, package_sources(), notebook_name=notebook.name)
    folder = Path(dest or paths.outputs_dir() / "kernels" / kernel_slug(notebook))
    folder.mkdir(parents=True, exist_ok=True)
    atomic.write_text(nbformat.writes(built) + "\n", folder / meta["code_file"])
    atomic.write_json(meta, folder / METADATA_FILE)
    return folder


def read_metadata(kernel_dir: str | Path) -> dict:
    path = Path(kernel_dir) / METADATA_FILE
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise DigitsError(
            f"{path}: not a built kernel ({e}); run `digits kaggle kernel build`"
        ) from None
