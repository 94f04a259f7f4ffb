"""`digits data locate|download|sample|validate`."""

from __future__ import annotations

import json
from pathlib import Path

from digit_utils import data
from digit_utils.cli.options import verb, verbs


def _locate(args) -> int:
    source = data.locate(args.path, download=not args.no_download)
    print(json.dumps(source.to_dict(), indent=2) if args.json else source.describe())
    return 0


def _download(args) -> int:
    dest = data.download_competition(Path(args.dest) if args.dest else None)
    print(f"competition files in {dest}")
    return 0


def _sample(args) -> int:
    dest = data.make_sample(Path(args.dest) if args.dest else None, force=args.force)
    print(f"offline sample (4,000 train / 1,000 test MNIST digits) in {dest}")
    return 0


def _validate(args) -> int:
    for name, rows in data.validate(args.path).items():
        print(f"ok  {name}: {rows:,} rows")
    return 0


def register_cli(sub) -> None:
    group = verbs(sub, "data", "locate, download, sample or validate the competition files")

    v = verb(group, "locate", _locate, "say which competition files a run would use")
    v.add_argument("path", nargs="?", help="an explicit folder or zip (optional)")
    v.add_argument("--no-download", action="store_true", help="never call the Kaggle API")
    v.add_argument("--json", action="store_true", help="machine-readable output")

    v = verb(group, "download", _download, "download the files with the Kaggle API into data/raw")
    v.add_argument("--dest", help="folder to unzip into (default: data/raw)")

    v = verb(group, "sample", _sample, "write the offline MNIST sample into data/sample")
    v.add_argument("--dest", help="folder to write (default: data/sample)")
    v.add_argument("--force", action="store_true", help="rewrite even if present")

    v = verb(group, "validate", _validate, "check a folder, zip or CSV against the format")
    v.add_argument("path")
