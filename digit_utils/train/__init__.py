"""Training and inference: the loop (``loop``), models (``models``, ``resnets``), augmentation on
batches (``augment``), devices (``devices``), the run folder (``runs``), inference (``inference``),
grids of runs (``grids``) over every device (``parallel``), pseudo-labels (``pseudo``), the
ensemble's members (``members``), tracking (``tracking``) and progress bars (``progress``)."""
