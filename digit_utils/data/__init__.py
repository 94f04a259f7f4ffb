"""The competition files: where they come from, their format and checks, their arrays, and the
submission. Notebooks and the CLI use the names below; the modules behind them are
``sources`` (locate, download, zips, the offline sample), ``checks`` (the format, row-by-row
errors), ``arrays`` (cached uint8 arrays, fingerprints), ``archive`` and ``submission``.
"""

from digit_utils.data.arrays import (
    copy_subset,
    data_fingerprint,
    load_test,
    load_test_labels,
    load_train,
)
from digit_utils.data.checks import (
    FILES,
    SAMPLE_TEST_LABELS,
    TEST_HEADER,
    TRAIN_HEADER,
    validate_csv,
)
from digit_utils.data.sources import (
    DataSource,
    download_competition,
    extract_zip,
    locate,
    make_sample,
    validate,
)

__all__ = [
    "FILES",
    "SAMPLE_TEST_LABELS",
    "TEST_HEADER",
    "TRAIN_HEADER",
    "DataSource",
    "copy_subset",
    "data_fingerprint",
    "download_competition",
    "extract_zip",
    "load_test",
    "load_test_labels",
    "load_train",
    "locate",
    "make_sample",
    "validate",
    "validate_csv",
]
