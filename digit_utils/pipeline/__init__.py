"""`digits pipeline`: the numbered notebooks run headless with papermill.

``request`` checks what will run (notebooks, selection, parameters from ``profiles``) before any
kernel starts; ``runner`` runs them; ``record`` writes and reads ``outputs/pipeline.json``.
"""

from digit_utils.pipeline.record import RECORD
from digit_utils.pipeline.request import declared_parameters, discover_notebooks, select
from digit_utils.pipeline.runner import PipelineError, run_pipeline

__all__ = [
    "RECORD",
    "PipelineError",
    "declared_parameters",
    "discover_notebooks",
    "run_pipeline",
    "select",
]
