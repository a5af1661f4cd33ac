"""Option-file upgrades: the two-key short form (``num_heads``/``combine`` under ``network_g``) to the long form.

A BasicSR user adds ``num_heads: 4`` and ``combine: true`` next to ``type`` under ``network_g``; this module turns
that into ``{type: MultiHeadArch, num_heads: 4, combine: true, backbone: {type: ..., ...}}`` and upgrades the
model type (``SRModel`` to ``MultiHeadImageRestorationModel``; basicsr-mh's ``ImageRestorationModel`` and
``ImageCleanModel`` are multi-head models already), with one log line each. Bad values fail here, before any work
starts, with an error naming the key and the fix.
"""
import difflib

from basicsr.utils import get_root_logger
from basicsr.utils.registry import ARCH_REGISTRY, LOSS_REGISTRY, MODEL_REGISTRY

from .archs.multihead_arch import check_head_options, num_extended_heads

MULTIHEAD_MODEL = 'MultiHeadImageRestorationModel'
UPGRADABLE_MODELS = ('SRModel', 'ImageRestorationModel', 'ImageCleanModel', MULTIHEAD_MODEL)
WRAPPER_KEYS = ('num_heads', 'combine', 'head_layers', 'probe_size', 'probe_channels', 'feed_all_heads')


def _check_arch_type(arch_type, key):
    if arch_type not in ARCH_REGISTRY:
        close = difflib.get_close_matches(str(arch_type), list(ARCH_REGISTRY.keys()), n=3)
        raise ValueError(f'{key} "{arch_type}" is not a registered architecture. Close names: {close}. Fix: correct '
                         'the type, or import the module that registers it.')


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
        num_heads, combine = check_head_options(net_opt.get('num_heads', 1), net_opt.get('combine', False), key)
        backbone = net_opt.get('backbone')
        if not isinstance(backbone, dict) or 'type' not in backbone:
            raise ValueError(f'{key}.backbone must be `{{type: <backbone>, ...}}` for type MultiHeadArch.')
        _check_arch_type(backbone['type'], f'{key}.backbone.type')
        net_opt.update(num_heads=num_heads, combine=combine)
        return net_opt, (num_heads, combine) != (1, False)
    if not any(k in net_opt for k in WRAPPER_KEYS):
        _check_arch_type(net_opt['type'], f'{key}.type')
        return net_opt, False
    num_heads, combine = check_head_options(net_opt.get('num_heads', 1), net_opt.get('combine', False), key)
    _check_arch_type(net_opt['type'], f'{key}.type')
    wrapper = {k: net_opt.pop(k) for k in WRAPPER_KEYS if k in net_opt}
    if num_heads == 1 and not combine:
        return net_opt, False
    wrapper.update(num_heads=num_heads, combine=combine)
    return dict(type='MultiHeadArch', backbone=net_opt, **wrapper), True


def upgrade_options(opt, notes=None):
    """Upgrade a parsed option dict in place; idempotent. Returns ``opt``.

    - ``network_g`` short form -> long form (:func:`upgrade_network_options`).
    - with heads, ``model_type`` SRModel -> MultiHeadImageRestorationModel; ImageRestorationModel / ImageCleanModel
      stay (basicsr-mh's are MultiHeadImageRestorationModel subclasses with their home repositories' defaults),
      or are renamed too where the installed BasicSR registers its own class under that name.
    - ``datasets.*.use_flip`` (NAFNet/HINet) -> ``use_hflip`` for ``PairedImageDataset``.
    - ``train.pixel_opt.type`` must be a registered loss (the model wraps it in MinHeadLoss).

    Args:
        opt (dict): parsed options.
        notes (list | None): where to append the log lines (for callers whose logger is not set up yet);
            None logs them at once.
    """
    log = notes.append if notes is not None else get_root_logger().info
    upgrade_dataset_options(opt, log)
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
            raise ValueError(f'model_type {model_type} has no multi-head counterpart. Fix: use model_type '
                             f'{MULTIHEAD_MODEL} (or one of {UPGRADABLE_MODELS[:-1]}), or remove num_heads/combine.')
        if not _handles_heads(model_type):
            log(f'basicsr-mh: model_type {model_type} upgraded to {MULTIHEAD_MODEL} for the multi-head network.')
            opt['model_type'] = MULTIHEAD_MODEL
        elif net_changed:  # logged once: a second call finds the network in long form already
            log(f'basicsr-mh: model_type {model_type} upgraded to its multi-head form (basicsr-mh\'s {model_type} is '
                f'a {MULTIHEAD_MODEL}) for the multi-head network.')
    pixel_opt = (opt.get('train') or {}).get('pixel_opt')
    if opt.get('is_train', True) and isinstance(pixel_opt, dict):
        loss_type = pixel_opt.get('type')
        if loss_type not in LOSS_REGISTRY:
            close = difflib.get_close_matches(str(loss_type), list(LOSS_REGISTRY.keys()), n=3)
            raise ValueError(f'train.pixel_opt.type "{loss_type}" is not a registered loss. Close names: {close}.')
        if loss_type == 'MinHeadLoss':
            inner = pixel_opt.get('loss') or {}
            if inner.get('type') not in LOSS_REGISTRY:
                close = difflib.get_close_matches(str(inner.get('type')), list(LOSS_REGISTRY.keys()), n=3)
                raise ValueError(f'train.pixel_opt.loss.type "{inner.get("type")}" is not a registered loss. Close '
                                 f'names: {close}.')
    return opt
