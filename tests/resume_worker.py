"""Subprocess for the kill-and-resume test: trains from an .npz, optionally stalling mid-epoch.

Usage: resume_worker.py DATA.npz RUN_DIR CONFIG_JSON THREADS STALL_AFTER MARKER [resume|fresh]
With STALL_AFTER > 0 it writes MARKER and sleeps (waiting for SIGKILL) when the training loop is
about to run its STALL_AFTER-th batch. It resumes from RUN_DIR unless told "fresh".
"""

import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from digit_utils.train import loop as train

data, run_dir, config, threads, stall_after, marker = sys.argv[1:7]
resume = sys.argv[7:8] != ["fresh"]
torch.set_num_threads(int(threads))  # same as the parent, so float sums are ordered the same
stall_after = int(stall_after)
calls = 0
real_normalize = train.normalize


def counting_normalize(x):
    global calls
    calls += 1
    if calls == stall_after:
        Path(marker).write_text("stalled")
        time.sleep(120)  # the parent SIGKILLs us here, in the middle of an epoch
    return real_normalize(x)


train.normalize = counting_normalize  # the loop calls train.normalize once per batch
with np.load(data) as z:
    images, labels = z["images"], z["labels"]
cfg = train.TrainConfig.from_dict(json.loads(config))
train.train(cfg, images, labels, run_dir=run_dir, resume=resume, quiet=True)
