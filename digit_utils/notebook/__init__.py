"""What the notebooks call besides training: a stage's start and finish (``start``, ``say``),
figures (``plots``), paired statistics (``stats``) and the data exploration (``eda``).

``from digit_utils import notebook as nb`` gives ``nb.start``, ``nb.say`` and ``nb.split_list``.
"""

from digit_utils.notebook.stage import Stage, check_params, say, split_list, start

__all__ = ["Stage", "check_params", "say", "split_list", "start"]
