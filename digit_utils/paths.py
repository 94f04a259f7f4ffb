"""Where things live: the project root, data, outputs, and the Kaggle kernel folders."""

from __future__ import annotations

import errno
import os
import re
import stat
import tempfile
from pathlib import Path

from digit_utils.errors import DigitsError

PACKAGE_DIR = Path(__file__).resolve().parent
KAGGLE_WORKING = Path("/kaggle/working")
RUN_LIST = "runs.json"  # how a stage hands its runs to the next, in its outputs folder
KERNEL_TITLE_PREFIX = "Digit Recognizer"


def in_kaggle_kernel() -> bool:
    """True inside a Kaggle kernel (interactive or batch), which sets KAGGLE_KERNEL_RUN_TYPE."""
    return bool(os.environ.get("KAGGLE_KERNEL_RUN_TYPE"))


def kaggle_input_root() -> Path:
    """Kaggle's read-only input mount; DIGITS_KAGGLE_INPUT overrides it (tests use a temp tree)."""
    return Path(os.environ.get("DIGITS_KAGGLE_INPUT", "/kaggle/input"))


def kaggle_working_root() -> Path:
    """Kaggle's writable working folder; DIGITS_KAGGLE_WORKING overrides it."""
    return Path(os.environ.get("DIGITS_KAGGLE_WORKING", str(KAGGLE_WORKING)))


def kernel_title(notebook: str | Path) -> str:
    """A notebook's Kaggle kernel title, e.g. ``Digit Recognizer 04 train cnn``."""
    return f"{KERNEL_TITLE_PREFIX} {Path(notebook).stem.replace('_', ' ')}"


def kernel_slug(notebook: str | Path) -> str:
    """The slug Kaggle derives from the title; the kernel's output mounts at <input>/<slug>/."""
    return re.sub(r"[^a-z0-9]+", "-", kernel_title(notebook).lower()).strip("-")


def project_root() -> Path:
    """The folder holding data/ and outputs/.

    DIGITS_ROOT wins; then the source checkout this package sits in; then the kernel's working
    folder on Kaggle; otherwise the current directory (a non-editable install).
    """
    if env := os.environ.get("DIGITS_ROOT"):
        return Path(env).resolve()
    checkout = PACKAGE_DIR.parent
    if (checkout / "pyproject.toml").is_file():  # a source checkout (editable install)
        return checkout
    if in_kaggle_kernel():
        return kaggle_working_root()
    return Path.cwd().resolve()


def data_dir() -> Path:
    return project_root() / "data"


def raw_dir() -> Path:
    """Where downloaded (or copied) competition files go."""
    return data_dir() / "raw"


def sample_dir() -> Path:
    """Where the embedded offline sample is written."""
    return data_dir() / "sample"


def kaggle_temp_root() -> Path:
    """Scratch space in a kernel that is not saved as its output: /kaggle/temp when the image has
    it, else the system temp dir; DIGITS_KAGGLE_TEMP overrides it."""
    if env := os.environ.get("DIGITS_KAGGLE_TEMP"):
        return Path(env)
    kaggle_temp = Path("/kaggle/temp")
    return kaggle_temp if kaggle_temp.is_dir() else Path(tempfile.gettempdir())


def cache_dir() -> Path:
    """Parsed-array caches for CSVs that sit in read-only folders. In a Kaggle kernel they go to
    scratch space: under /kaggle/working they would become the kernel's output (about 55 MB)
    and be mounted into every downstream kernel."""
    if in_kaggle_kernel():
        return kaggle_temp_root() / "digit_utils-cache"
    return data_dir() / "cache"


def outputs_dir() -> Path:
    """Everything the pipeline generates; DIGITS_OUTPUTS overrides it."""
    if env := os.environ.get("DIGITS_OUTPUTS"):
        return Path(env).resolve()
    return project_root() / "outputs"


def notebooks_dir() -> Path:
    return project_root() / "notebooks"


def stage_dir(name: str) -> Path:
    """A notebook's own outputs folder (``outputs/<name>``), created on demand."""
    folder = outputs_dir() / name
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def runs_dir(stage: str | None = None) -> Path:
    """Where training runs live, one folder each. The one rule: a notebook's runs live in its
    own outputs folder (``outputs/<stage>/runs/``); runs trained outside any notebook in
    ``outputs/runs/``."""
    return outputs_dir() / stage / "runs" if stage else outputs_dir() / "runs"


def all_runs_dirs() -> list[Path]:
    """Every folder :func:`runs_dir` can name that exists."""
    return [p for p in [runs_dir(), *sorted(outputs_dir().glob("*/runs"))] if p.is_dir()]


def upstream(relative: str) -> Path:
    """An earlier stage's output (e.g. ``"runs"`` or ``"02_augmentation/policy.json"``).

    Locally that is ``outputs/<relative>``. In a Kaggle kernel an upstream kernel's output
    folder is mounted read-only at ``/kaggle/input/<kernel-slug>/`` (its ``outputs/`` inside), so
    that is searched too. Raises DigitsError naming what was looked for and where.
    """
    candidates = [outputs_dir() / relative]
    if in_kaggle_kernel():
        root = kaggle_input_root()
        # <slug>/, and the newer notebooks/<owner>/<slug>/ mount layout
        for pattern in ("*", "*/*", "*/*/*"):
            candidates += sorted(root.glob(f"{pattern}/outputs/{relative}"))
    for path in candidates:
        if path.exists():
            return path
    if in_kaggle_kernel():
        raise DigitsError(missing_in_kernel(relative))
    where = ", ".join(str(c) for c in candidates[:3])
    raise DigitsError(f"{relative} not found (looked in {where}); run the notebook that makes it")


def outputs_relative(path: str | Path) -> str:
    """``path`` as :func:`upstream` finds it again: relative to the outputs folder or, inside a
    Kaggle kernel, to the outputs of the upstream kernel whose mount holds it."""
    path = Path(path).resolve()
    roots = [outputs_dir()]
    if in_kaggle_kernel() and path.is_relative_to(kaggle_input_root().resolve()):
        roots += [p for p in path.parents if p.name == "outputs"][:1]
    for root in roots:
        if path.is_relative_to(root):
            return path.relative_to(root).as_posix()
    raise DigitsError(
        f"{path}: a run folder outside the outputs folder ({outputs_dir()}) cannot be recorded "
        "in a run list; train it under outputs/ or list it with --run"
    )


def missing_in_kernel(relative: str) -> str:
    """Why a kernel lacks an upstream stage's file: the upstream kernel and where it mounts."""
    stage = relative.split("/", 1)[0]
    slug, root = kernel_slug(stage), kaggle_input_root()
    return (
        f"{relative} is missing in this Kaggle kernel: it is the output of the {stage} kernel "
        f"({slug}), expected at {root}/{slug}/outputs/{relative} (or under "
        f"{root}/notebooks/<owner>/{slug}/). Add {slug} as a kernel source (`digits kaggle "
        f"kernel build` does) and push this kernel once {stage} has completed (`digits kaggle "
        "kernel push --wait`)"
    )


def not_a_file(path: Path) -> str:
    """What ``path`` is, for a message, when it is not a regular file we can read: missing, a
    folder, a named pipe (reading it would wait for ever), a device, a dangling or looping link."""
    try:
        mode = path.stat().st_mode
    except OSError as e:
        if e.errno == errno.ELOOP:
            return "is a symbolic link that loops (it points back to itself)"
        if path.is_symlink():
            return f"is a symbolic link to {os.readlink(path)}, which does not exist"
        if isinstance(e, FileNotFoundError):
            return "file not found"
        return f"cannot be read ({e.strerror})"
    linked = f"links to {path.resolve()}, which " if path.is_symlink() else ""
    for test, what in (
        (stat.S_ISDIR, "is a folder"),
        (stat.S_ISFIFO, "is a named pipe (FIFO)"),
        (stat.S_ISCHR, "is a device"),
        (stat.S_ISBLK, "is a device"),
        (stat.S_ISSOCK, "is a socket"),
    ):
        if test(mode):
            return f"{linked}{what}, not a file"
    return f"{linked}is not a regular file"
