"""A built kernel run here as Kaggle would run it: papermill in a stand-in /kaggle/working, with
a stand-in /kaggle/input, no credentials, and the packages Kaggle's image lacks made unimportable.
The tests chain the stages this way; users can too, before spending GPU quota.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

from digit_utils.errors import DigitsError
from digit_utils.kaggle.kernels import read_metadata


@contextlib.contextmanager
def _kaggle_environment(
    input_root: Path, working_dir: Path, temp_dir: Path | None, missing: tuple[str, ...]
):
    """os.environ as a batch kernel sees it, for the kernel process papermill starts."""
    saved = dict(os.environ)
    with tempfile.TemporaryDirectory(prefix="kaggle-missing-") as stubs:
        temp_dir = temp_dir or Path(stubs) / "kaggle-temp"  # stands in for /kaggle/temp
        temp_dir.mkdir(parents=True, exist_ok=True)
        for module in missing:  # packages Kaggle's image does not promise: importing them fails
            (Path(stubs) / module).mkdir()
            (Path(stubs) / module / "__init__.py").write_text(
                f"raise ImportError('{module} is not installed in the Kaggle image')\n"
            )
        for var in ("DIGITS_ROOT", "DIGITS_OUTPUTS", "DIGITS_DATA_DIR", "KAGGLE_USERNAME"):
            os.environ.pop(var, None)
        for var in ("KAGGLE_KEY", "KAGGLE_API_TOKEN"):  # a kernel never holds your token
            os.environ.pop(var, None)
        os.environ.update(
            KAGGLE_KERNEL_RUN_TYPE="Batch",
            DIGITS_KAGGLE_INPUT=str(input_root),
            DIGITS_KAGGLE_WORKING=str(working_dir),
            DIGITS_KAGGLE_TEMP=str(temp_dir),
            KAGGLE_CONFIG_DIR=str(Path(stubs) / "no-kaggle-config"),
            PYTHONPATH=os.pathsep.join([stubs, *filter(None, [saved.get("PYTHONPATH")])]),
        )
        try:
            yield
        finally:
            os.environ.clear()
            os.environ.update(saved)


def run_kernel_locally(
    kernel_dir: str | Path,
    input_root: str | Path,
    working_dir: str | Path,
    parameters: dict | None = None,
    *,
    missing_modules: tuple[str, ...] = ("mlxtend",),
    timeout: float | None = None,
    temp_dir: str | Path | None = None,
) -> Path:
    """Execute a built kernel with papermill as Kaggle would run it; returns the executed notebook.

    The kernel runs in ``working_dir`` (standing in for /kaggle/working) with
    KAGGLE_KERNEL_RUN_TYPE=Batch, ``input_root`` standing in for /kaggle/input, ``temp_dir``
    for /kaggle/temp (default: a folder removed afterwards), no Kaggle credentials, and
    ``missing_modules`` made unimportable.
    """
    import papermill
    from papermill.exceptions import PapermillExecutionError

    kernel_dir, working_dir = Path(kernel_dir), Path(working_dir).resolve()
    code = kernel_dir / read_metadata(kernel_dir)["code_file"]
    working_dir.mkdir(parents=True, exist_ok=True)
    executed = working_dir / "__notebook__.ipynb"
    temp_dir = Path(temp_dir).resolve() if temp_dir else None
    with _kaggle_environment(Path(input_root).resolve(), working_dir, temp_dir, missing_modules):
        try:
            papermill.execute_notebook(
                str(code),
                str(executed),
                parameters=parameters or {},
                kernel_name="python3",
                cwd=str(working_dir),
                progress_bar=False,
                execution_timeout=timeout,
            )
        except PapermillExecutionError as e:
            raise DigitsError(
                f"{code.name} failed in cell {e.exec_count}: {e.ename}: {e.evalue} "
                f"(executed notebook: {executed})"
            ) from None
    return executed
