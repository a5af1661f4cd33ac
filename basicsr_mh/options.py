"""Option-file upgrades: the two-key short form (``num_heads``/``combine`` under ``network_g``) to the long form.

A BasicSR user adds ``num_heads: 4`` and ``combine: true`` next to ``type`` under ``network_g``; this module turns
that into ``{type: MultiHeadArch, num_heads: 4, combine: true, backbone: {type: ..., ...}}`` and upgrades the
model type (``SRModel`` to ``MultiHeadImageRestorationModel``; basicsr-mh's ``ImageRestorationModel`` and
``ImageCleanModel`` are multi-head models already), with one log line each. Bad values fail here, before any work
starts, with an error naming the key and the fix.
"""
import inspect
import torch
from basicsr.utils import get_root_logger
from basicsr.utils.registry import ARCH_REGISTRY, LOSS_REGISTRY, MODEL_REGISTRY

from .acceleration import ACCELERATION_KEYS, check_acceleration_options
from .heads import check_head_init, check_head_options, check_score_options, close_names, num_extended_heads, registered
from .inference import check_grid_options
from .losses.min_head_loss import ASSIGNMENT_KEYS, check_assignment_options

MULTIHEAD_MODEL = 'MultiHeadImageRestorationModel'
UPGRADABLE_MODELS = ('SRModel', 'ImageRestorationModel', 'ImageCleanModel', MULTIHEAD_MODEL)
WRAPPER_KEYS = ('num_heads', 'combine', 'head_layers', 'probe_size', 'probe_channels', 'feed_all_heads', 'head_init',
                'head_scores', 'score_to_backbone')

#: The block under ``network_g`` that holds our keys unambiguously (needed where the backbone has a ``num_heads``).
MULTIHEAD_BLOCK = 'multihead'
#: Methods of BasicSR's SRModel that a model subclass may not override to be upgraded like SRModel: a subclass that
#: trains differently (GAN, video, on-the-fly degradations) would silently lose its training under the upgrade.
TRAINING_METHODS = ('optimize_parameters', 'init_training_settings', 'setup_optimizers', 'feed_data',
                    'nondist_validation', 'dist_validation', 'save')

MAX_OUTPUTS = 1024


def backbone_arguments(arch_type):
    """The registered architecture's constructor: ({argument name: default, or ``inspect.Parameter.empty``}, whether it
    also takes ``**kwargs``). An unreadable signature gives ({}, True): nothing can be checked."""
    try:
        params = list(inspect.signature(ARCH_REGISTRY.get(arch_type).__init__).parameters.values())[1:]
    except (TypeError, ValueError):
        return {}, True
    named = {p.name: p.default for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    return named, any(p.kind == p.VAR_KEYWORD for p in params)


def _kind(value):
    """A coarse type for comparing an option with a default: sequence, number, bool, other."""
    if isinstance(value, bool):
        return 'bool'
    if isinstance(value, (list, tuple)):
        return 'sequence'
    if isinstance(value, (int, float)):
        return 'number'
    return type(value).__name__


def split_short_form(net_opt, key='network_g'):
    """Separate our keys from the backbone's in a short-form ``network_g``.

    Our keys (:data:`WRAPPER_KEYS`) are read from a ``multihead:`` block when there is one, else from ``network_g``
    itself. A key that is also an argument of the backbone (SwinIR's ``num_heads``: attention heads) belongs to the
    backbone; without the block it is an error naming both meanings when our other keys stand beside it or its
    value does not fit the backbone's default (``num_heads: 4`` for SwinIR's list). A key that neither the
    backbone nor we know and that looks like one of ours (``num_head``) is an error with "did you mean".

    Args:
        net_opt (dict): ``network_g`` with a ``type`` that is a registered backbone (not MultiHeadArch).

    Returns:
        tuple(dict, dict): (the backbone's options, our options).
    """
    backbone = dict(net_opt)
    block = backbone.pop(MULTIHEAD_BLOCK, None)
    own, takes_kwargs = backbone_arguments(backbone['type'])
    if block is not None:
        if not isinstance(block, dict):
            raise ValueError(f'{key}.{MULTIHEAD_BLOCK} must be a mapping, got {block!r}. Fix: e.g. '
                             f'`{MULTIHEAD_BLOCK}: {{num_heads: 4, combine: true}}`.')
        for name in block:
            if name not in WRAPPER_KEYS:
                hint = close_names(name, WRAPPER_KEYS)
                raise ValueError(f'{key}.{MULTIHEAD_BLOCK}.{name} is not a basicsr-mh key'
                                 f'{f" (did you mean {hint[0]}?)" if hint else ""}. Fix: use one of '
                                 f'{", ".join(WRAPPER_KEYS)}.')
        stray = [name for name in WRAPPER_KEYS if name in backbone and name not in own]
        if stray:
            raise ValueError(
                f'{key}.{stray[0]} stands beside the {key}.{MULTIHEAD_BLOCK} block, and {backbone["type"]} '
                f'has no such argument. Fix: move it into `{MULTIHEAD_BLOCK}:`.')
        wrapper = dict(block)
    else:
        ours = [name for name in WRAPPER_KEYS if name in backbone and name not in own]
        clash = [name for name in WRAPPER_KEYS if name in backbone and name in own]
        misfit = [
            name for name in clash
            if own[name] is not inspect.Parameter.empty and _kind(backbone[name]) != _kind(own[name])
        ]
        if clash and (ours or misfit):  # our keys were added to a backbone that has one of the same name
            name = clash[0]
            raise ValueError(f'{key}.{name} is ambiguous: {backbone["type"]} has its own `{name}` argument (for '
                             f'{backbone["type"]} it means something else, e.g. attention heads), and basicsr-mh reads '
                             f'`{name}` as its output heads. Fix: keep {backbone["type"]}\'s value where it is and '
                             f'give ours in a block: `{MULTIHEAD_BLOCK}: {{num_heads: 4, combine: true}}` under {key}.')
        wrapper = {name: backbone.pop(name) for name in ours}
    for name in backbone:
        if name == 'type' or name in own:
            continue
        # a backbone taking **kwargs passes unknown keys on (NAFNetLocal: img_channel): only near-certain typos of ours
        hint = close_names(name, WRAPPER_KEYS, cutoff=0.85 if takes_kwargs else 0.6)
        if hint:
            raise ValueError(f'{key}.{name} is neither an argument of {backbone["type"]} nor a basicsr-mh key; did '
                             f'you mean {hint[0]}? Fix: rename it.')
        if not takes_kwargs:
            hint = close_names(name, own)
            raise ValueError(f'{key}.{name} is not an argument of {backbone["type"]}'
                             f'{f" (did you mean {hint[0]}?)" if hint else ""}. Fix: use one of '
                             f'{", ".join(sorted(own))}, or basicsr-mh\'s {", ".join(WRAPPER_KEYS[:2])}.')
    if wrapper.get('combine') is True and 'num_heads' not in wrapper:
        raise ValueError(f'{key}.combine: true without num_heads combines a single head with itself. Fix: add '
                         '`num_heads: 4` (or another K >= 2).')
    return backbone, wrapper


def _check_heads(net_opt, key):
    """check_head_options plus a hard limit on K' (each output is a full image per sample)."""
    num_heads, combine = check_head_options(net_opt.get('num_heads', 1), net_opt.get('combine', False), key)
    if combine and num_heads == 1:
        raise ValueError(f'{key}.combine: true with num_heads 1 combines a single head with itself. Fix: '
                         '`num_heads: 4` (or another K >= 2), or `combine: false`.')
    outputs = num_extended_heads(num_heads, combine)
    if outputs > MAX_OUTPUTS:
        raise ValueError(f'{key}.num_heads {num_heads} (combine {combine}) gives {outputs} outputs, more than '
                         f'{MAX_OUTPUTS}. Fix: use a few heads (the paper uses 4-5), e.g. `num_heads: 4`.')
    check_score_options(
        net_opt.get('head_scores', False), net_opt.get('score_to_backbone', False), num_heads, combine, key)
    return num_heads, combine


def check_score_weight(value):
    """``train.score_weight`` (weight of the score loss) as a float; a ValueError naming the key unless it is a finite
    number >= 0."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < float('inf'):
        raise ValueError(f'train.score_weight must be a finite number >= 0, got {value!r}. Fix: e.g. '
                         '`score_weight: 1.0` (the default), or 0 to train without the score loss.')
    return float(value)


def _check_arch_type(arch_type, key):
    registered(ARCH_REGISTRY, arch_type, key)


def _handles_heads(model_type):
    """Whether the registered model type is itself multi-head capable (basicsr-mh's ImageRestorationModel, ...)."""
    return model_type in MODEL_REGISTRY and getattr(MODEL_REGISTRY.get(model_type), 'is_multihead_model', False)


def upgrade_dataset_options(opt, log):
    """NAFNet/HINet's ``use_flip`` is BasicSR's ``use_hflip`` for ``PairedImageDataset`` (BasicSR requires it)."""
    for phase, dataset in (opt.get('datasets') or {}).items():
        if isinstance(dataset, dict) and dataset.get('type') == 'PairedImageDataset' and 'use_flip' in dataset \
                and 'use_hflip' not in dataset:
            dataset['use_hflip'] = dataset['use_flip']
            log(f'basicsr-mh: datasets.{phase}.use_flip (NAFNet/HINet\'s name) read as BasicSR\'s use_hflip.')


def upgrade_network_options(net_opt, key='network_g'):
    """Return the network options in long form (or the plain backbone's when K = 1 without combine).

    Args:
        net_opt (dict): e.g. ``{type: NAFNet, width: 32, num_heads: 4, combine: true}``.

    Returns:
        tuple(dict, bool): the new options and whether they describe a multi-head network.
    """
    if not isinstance(net_opt, dict) or 'type' not in net_opt:
        raise ValueError(f'{key} must be a mapping with a `type`, got {net_opt!r}.')
    net_opt = dict(net_opt)
    if net_opt['type'] == 'MultiHeadArch':
        num_heads, combine = _check_heads(net_opt, key)
        backbone = net_opt.get('backbone')
        if not isinstance(backbone, dict) or 'type' not in backbone:
            raise ValueError(f'{key}.backbone must be `{{type: <backbone>, ...}}` for type MultiHeadArch.')
        _check_arch_type(backbone['type'], f'{key}.backbone.type')
        check_head_init(net_opt.get('head_init'), key)
        net_opt.update(num_heads=num_heads, combine=combine)
        return net_opt, (num_heads, combine) != (1, False)
    _check_arch_type(net_opt['type'], f'{key}.type')
    net_opt, wrapper = split_short_form(net_opt, key)
    if not wrapper:
        return net_opt, False
    num_heads, combine = _check_heads(wrapper, key)
    check_head_init(wrapper.get('head_init'), key)
    if num_heads == 1 and not combine:
        if wrapper.get('head_init') == 'identity':  # MultiHeadArch builds the plain backbone, initialised
            return dict(type='MultiHeadArch', backbone=net_opt, **wrapper), False
        return net_opt, False
    wrapper.update(num_heads=num_heads, combine=combine)
    return dict(type='MultiHeadArch', backbone=net_opt, **wrapper), True


def build_network(net_opt):
    """Build a network from ``network_g`` options in the short form (``{type: NAFNet, ..., num_heads: 4, combine:
    true}``), the long form (``type: MultiHeadArch``) or a plain backbone's, through BasicSR's ARCH_REGISTRY.

    Args:
        net_opt (dict): the options (not modified).

    Returns:
        nn.Module: a :class:`~basicsr_mh.archs.multihead_arch.MultiHeadArch` (input (B, C, H, W) -> heads
        (B, K', C, H, W)) or the plain backbone (-> (B, C, H, W)), in training mode on the CPU.
    """
    import basicsr.archs

    from .hooks import original
    long_form, _ = upgrade_network_options(net_opt)
    return original(basicsr.archs.build_network)(dict(long_form))


def upgrade_options(opt, notes=None):
    """Upgrade a parsed option dict in place; idempotent. Returns ``opt``.

    - ``network_g`` short form -> long form (:func:`upgrade_network_options`).
    - with heads, ``model_type`` SRModel -> MultiHeadImageRestorationModel; ImageRestorationModel / ImageCleanModel
      stay (basicsr-mh's are MultiHeadImageRestorationModel subclasses with their home repositories' defaults),
      or are renamed too where the installed BasicSR registers its own class under that name.
    - ``datasets.*.use_flip`` (NAFNet/HINet) -> ``use_hflip`` for ``PairedImageDataset``.
    - ``train.pixel_opt.type`` must be a registered loss (the model wraps it in MinHeadLoss).
    - ``path.param_key`` (the forks' name) -> ``path.param_key_g``; ``val.grids`` needs a tile size.
    - ``train.amp``/``channels_last``/``compile`` (``val.*`` for a test run) must be valid
      (:func:`basicsr_mh.acceleration.check_acceleration_options`).

    Args:
        opt (dict): parsed options.
        notes (list | None): where to append the log lines (for callers whose logger is not set up yet);
            None logs them at once.
    """
    log = notes.append if notes is not None else get_root_logger().info
    upgrade_dataset_options(opt, log)
    path_opt = opt.get('path')
    if isinstance(path_opt, dict) and path_opt.get('param_key') is not None and path_opt.get('param_key_g') is None:
        path_opt['param_key_g'] = path_opt['param_key']  # NAFNet/Restormer forks' name
    check_grid_options(opt)
    if 'network_g' not in opt:
        return opt
    new_net, has_heads = upgrade_network_options(opt['network_g'])
    net_changed = new_net != opt['network_g']
    if net_changed:
        if has_heads:
            k, c = new_net['num_heads'], new_net['combine']
            log(f'basicsr-mh: network_g {new_net["backbone"]["type"]} gets {k} heads'
                f'{f" combined into {num_extended_heads(k, c)} outputs" if c else ""} (MultiHeadArch).')
        opt['network_g'] = new_net
    model_type = opt.get('model_type', 'SRModel')
    if has_heads and model_type != MULTIHEAD_MODEL:
        if model_type not in UPGRADABLE_MODELS:
            _check_srmodel_subclass(model_type)
        if not _handles_heads(model_type):
            log(f'basicsr-mh: model_type {model_type} upgraded to {MULTIHEAD_MODEL} for the multi-head network.')
            opt['model_type'] = MULTIHEAD_MODEL
            _keep_window_padding(opt, model_type, log)
        elif net_changed:  # logged once: a second call finds the network in long form already
            log(f'basicsr-mh: model_type {model_type} upgraded to its multi-head form (basicsr-mh\'s {model_type} is '
                f'a {MULTIHEAD_MODEL}) for the multi-head network.')
    elif not has_heads and model_type == 'SRModel' and opt.get('is_train', True):
        _upgrade_for_optimizer(opt, log)
    if not has_heads and opt.get('model_type', 'SRModel') == 'SRModel':
        _upgrade_for_acceleration(opt, log)
    pixel_opt = (opt.get('train') or {}).get('pixel_opt')
    if opt.get('is_train', True) and isinstance(pixel_opt, dict):
        loss_type = pixel_opt.get('type')
        registered(LOSS_REGISTRY, loss_type, 'train.pixel_opt.type', 'loss')
        check_assignment_options(**{k: pixel_opt[k] for k in ASSIGNMENT_KEYS if k in pixel_opt})
        if loss_type == 'MinHeadLoss':
            inner = pixel_opt.get('loss') or {}
            registered(LOSS_REGISTRY, inner.get('type'), 'train.pixel_opt.loss.type', 'loss')
    if opt.get('is_train', True) and (opt.get('train') or {}).get('score_weight') is not None:
        check_score_weight(opt['train']['score_weight'])
    section = acceleration_section(opt)
    check_acceleration_options(opt.get(section), section, torch.cuda.is_available() and opt.get('num_gpu') != 0)
    return opt


def acceleration_section(opt):
    """Where ``amp``/``channels_last``/``compile`` are read: ``train`` for a training (and its validation), ``val``
    for ``basicsr-mh test``."""
    return 'train' if opt.get('is_train', True) else 'val'


def _check_srmodel_subclass(model_type):
    """A model type that is not one of :data:`UPGRADABLE_MODELS` is upgraded like SRModel when it is a registered
    subclass of BasicSR's SRModel that trains as SRModel does (it overrides none of :data:`TRAINING_METHODS`; e.g.
    SwinIRModel, or a user's model that only changes inference); anything else is a ValueError naming the fix."""
    from basicsr.models.sr_model import SRModel
    model_class = registered(MODEL_REGISTRY, model_type, 'model_type', 'model')
    if not issubclass(model_class, SRModel):
        raise ValueError(f'model_type {model_type} is not an SRModel and has no multi-head counterpart. Fix: use '
                         f'model_type {MULTIHEAD_MODEL} (or one of {", ".join(UPGRADABLE_MODELS[:-1])}), or remove '
                         'num_heads/combine.')
    own = [
        name for klass in model_class.__mro__[:model_class.__mro__.index(SRModel)] for name in TRAINING_METHODS
        if name in vars(klass)
    ]
    if own:
        raise ValueError(f'model_type {model_type} trains with its own {", ".join(sorted(set(own)))}, which the '
                         f'multi-head upgrade would replace. Fix: for a model of your own, subclass basicsr_mh\'s '
                         f'{MULTIHEAD_MODEL} instead of SRModel (same API); or use model_type {MULTIHEAD_MODEL}; or '
                         'remove num_heads/combine.')


def _keep_window_padding(opt, model_type, log):
    """SwinIRModel pads test inputs to a multiple of ``network_g.window_size``; the multi-head model does the same
    through ``val.window_size``, set here from the backbone's unless the option file sets it."""
    backbone = opt['network_g'].get('backbone') or {}
    window = backbone.get('window_size')
    if model_type == 'SwinIRModel' and window and opt.get('val') is not None and not opt['val'].get('window_size'):
        opt['val']['window_size'] = window
        log(f'basicsr-mh: val.window_size set to {window} (network_g.window_size) for SwinIRModel\'s test padding.')


def _upgrade_for_optimizer(opt, log):
    """BasicSR 1.4.2's SRModel builds only Adam (NotImplementedError for AdamW, SGD, ...): a single-head SRModel whose
    ``train.optim_g.type`` the installed SRModel cannot build trains as MultiHeadImageRestorationModel (any
    ``torch.optim`` optimizer; with a plain network it trains and validates as SRModel)."""
    import torch
    from basicsr.models.base_model import BaseModel
    optim_type = ((opt.get('train') or {}).get('optim_g') or {}).get('type')
    if not optim_type or optim_type == 'Adam':
        return
    try:
        BaseModel.get_optimizer(None, optim_type, [torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    except NotImplementedError:
        opt['model_type'] = MULTIHEAD_MODEL
        log(f'basicsr-mh: model_type SRModel upgraded to {MULTIHEAD_MODEL}: the installed BasicSR\'s SRModel cannot '
            f'build train.optim_g.type {optim_type}; this one builds any torch.optim optimizer.')
    except Exception:  # noqa: BLE001  (an unknown name or bad arguments: the model reports it with the key)
        return


def _upgrade_for_acceleration(opt, log):
    """BasicSR's SRModel knows no ``amp``/``channels_last``/``compile``: a single-head SRModel that sets one runs as
    MultiHeadImageRestorationModel (with a plain network it trains and validates as SRModel)."""
    section = acceleration_section(opt)
    given = [key for key in ACCELERATION_KEYS if (opt.get(section) or {}).get(key) not in (None, False)]
    if given:
        opt['model_type'] = MULTIHEAD_MODEL
        log(f'basicsr-mh: model_type SRModel upgraded to {MULTIHEAD_MODEL} for {section}.{given[0]} (BasicSR\'s '
            'SRModel has no mixed precision, channels_last or compile).')


# ---------------------------------------------------------------------------------------------------- pre-flight
