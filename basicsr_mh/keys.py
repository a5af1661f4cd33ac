"""Names and small rules shared across basicsr-mh, in one place (a leaf module: it imports nothing of ours).

- :data:`MULTIHEAD_META_KEY`: the checkpoint entry with the multi-head layout (``num_heads``, ``combine``,
  ``num_outputs``, ``best_head``, ``backbone``, ``head_layers``).
- :func:`close_names`: "did you mean" suggestions for a misspelled key or registry name.
- :func:`strip_module_prefix`: a state dict without the ``module.`` prefix that DataParallel/DDP add.
"""
import difflib
from collections import OrderedDict

MULTIHEAD_META_KEY = 'multihead'


def close_names(name, candidates, n=3, cutoff=0.6):
    """Up to ``n`` entries of ``candidates`` that look like ``name`` (similarity >= ``cutoff``, difflib's ratio), for
    "did you mean" in error messages."""
    return difflib.get_close_matches(str(name), [str(c) for c in candidates], n=n, cutoff=cutoff)


def strip_module_prefix(state):
    """``state`` (a mapping of parameter names to values) as an OrderedDict without a leading ``module.``."""
    return OrderedDict((k[len('module.'):] if k.startswith('module.') else k, v) for k, v in state.items())
