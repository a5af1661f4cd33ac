"""The multi-head method's names and rules, in one place (a leaf module: it imports nothing of ours, nor torch).

- Pair math (Eq. 6): :func:`extended_head_pairs`, :func:`num_extended_heads`, :func:`head_pair_name`.
- Option checks of ``network_g``: :func:`check_head_options`, :func:`check_head_init`, :func:`check_score_options`.
- :class:`HeadLayout`: where a backbone's output heads live; our backbones declare theirs
  (``multihead_layout()``), others are probed (:mod:`basicsr_mh.archs.tail_probe`).
- :data:`MULTIHEAD_META_KEY`: the checkpoint entry with the multi-head layout (``num_heads``, ``combine``,
  ``num_outputs``, ``best_head``, ``backbone``, ``head_layers``).
- :func:`close_names` and :func:`registered`: "did you mean" suggestions and a registry lookup that uses them.
- :func:`strip_module_prefix`: a state dict without the ``module.`` prefix that DataParallel/DDP add.
"""
import difflib
import warnings
from collections import OrderedDict
from dataclasses import dataclass

MULTIHEAD_META_KEY = 'multihead'
MAX_RECOMMENDED_HEADS = 16
#: ``network_g.head_init`` values: ``backbone`` keeps the backbone's own initialisation of the output layer;
#: ``identity`` scales it so that every head starts at the network input plus a small distinct perturbation.
HEAD_INITS = ('backbone', 'identity')
START_NAMES = {'identity': 'the input (head_init: identity)', 'backbone': "the backbone's own initialisation"}

MULTIHEAD_META_KEY = 'multihead'


def close_names(name, candidates, n=3, cutoff=0.6):
    """Up to ``n`` entries of ``candidates`` that look like ``name`` (similarity >= ``cutoff``, difflib's ratio), for
    "did you mean" in error messages."""
    return difflib.get_close_matches(str(name), [str(c) for c in candidates], n=n, cutoff=cutoff)


def strip_module_prefix(state):
    """``state`` (a mapping of parameter names to values) as an OrderedDict without a leading ``module.``."""
    return OrderedDict((k[len('module.'):] if k.startswith('module.') else k, v) for k, v in state.items())


def registered(registry, name, key, what='architecture'):
    """The class registered as ``name`` in a BasicSR ``registry``.

    Raises:
        ValueError: naming the option ``key``, close names and the fix, when ``name`` is not registered.
    """
    if name not in registry:
        close = close_names(name, registry.keys(), n=1)
        hint = f' (did you mean {close[0]}?)' if close else ''
        raise ValueError(f'{key} "{name}" is not a registered {what}{hint}. Fix: correct it, or import the module '
                         'that registers it (`--import your.package`).')
    return registry.get(name)


@dataclass(frozen=True)
class HeadLayout:
    """Where a backbone's output heads live (as timm's ``pretrained_cfg['classifier']`` names a classifier).

    A backbone declares it with a method ``multihead_layout(self) -> HeadLayout`` (NAFNet, HINet, Restormer, MPRNet
    here), so building its heads needs no probe; other backbones are probed for it at build time
    (:func:`basicsr_mh.archs.tail_probe.find_layout`), with the same result for ours (a test checks it).

    Attributes:
        outputs (tuple): ``(output index, layer name, tail scale a, detach_mean)`` per headed network output: the
            Conv2d whose output reaches network output ``index`` through an additive tail ``y + a * delta``;
            ``detach_mean`` when it reaches no other output.
        num_network_outputs (int): how many images the backbone returns (1 for a tensor).
        head_inputs (tuple): ``(consumer, producer, scale)`` per conv that reads a non-final stage's image (the
            stage image moves by ``scale * delta`` when ``producer``'s output moves by ``delta``).
        global_residual (bool): the output is the input when the output layers give zero (``head_init: identity``
            is possible).
        probe_size (int): the spatial size of the probe on which an identity start is measured, when
            ``network_g.probe_size`` is not set.
    """
    outputs: tuple
    num_network_outputs: int = 1
    head_inputs: tuple = ()
    global_residual: bool = True
    probe_size: int = 64

    @property
    def layer_names(self):
        """Names of the output layers, in output order."""
        return [name for _, name, _, _ in sorted(self.outputs)]


def extended_head_pairs(num_heads, combine):
    """Return the (i, j) head pairs of the extended heads in the paper's order (Eq. 6, reference code).

    With ``combine``: ``for i in range(K): for j in range(i + 1): (i, j)``, i.e. h0=(0,0), h1=(1,0), h2=(1,1),
    h3=(2,0), ...; extended head (i, j) is ``(mu_i + mu_j) / 2``. Without: ``[(0, 0), (1, 1), ...]``.

    Args:
        num_heads (int): K.
        combine (bool): combine heads in pairs.

    Returns:
        list[tuple[int, int]]: K' = K(K+1)/2 pairs with combine, K otherwise.
    """
    if combine:
        return [(i, j) for i in range(num_heads) for j in range(i + 1)]
    return [(i, i) for i in range(num_heads)]


def num_extended_heads(num_heads, combine):
    """K' = K(K+1)/2 with ``combine``, K without."""
    return num_heads * (num_heads + 1) // 2 if combine else num_heads


def head_pair_name(index, num_heads, combine):
    """Human name of extended head ``index``: ``'h4 (2+1)'`` with combine, ``'h2'`` without."""
    if not combine:
        return f'h{index}'
    i, j = extended_head_pairs(num_heads, combine)[index]
    return f'h{index} ({i}+{j})'


def check_head_options(num_heads, combine, where='network_g'):
    """Validate ``num_heads`` and ``combine`` and return them as (int, bool).

    Raises:
        ValueError: naming the key and the fix, for K < 1, non-integer K or a non-bool ``combine``.
    """
    if isinstance(num_heads, bool) or not isinstance(num_heads, int):
        if isinstance(num_heads, float) and num_heads.is_integer():
            num_heads = int(num_heads)
        else:
            raise ValueError(f'{where}.num_heads must be an integer >= 1, got {num_heads!r} '
                             f'({type(num_heads).__name__}). Fix: e.g. `num_heads: 4`.')
    if num_heads < 1:
        raise ValueError(f'{where}.num_heads must be >= 1, got {num_heads}. Fix: e.g. `num_heads: 4` '
                         '(1 is the plain backbone).')
    if not isinstance(combine, bool):
        raise ValueError(f'{where}.combine must be true or false, got {combine!r} ({type(combine).__name__}). '
                         'Fix: `combine: true` for K(K+1)/2 combined heads, `combine: false` for K heads.')
    if num_heads > MAX_RECOMMENDED_HEADS:
        warnings.warn(f'{where}.num_heads={num_heads} is above {MAX_RECOMMENDED_HEADS}: the paper finds gains '
                      'saturate at 4-5 heads, and K\' grows quadratically with combine.')
    return num_heads, combine


def check_head_init(head_init, where='network_g'):
    """Validate ``head_init`` (one of :data:`HEAD_INITS`, or None: the default) and return it."""
    if head_init is not None and head_init not in HEAD_INITS:
        raise ValueError(f'{where}.head_init must be one of {", ".join(HEAD_INITS)}, got {head_init!r}. Fix: '
                         '`head_init: identity` (every head starts at the input image) or `head_init: backbone` (the '
                         'backbone\'s own initialisation).')
    return head_init


def check_score_options(head_scores, score_to_backbone, num_heads, combine, where='network_g'):
    """Validate ``head_scores``/``score_to_backbone`` for a network with ``num_heads``/``combine`` (already checked).

    Returns:
        tuple(bool, bool): the two flags.

    Raises:
        ValueError: naming the key and the fix, for a non-bool value, ``head_scores`` on a network with one output
            (it would be built as the plain backbone, without the branch), or ``score_to_backbone`` without
            ``head_scores``.
    """
    for key, value in (('head_scores', head_scores), ('score_to_backbone', score_to_backbone)):
        if not isinstance(value, bool):
            raise ValueError(f'{where}.{key} must be true or false, got {value!r}. Fix: `{key}: true`, or remove it.')
    if head_scores and num_extended_heads(num_heads, combine) < 2:
        raise ValueError(f'{where}.head_scores: true needs two or more heads to score (num_heads {num_heads}, combine '
                         f'{combine} gives one output). Fix: e.g. `num_heads: 4`, or remove head_scores.')
    if score_to_backbone and not head_scores:
        raise ValueError(f'{where}.score_to_backbone: true does nothing without a score branch. Fix: add '
                         '`head_scores: true`, or remove score_to_backbone.')
    return head_scores, score_to_backbone
