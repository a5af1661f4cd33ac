"""Pre-flight: everything that can fail cheaply before a run writes to disk.

:func:`preflight` builds ``network_g`` on the CPU (:func:`check_network`), fits the pretrained checkpoint into it
(:func:`check_pretrained`) and reads the first pair of every paired dataset (:func:`check_datasets_content`): sizes,
channels, scale. Each failure is a ValueError/FileNotFoundError naming the key (and the file) and the fix. The
options have been upgraded before (:mod:`basicsr_mh.options`).
"""

from .archs.tail_probe import declared_in_channels
from .heads import MULTIHEAD_META_KEY

PAIRED_DATASETS = ('PairedImageDataset', 'Dataset_PairedImage')


def _short(err, limit=600):
    text = ' '.join(str(err).split())
    return text if len(text) <= limit else text[:limit] + ' ...'


def check_network(opt):
    """Build ``network_g`` once on the CPU; any failure becomes a ValueError naming ``network_g``. Returns the net."""
    from basicsr.archs import build_network
    from copy import deepcopy
    net_opt = opt.get('network_g')
    if net_opt is None:
        return None
    try:
        return build_network(deepcopy(net_opt))
    except (ValueError, FileNotFoundError):
        raise
    except Exception as err:  # a backbone's own TypeError/RuntimeError/AssertionError: name the key
        arch = net_opt.get('backbone', net_opt) if isinstance(net_opt, dict) else net_opt
        raise ValueError(f'network_g ({arch.get("type") if isinstance(arch, dict) else arch}) cannot be built: '
                         f'{type(err).__name__}: {_short(err)}. Fix: check the keys under network_g against the '
                         'architecture\'s arguments.') from err


def _grown_keys(net):
    layers = list(getattr(net, 'head_layer_names', [])) + list(getattr(net, 'head_input_layers', {}) or {})
    return {f'{name}.{p}' for name in layers for p in ('weight', 'bias')}


def check_pretrained(opt, net):
    """Load ``path.pretrain_network_g`` into the pre-flight network as the model will; a checkpoint of another head
    count or backbone raises a ValueError naming the file (instead of a size-mismatch traceback after the folders
    are made)."""
    from .models.checkpoint import checkpoint_trust, network_state, read_checkpoint
    path_opt = opt.get('path') or {}
    path = path_opt.get('pretrain_network_g')
    trust = checkpoint_trust(opt)
    if not path or net is None:
        return
    checkpoint = read_checkpoint(path, trust=trust)
    state, _ = network_state(
        checkpoint, path_opt.get('param_key_g') or path_opt.get('param_key'), where=f'path.pretrain_network_g "{path}"')
    meta = checkpoint.get(MULTIHEAD_META_KEY) or {}
    theirs = (f' (the checkpoint was saved from {meta.get("backbone")} with num_heads {meta.get("num_heads")}, '
              f'combine {meta.get("combine")})') if meta else ''
    ours = f'{getattr(net, "backbone_type", type(net).__name__)} with num_heads {getattr(net, "num_heads", 1)}, ' \
           f'combine {getattr(net, "combine", False)}'
    strict = path_opt.get('strict_load_g', True)
    target = net.state_dict()
    if not strict:  # BasicSR then ignores keys of another shape; grown output layers warm-start from one head
        grown = _grown_keys(net)
        state = {
            k: v
            for k, v in state.items() if k in target and (k in grown or tuple(v.shape) == tuple(target[k].shape))
        }
    try:
        net.load_state_dict(state, strict=strict)
    except (RuntimeError, ValueError) as err:
        reason = _short(err, 400)
        if 'Fix:' in reason:  # our own load check already says what to set
            reason, fix = reason.split('Fix:', 1)
            fix = fix.strip()
        else:
            fix = ('point path.pretrain_network_g to a checkpoint of this backbone, or set network_g (type, width, '
                   'num_heads, combine) to the checkpoint\'s.')
        if meta and (meta.get('num_heads', 1) > 1 or meta.get('combine')) and getattr(net, 'num_heads', 1) == 1:
            fix += (f' To use one head of it in a plain network: `basicsr-mh export --opt <its train.yml> --ckpt '
                    f'{path} --head best --out plain.pth` and load plain.pth.')
        raise ValueError(f'path.pretrain_network_g "{path}" does not fit network_g ({ours}){theirs}: '
                         f'{reason.strip()} Fix: {fix}') from err


def _net_in_channels(opt, net):
    """(channels, option key) of the network input, from the backbone's options or its constructor's default;
    (None, None) when neither tells (no check then)."""
    net_opt = opt.get('network_g') or {}
    arch_opt, prefix = (net_opt['backbone'], 'network_g.backbone') if isinstance(net_opt.get('backbone'), dict) \
        else (net_opt, 'network_g')
    channels, key = declared_in_channels(arch_opt, getattr(net, 'backbone', net))
    return (channels, f'{prefix}.{key}') if channels is not None else (None, None)


def _read_image(file_client, path, phase, role):
    from basicsr.utils import imfrombytes
    try:
        img = imfrombytes(file_client.get(path, role), float32=True)
    except Exception as err:
        raise ValueError(f'datasets.{phase}: "{path}" cannot be read as an image ({_short(err, 200)}). Fix: replace '
                         'or remove it.') from err
    if img is None:
        raise ValueError(f'datasets.{phase}: "{path}" cannot be read as an image. Fix: replace or remove it.')
    return img


def _image_size(path, phase):
    """(width, height) of an image file from its header."""
    from PIL import Image
    try:
        with Image.open(path) as img:
            return img.size
    except Exception as err:
        raise ValueError(f'datasets.{phase}: "{path}" cannot be read as an image ({_short(err, 200)}). Fix: replace '
                         'or remove it.') from err


def _check_pair_size(phase, gt_path, lq_path, gt_size, lq_size, scale):
    """GT (width, height) must be LQ's times ``scale``."""
    if tuple(gt_size) != (lq_size[0] * scale, lq_size[1] * scale):
        raise ValueError(f'datasets.{phase}: the pair differs in size: GT "{gt_path}" is {gt_size[0]}x{gt_size[1]}, '
                         f'LQ "{lq_path}" is {lq_size[0]}x{lq_size[1]} (x scale {scale} = {lq_size[0] * scale}x'
                         f'{lq_size[1] * scale}). Fix: GT must be LQ times `scale` in size; correct or remove that '
                         'pair.')


def check_datasets_content(opt, net=None):
    """Build every paired dataset, compare the sizes of all its pairs (image headers, disk backend) and decode its
    first pair: empty or unreadable datasets, pairs whose sizes differ (GT must be LQ x ``scale``) and image channels
    that the network does not take raise errors naming the key and the file."""
    from basicsr.data import build_dataset
    from basicsr.utils import FileClient
    from copy import deepcopy
    in_ch, ch_key = _net_in_channels(opt, net) if net is not None else (None, None)
    scale = int(opt.get('scale', 1))
    for phase, dataset_opt in (opt.get('datasets') or {}).items():
        if not isinstance(dataset_opt, dict) or dataset_opt.get('type') not in PAIRED_DATASETS:
            continue
        try:
            dataset = build_dataset(deepcopy(dataset_opt))
        except (ValueError, FileNotFoundError):
            raise
        except Exception as err:  # e.g. BasicSR's assertion on lq/gt folders of different lengths
            raise ValueError(f'datasets.{phase} cannot be read: {type(err).__name__}: {_short(err)}. Fix: check '
                             'dataroot_gt / dataroot_lq / filename_tmpl / meta_info_file.') from err
        if len(dataset) == 0:
            raise ValueError(f'datasets.{phase} ({dataset_opt.get("dataroot_gt")}) has no images. Fix: check '
                             'dataroot_gt / dataroot_lq, or create the data (e.g. `basicsr-mh make-data`).')
        paths = getattr(dataset, 'paths', None)
        if not paths or not isinstance(paths[0], dict) or 'gt_path' not in paths[0]:
            continue
        io_opt = deepcopy(getattr(dataset, 'io_backend_opt', dataset_opt.get('io_backend') or {'type': 'disk'}))
        backend = io_opt.pop('type')
        if backend == 'disk':  # every pair's size from the image headers (cheap), naming the first bad file
            for pair in paths:
                _check_pair_size(phase, pair['gt_path'], pair['lq_path'], _image_size(pair['gt_path'], phase),
                                 _image_size(pair['lq_path'], phase), scale)
        client = FileClient(backend, **io_opt)
        gt_path, lq_path = paths[0]['gt_path'], paths[0]['lq_path']
        img_gt = _read_image(client, gt_path, phase, 'gt')
        img_lq = _read_image(client, lq_path, phase, 'lq')
        _check_pair_size(phase, gt_path, lq_path, img_gt.shape[1::-1], img_lq.shape[1::-1], scale)
        channels = 1 if dataset_opt.get('color') == 'y' else (img_lq.shape[2] if img_lq.ndim == 3 else 1)
        if in_ch is not None and in_ch != channels:
            raise ValueError(f'{ch_key} takes {in_ch} channel(s), but datasets.{phase} gives {channels}-channel '
                             f'images ("{lq_path}"). Fix: set {ch_key} to {channels} (and the output '
                             'channels to match), or use images with that many channels.')


def preflight(opt):
    """Everything that can fail cheaply before a run writes to disk: build the network on the CPU, fit the
    pretrained checkpoint into it, read the first pair of every paired dataset. Raises ValueError/FileNotFoundError
    naming the key (and the file) and the fix.

    Args:
        opt (dict): parsed and upgraded options (:func:`basicsr_mh.cli_options.parse_options`).
    """
    import torch
    with torch.no_grad():
        net = check_network(opt)
    check_pretrained(opt, net)
    check_datasets_content(opt, net)
    return net
