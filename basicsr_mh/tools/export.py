"""``basicsr-mh export``: one head of a multi-head checkpoint as a plain backbone checkpoint (zero overhead).

Head ``k`` of a :class:`~basicsr_mh.archs.multihead_arch.MultiHeadArch` is ``y(mean) + a * crop(R_k - mean)`` where
``R_k`` is block ``k`` (rows ``k * C_out .. (k + 1) * C_out - 1``) of the grown output conv and the tail after it is
additive. A conv with block ``k``'s weight and bias gives ``R_k``, so the plain backbone with that block as its
output layer returns head ``k`` exactly. The extended head (i, j) is ``(mu_i + mu_j) / 2``; a conv is affine in its
weight and bias, so the output layer with the averaged blocks ``(W_i + W_j) / 2``, ``(b_i + b_j) / 2`` returns it
exactly too.

Multi-stage backbones (HINet, MPRNet): the final stage's output layer gets the chosen head; the output layers of the
earlier stages get the mean of their heads (the image the multi-head model hands the later stages). A conv that
reads all K head images of an earlier stage (:class:`MultiHeadInputConv2d`, ``feed_all_heads: true``) computes
``sum_k V_k * (x + a (R_k - mean))`` with its K input blocks ``V_k``. It equals a plain conv with weight
``sum_k V_k`` on the stage image ``x`` when all ``V_k`` are equal (the term in ``R_k - mean`` sums to zero) or all
heads of that stage are equal (``R_k = mean``); otherwise it depends on every head of the earlier stage, which one
plain stage output cannot carry, and export is refused. With ``feed_all_heads: false`` later stages read the mean
and every head exports exactly.
"""
import os
import torch
from collections import OrderedDict

from basicsr_mh.archs.multihead_arch import MultiHeadArch, _get_submodule
from basicsr_mh.models.checkpoint import atomic_torch_save, checkpoint_trust, read_checkpoint
from basicsr_mh.version import __version__
from basicsr_mh_cli.parsers import export_parser
from ..heads import MULTIHEAD_META_KEY
from ..inference import final_output, final_output_index
from ..models.checkpoint import network_state
from .common import (MEAN_HEAD, ToolError, build_net, check_meta, head_name, load_state, parse_head, read_options,
                     run_tool)

EXPORT_META_KEY = 'exported_from'
_EQUAL_RTOL = 1e-6


def _blocks_equal(blocks):
    """Whether all slices ``blocks[k]`` along dim 0 are equal up to float rounding."""
    scale = max(float(blocks.abs().max()), 1e-12)
    return float((blocks - blocks[:1]).abs().max()) <= _EQUAL_RTOL * scale


def _head_blocks(layer, param):
    """(K, C_out, ...) view of a grown output layer's ``weight`` or ``bias``."""
    value = getattr(layer, param).detach()
    return value.view(layer.num_heads, layer.head_channels, *value.shape[1:])


def plain_state_dict(net, index):
    """The plain backbone's state dict whose final output equals extended head ``index`` of ``net``.

    Args:
        net (MultiHeadArch | nn.Module): the multi-head network (a plain backbone: ``index`` must be 0).
        index (int | str): extended head index (pair ``net.head_pairs[index]``), or ``'mean'``: the mean of all
            heads, which for the additive output layer is the layer with its blocks averaged (exact).

    Returns:
        OrderedDict: the backbone's keys; the output layer(s) with ``C_out`` output channels, every
        :class:`MultiHeadInputConv2d` with ``C`` input channels; no score branch (``head_scores``).

    Raises:
        ToolError: when a conv reads the distinct heads of an earlier stage (see the module docstring).
    """
    state = OrderedDict(
        (k, v.detach().clone()) for k, v in net.state_dict().items() if not k.startswith('score_branch.'))
    if not isinstance(net, MultiHeadArch):
        if index not in (0, MEAN_HEAD):
            raise ToolError(f'head {index}: the network is a plain backbone (one output).')
        return state
    final = final_output_index(net, net.num_stage_outputs)
    for out_index, name in net.output_heads.items():
        layer = net._grown[name]
        for param in ('weight', 'bias'):
            if getattr(layer, param) is None:
                continue
            blocks = _head_blocks(layer, param)
            if out_index == final and index != MEAN_HEAD:
                i, j = net.head_pairs[index]
                state[f'{name}.{param}'] = (blocks[i] + blocks[j]) * 0.5
            else:  # the mean of the base heads is the mean of all extended heads (each base head is in K+1 pairs)
                state[f'{name}.{param}'] = blocks.mean(dim=0)
    for name, producer in net.head_input_layers.items():
        layer = _get_submodule(net.backbone, name)
        weight = layer.weight.detach()
        blocks = weight.view(weight.shape[0], layer.num_heads, layer.head_channels, *weight.shape[2:]).transpose(0, 1)
        grown = net._grown[producer]
        same_heads = all(
            _blocks_equal(_head_blocks(grown, p)) for p in ('weight', 'bias') if getattr(grown, p) is not None)
        if not (_blocks_equal(blocks) or same_heads):
            raise ToolError(
                f'{net.backbone_type} head {head_name(net, index)} cannot be exported as a plain {net.backbone_type}: '
                f'layer "{name}" reads all {net.num_heads} head images of the stage made by "{producer}" '
                '(feed_all_heads: true) with different weights per head, so the final image depends on every head '
                'of that stage, which one plain stage output cannot carry. Use the multi-head model itself '
                '(`basicsr-mh infer`), or train with `feed_all_heads: false` (later stages read the mean of the '
                'heads; every head then exports exactly).')
        state[f'{name}.weight'] = blocks.sum(dim=0)
    return state


def build_plain(net_opt):
    """The stock backbone of long-form network options (the backbone itself for a plain network)."""
    from basicsr.archs import build_network
    backbone_opt = net_opt.get('backbone') if net_opt.get('type') == 'MultiHeadArch' else net_opt
    return build_network(dict(backbone_opt)).eval(), dict(backbone_opt)


@torch.no_grad()
def verify_export(net, plain, index, probe_size=64, backbone_opt=None, probe_channels=None):
    """Max abs difference between ``plain``'s final output and head ``index`` of ``net`` on a random probe.

    Raises:
        ToolError: when it exceeds ``1e-4 * max(1, max |output|)`` (the tail was not additive after all).
    """
    from basicsr_mh.archs.tail_probe import find_in_channels
    in_ch = probe_channels or find_in_channels(backbone_opt, getattr(net, 'backbone', net))
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(1, in_ch, probe_size, probe_size, generator=gen)
    heads = final_output(net(x), net)
    want = heads.mean(dim=1) if index == MEAN_HEAD else heads[:, index]
    got = final_output(plain(x), plain)[:, 0]
    err = float((got - want).abs().max())
    if not err <= 1e-4 * max(1.0, float(want.abs().max())):
        raise ToolError(f'export check failed: the plain backbone differs from head {head_name(net, index)} by '
                        f'{err:.3g} on a probe input; not written.')
    return err


def export_head(ckpt_path, opt, head='best', out_path=None, verify=True, trust=False):
    """Export one head; returns the checkpoint dict written (or that would be written when ``out_path`` is None).

    Args:
        ckpt_path (str): multi-head checkpoint (BasicSR layout, ``params`` [+ ``params_ema``] [+ ``multihead``]).
        opt (dict): parsed option file (its ``network_g``).
        head (str | int): ``best``, an extended-head index, or ``'i+j'``.
        out_path (str | None): where to write; refused when it exists.
        verify (bool): compare the exported backbone with the multi-head network on a probe input.
        trust (bool): ``--trust-checkpoint``: load a checkpoint that needs ``weights_only=False``
            (``path.trust_checkpoint`` of ``opt`` counts too).
    """
    if out_path is not None and os.path.exists(out_path):
        raise FileExistsError(f'--out "{out_path}" exists; export never overwrites. Fix: choose another path or '
                              'remove the file.')
    checkpoint = read_checkpoint(ckpt_path, trust=trust or checkpoint_trust(opt))
    net, net_opt = build_net(opt)
    keys = [k for k in ('params', 'params_ema') if k in checkpoint] or [None]
    index = parse_head(head, net, checkpoint)
    saved = {}
    errors = {}
    for key in keys:
        state, _ = network_state(checkpoint, key, where=f'checkpoint "{ckpt_path}"')
        load_state(net, state, f'checkpoint "{ckpt_path}" [{key}]')
        check_meta(net, checkpoint, ckpt_path)
        plain_state = plain_state_dict(net, index)
        plain, backbone_opt = build_plain(net_opt)
        load_state(plain, plain_state, f'the exported head of "{ckpt_path}" [{key}]')
        if verify:
            errors[key or 'params'] = verify_export(net, plain, index, int(net_opt.get('probe_size') or 64),
                                                    backbone_opt, net_opt.get('probe_channels'))
        saved[key or 'params'] = OrderedDict((k, v.contiguous()) for k, v in plain.state_dict().items())
    pair = None if index == MEAN_HEAD else [int(p) for p in getattr(net, 'head_pairs', [(0, 0)])[index]]
    saved[EXPORT_META_KEY] = {
        'checkpoint': os.path.abspath(ckpt_path),
        'head': index if index == MEAN_HEAD else int(index),
        'head_name': head_name(net, index),
        'pair': pair,
        'num_heads': int(getattr(net, 'num_heads', 1)),
        'combine': bool(getattr(net, 'combine', False)),
        'backbone': backbone_opt,
        'best_head': (checkpoint.get(MULTIHEAD_META_KEY) or {}).get('best_head'),
        'verified_max_abs_error': errors,
        'basicsr_mh_version': __version__,
    }
    if out_path is not None:
        atomic_torch_save(saved, out_path)
    return saved


def _run(args):
    opt = read_options(args.opt, args.imports)
    ckpt = args.ckpt or (opt.get('path') or {}).get('pretrain_network_g')
    if not ckpt:
        raise ToolError('no checkpoint: pass --ckpt or set path.pretrain_network_g in the option file.')
    saved = export_head(ckpt, opt, args.head, args.out, verify=not args.no_verify, trust=args.trust_checkpoint)
    meta = saved[EXPORT_META_KEY]
    keys = [k for k in saved if k != EXPORT_META_KEY]
    err = ', '.join(f'{k} {v:.2g}' for k, v in meta['verified_max_abs_error'].items()) or 'not checked'
    print(f'Exported head {meta["head_name"]} of {ckpt} as a plain {meta["backbone"]["type"]} ({", ".join(keys)}) '
          f'to {args.out}; max abs difference on a probe: {err}.')
    return 0


def run(args, prog='basicsr-mh export'):
    """``basicsr-mh export`` with parsed arguments (:func:`basicsr_mh_cli.parsers.export_parser`); returns the exit code
    (0; 1 with a one-line error)."""
    return run_tool(prog, _run, args)


def main(argv=None, prog='basicsr-mh export'):
    """Command line ``argv`` (default ``sys.argv[1:]``); returns the exit code."""
    return run(export_parser(prog).parse_args(argv), prog)
