"""Shared pieces of the deployment tools: option files, checkpoints, head names, error reporting."""
import os
import sys

from basicsr_mh import compat  # noqa: F401  (must precede any basicsr import)
from basicsr_mh.archs.multihead_arch import MultiHeadArch
from basicsr_mh.cli_options import import_user_modules, load_option_file
from basicsr_mh.heads import MULTIHEAD_META_KEY, head_pair_name
from basicsr_mh.models.checkpoint import checkpoint_trust, network_state, read_checkpoint
from basicsr_mh.options import upgrade_network_options

#: The head spec ``mean``: the average of all heads (for the additive output layer, the backbone's own output path).
MEAN_HEAD = 'mean'


class ToolError(ValueError):
    """A user-facing error of a tool: printed as one line, exit code 1."""


def run_tool(prog, func, args):
    """Call ``func(args)``; print a one-line error and return 1 on a user error (``BASICSR_MH_TRACEBACK=1`` raises)."""
    try:
        return func(args)
    except (ValueError, FileExistsError, FileNotFoundError, KeyError) as err:
        if os.environ.get('BASICSR_MH_TRACEBACK'):
            raise
        print(f'{prog}: error: {err}', file=sys.stderr)
        return 1


def read_options(path, imports=()):
    """Parse a BasicSR option file (YAML) into a dict, after importing the modules of ``imports`` (``--import``) and
    of the file's ``imports:`` list (the user's code that registers its archs)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f'Option file "{path}" does not exist.')
    import_user_modules(list(imports), '--import')
    opt = load_option_file(path)
    if isinstance(opt, dict):
        import_user_modules(opt.get('imports') or [], f'{path}: imports')
    if not isinstance(opt, dict) or not isinstance(opt.get('network_g'), dict):
        raise ToolError(f'{path}: no `network_g` section; pass the option file the model was trained or tested with.')
    return opt


def build_net(opt):
    """Build ``network_g`` of ``opt`` (short or long multi-head form, or a plain backbone) on the CPU, eval mode.

    Returns:
        tuple(nn.Module, dict): the network (:class:`MultiHeadArch` or the plain backbone) and its long-form options.
    """
    from basicsr_mh.options import build_network
    net_opt, _ = upgrade_network_options(opt['network_g'])
    return build_network(net_opt).eval(), net_opt


def checkpoint_path(opt, ckpt=None):
    """``ckpt`` or the option file's ``path.pretrain_network_g``; a clear error when there is none."""
    path = ckpt or (opt.get('path') or {}).get('pretrain_network_g')
    if not path:
        raise ToolError('no checkpoint: pass --ckpt net_g_X.pth or set path.pretrain_network_g in the option file.')
    return path


def load_state(net, state, where):
    """``net.load_state_dict(state, strict=True)`` with an error that names the checkpoint and the usual fix."""
    try:
        net.load_state_dict(state, strict=True)
    except (RuntimeError, ValueError) as err:
        raise ToolError(f'{where} does not fit network_g of the option file ({str(err).splitlines()[0]} ...). Fix: '
                        'pass the option file the checkpoint was trained with (same backbone, num_heads, combine).') \
            from err


def load_model(opt, ckpt=None, param_key=None, trust=False):
    """Build ``network_g`` and load its weights.

    Args:
        trust (bool): ``--trust-checkpoint``; ``path.trust_checkpoint`` of ``opt`` counts too.

    Returns:
        tuple: (net in eval mode, long-form net options, checkpoint dict, param key used, checkpoint path).
    """
    path = checkpoint_path(opt, ckpt)
    checkpoint = read_checkpoint(path, trust=trust or checkpoint_trust(opt))
    net, net_opt = build_net(opt)
    requested = param_key or (opt.get('path') or {}).get('param_key_g')
    try:
        state, key = network_state(checkpoint, requested, prefer_ema=True, where=f'checkpoint "{path}"')
    except ValueError as err:
        raise ToolError(str(err)) from err
    load_state(net, state, f'checkpoint "{path}" [{key}]')
    check_meta(net, checkpoint, path)
    return net, net_opt, checkpoint, key, path


def check_meta(net, checkpoint, path):
    """The checkpoint's ``multihead`` entry (if any) must agree with the network built from the option file."""
    meta = checkpoint.get(MULTIHEAD_META_KEY) or {}
    if not meta:
        return
    num_heads, combine = getattr(net, 'num_heads', 1), getattr(net, 'combine', False)
    if meta.get('num_heads', num_heads) != num_heads or meta.get('combine', combine) != combine:
        raise ToolError(f'checkpoint "{path}" was trained with num_heads={meta.get("num_heads")}, '
                        f'combine={meta.get("combine")}, the option file builds num_heads={num_heads}, '
                        f'combine={combine}. Fix: pass the option file it was trained with.')


def head_pairs(net):
    """[(i, j), ...] of the extended heads (``[(0, 0)]`` for a plain network)."""
    return list(net.head_pairs) if isinstance(net, MultiHeadArch) else [(0, 0)]


def head_name(net, index):
    """``'h4 (2+1)'`` / ``'h2'`` / ``'mean'``."""
    if index == MEAN_HEAD:
        return MEAN_HEAD
    if not isinstance(net, MultiHeadArch):
        return 'h0'
    return head_pair_name(index, net.num_heads, net.combine)


def parse_head(spec, net, checkpoint):
    """An extended-head index from ``best`` (the checkpoint's ``multihead.best_head``), ``N``/``hN``, or ``i+j``;
    :data:`MEAN_HEAD` for ``mean`` (the average of all heads).

    Raises:
        ToolError: for an index out of range, an unknown pair, or ``best`` without the checkpoint's meta entry.
    """
    pairs = head_pairs(net)
    spec = str(spec).strip()
    if spec == MEAN_HEAD:
        return MEAN_HEAD
    if spec == 'best':
        meta = checkpoint.get(MULTIHEAD_META_KEY) or {}
        if not isinstance(net, MultiHeadArch):
            return 0
        if 'best_head' not in meta:
            raise ToolError('--head best: the checkpoint has no `multihead.best_head` entry (not saved by basicsr-mh '
                            'training). Fix: give a head index (--head 3) or a pair (--head 2+1).')
        index = int(meta['best_head'])
    elif '+' in spec:
        try:
            i, j = (int(p) for p in spec.split('+'))
        except ValueError:
            raise ToolError(f'--head "{spec}": a pair is written i+j with integers, e.g. 2+1.') from None
        candidates = [n for n, p in enumerate(pairs) if p in ((i, j), (j, i))]
        if not candidates:
            num_heads = getattr(net, 'num_heads', 1)
            hint = 'the network has no combined heads (combine: false): only i+i pairs' if not getattr(
                net, 'combine', False) else f'heads are 0..{num_heads - 1}'
            raise ToolError(f'--head {spec}: no extended head is the pair ({i}, {j}); {hint}.')
        index = candidates[0]
    else:
        try:
            index = int(spec[1:] if spec[:1] in 'hH' and len(spec) > 1 else spec)
        except ValueError:
            raise ToolError(f'--head "{spec}": expected best, mean, an index (3 or h3) or a pair (2+1).') from None
    if not 0 <= index < len(pairs):
        raise ToolError(f'head {index} does not exist: the network has {len(pairs)} extended heads '
                        f'(h0..h{len(pairs) - 1}).')
    return index
