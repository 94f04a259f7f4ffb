"""Kaggle: the CLI in a subprocess (``client``), the notebooks as kernels (``kernels``), pushing
them stage by stage (``push``) and running a built kernel here as Kaggle would (``local_run``)."""
