"""MultiHeadArch: give any BasicSR backbone K output heads by growing only its output layer.

The wrapped backbone's ``forward()`` is not touched. Its output layer (a ``Conv2d`` that feeds the network output
through an additive tail: global residual, crop after padding, ``x / img_range + mean``) is replaced by a
:class:`~.multihead_layers.MultiHeadConv2d` with ``K * C_out`` output channels. That layer hands the backbone the
mean of its heads and keeps all heads; since the tail is additive, head ``k`` of the network is exactly
``y(mean) + a * crop(R_k - mean)``. A probe at build time finds the output layer, measures ``a`` and checks the
additivity (:mod:`.tail_probe`), unless the backbone declares its :class:`~basicsr_mh.heads.HeadLayout` (ours do:
``multihead_layout()``); a backbone whose tail is not additive gets a clear error naming the layer.

Multi-stage backbones (HINet, MPRNet): a stage's image may also feed a later stage through a conv that reads it
(``sam12.conv3`` of HINet's supervised attention module). That conv is grown too, to ``K * C`` input channels
(:class:`~.multihead_layers.MultiHeadInputConv2d`), and reads all K head images of the stage, as the reference
multi-head HINet and MPRNet do, so their checkpoints load and give the same outputs (``feed_all_heads=False``: it
reads the mean of the heads).
"""
from basicsr.utils import get_root_logger
from basicsr.utils.registry import ARCH_REGISTRY
from copy import deepcopy
from dataclasses import replace
from torch import nn

from ..heads import (START_NAMES, check_head_init, check_head_options, check_score_options, extended_head_pairs,
                     registered)
from .head_init import NoIdentityStart, start_at_identity
from .multihead_layers import MultiHeadConv2d, MultiHeadInputConv2d, ScoreBranch, crop_to, outputs_as_list
from .pair_means import pair_means
from .tail_probe import find_in_channels, find_layout, make_probe

__all__ = ['MultiHeadArch', 'head_layout', 'identity_backbone']


def head_layout(backbone,
                backbone_opt=None,
                head_layers=None,
                probe_size=None,
                probe_channels=None,
                feed_all_heads=True):
    """The :class:`~basicsr_mh.heads.HeadLayout` of ``backbone`` (left in eval mode) and a probe to initialise it.

    The backbone's own declaration (``multihead_layout()``) when it has one and ``head_layers`` is not given;
    otherwise :func:`~.tail_probe.find_layout` probes it.

    Args:
        backbone (nn.Module): the plain backbone.
        backbone_opt (dict | None): its options (for its input channels).
        head_layers (list[str] | str | None): output layer(s) named by the user.
        probe_size (int | None): probe size; None: the declared one, else 64.
        probe_channels (int | None): probe channels; None: read from the options or the backbone.
        feed_all_heads (bool): find (or keep) the convs that read a non-final stage's image.

    Returns:
        tuple: ``(HeadLayout, TailProbe)``.
    """
    in_ch = probe_channels or find_in_channels(backbone_opt, backbone)
    declare = getattr(backbone, 'multihead_layout', None)
    if head_layers is None and callable(declare):
        layout = declare()
        if not feed_all_heads:
            layout = replace(layout, head_inputs=())
        return layout, make_probe(backbone, in_ch, probe_size or layout.probe_size)
    return find_layout(backbone, in_ch, probe_size or 64, head_layers, feed_all_heads)


def start_heads(probe, layout, layers, head_init, backbone_type):
    """Initialise the output layer(s) ``layers`` of ``layout`` (plain Conv2d, before they are grown; every head is
    then drawn at their scale) and return the ``head_init`` used: ``backbone`` leaves them; ``identity`` starts the
    network at its input (:func:`~.head_init.start_at_identity`); None (default) is ``identity`` where the backbone
    allows it (a global residual), else ``backbone``, logged."""
    if head_init == 'backbone':
        return head_init
    try:
        start_at_identity(probe, layers, backbone_type, layout.global_residual)
    except NoIdentityStart:
        if head_init == 'identity':
            raise
        get_root_logger().info(f'MultiHeadArch: {backbone_type} has no global residual; its heads start '
                               'from the backbone\'s own initialisation (head_init: backbone).')
        return 'backbone'
    return 'identity'


def identity_backbone(backbone, backbone_opt=None, head_layers=None, probe_size=None, probe_channels=None):
    """``head_init: identity`` for a plain (single-head) backbone: its output layer(s), found as for heads, start as
    :func:`~.head_init.start_at_identity` says. Returns ``backbone`` (changed in place)."""
    was_training = backbone.training
    backbone.eval()
    layout, probe = head_layout(backbone, backbone_opt, head_layers, probe_size, probe_channels, False)
    layers = [_get_submodule(backbone, name) for name in layout.layer_names]
    start_at_identity(probe, layers, type(backbone).__name__, layout.global_residual)
    backbone.train(was_training)
    return backbone


@ARCH_REGISTRY.register()
class MultiHeadArch(nn.Module):
    """K output heads on any BasicSR backbone (Liu et al., "Multi-Outputs Is All You Need For Deblur").

    Args:
        backbone (dict | nn.Module): the backbone's option dict (``{type: NAFNet, width: 32, ...}``), built through
            BasicSR's ARCH_REGISTRY, or a module.
        num_heads (int): K >= 1.
        combine (bool): combine heads in pairs into K' = K(K+1)/2 extended heads (Eq. 6), in the order
            h0=(0,0), h1=(1,0), h2=(1,1), h3=(2,0), ...; otherwise K' = K.
        head_layers (list[str] | str | None): names of the output layer(s) to grow (one per headed network
            output). Found automatically when None: the last Conv2d, called once, whose effect on a network output
            is additive.
        probe_size (int | None): spatial size of the build-time probe input (a multiple of the backbone's size factor);
            None: the size the backbone declares in its layout, else 64.
        probe_channels (int | None): input channels of the probe; read from the backbone's options when None.
        feed_all_heads (bool): for multi-stage backbones: a conv (run once, ``groups=1``) whose input is an additive
            function of a non-final stage's head layer (HINet/MPRNet ``sam*.conv3``, which read the stage image)
            reads all K head images of that stage (:class:`MultiHeadInputConv2d`, ``K * C`` input channels), as the
            reference multi-head HINet/MPRNet do. False: it reads the mean of the heads (no extra parameters).
        head_init (str | None): ``backbone`` (the backbone's own initialisation of the output layer; head 0 takes it,
            the other heads fresh draws of its scale) or ``identity`` (:func:`start_at_identity`: every head starts
            at the network input plus a small distinct perturbation; needs a global residual). None (default):
            ``identity`` where the backbone has a global residual, else ``backbone`` (logged). For the plain
            backbone of ``num_heads: 1, combine: false`` only an explicit ``identity`` changes anything. Only the
            initialisation differs: checkpoints load as before.
        head_scores (bool): add a :class:`ScoreBranch` that predicts, from the features that feed the final output
            layer, each extended head's chance of being a sample's winner (per pixel; the per-image score is the
            spatial mean of the logits). ``forward(x, return_scores=True)`` returns ``(heads, scores)``.
        score_to_backbone (bool): let the score loss's gradient reach the backbone (default: the branch reads the
            features detached).

    Input ``(B, C_in, H, W)``; output ``(B, K', C_out, H', W')``, or for a multi-stage backbone that returns a list,
    a list with one such tensor per headed stage (stages without a head layer stay ``(B, C_out, H', W')``).
    ``state_dict()`` keys are the backbone's keys; the output layer's weight has ``K * C_out`` channels, head-major
    (and a layer that reads a headed stage image ``K * C_out`` input channels, head-major).
    With ``num_heads: 1, combine: false`` the plain backbone itself is returned.
    """

    def __new__(cls, backbone=None, num_heads=1, combine=False, **kwargs):
        if backbone is None and not kwargs:
            # copy.deepcopy / pickle re-create the object without arguments, then restore its __dict__
            return super().__new__(cls)
        num_heads, combine = check_head_options(num_heads, combine)
        check_score_options(
            kwargs.get('head_scores', False), kwargs.get('score_to_backbone', False), num_heads, combine)
        if num_heads == 1 and not combine:
            plain = _build_backbone(backbone)
            if check_head_init(kwargs.get('head_init', 'backbone')) == 'identity':
                identity_backbone(plain, backbone if isinstance(backbone, dict) else None, kwargs.get('head_layers'),
                                  kwargs.get('probe_size'), kwargs.get('probe_channels'))
            return plain
        return super().__new__(cls)

    def __init__(self,
                 backbone=None,
                 num_heads=1,
                 combine=False,
                 head_layers=None,
                 probe_size=None,
                 probe_channels=None,
                 feed_all_heads=True,
                 head_init=None,
                 head_scores=False,
                 score_to_backbone=False):
        super().__init__()
        num_heads, combine = check_head_options(num_heads, combine)
        self.head_init = check_head_init(head_init)  # None until _attach_heads resolves the default
        self.num_heads = num_heads
        self.combine = combine
        self.head_pairs = extended_head_pairs(num_heads, combine)
        self.num_outputs = len(self.head_pairs)
        self.backbone = _build_backbone(backbone)
        self.backbone_type = type(self.backbone).__name__

        self.feed_all_heads = bool(feed_all_heads)
        self.head_init = self._attach_heads(
            backbone if isinstance(backbone, dict) else None, head_layers, probe_size, probe_channels, self.head_init)
        self.head_scores, self.score_to_backbone = head_scores, score_to_backbone  # checked in __new__
        if self.head_scores:
            final = getattr(self.backbone, 'final_output_index', -1) % self.num_stage_outputs
            final_layer = self._grown[self.output_heads[final]]
            final_layer.keep_input = True
            self.score_branch = ScoreBranch(final_layer.in_channels, self.num_outputs)
        self._register_state_dict_hook(_strip_backbone_prefix)
        self._register_load_state_dict_pre_hook(_add_backbone_prefix)

    # ------------------------------------------------------------------ build
    def _attach_heads(self, backbone_opt, head_layers, probe_size, probe_channels, head_init):
        """Grow the output layer(s) of the backbone's :class:`~basicsr_mh.heads.HeadLayout` into K heads; returns
        the ``head_init`` used."""
        was_training = self.backbone.training
        self.backbone.eval()
        layout, probe = head_layout(self.backbone, backbone_opt, head_layers, probe_size, probe_channels,
                                    self.feed_all_heads)
        modules = dict(self.backbone.named_modules())
        head_init = start_heads(probe, layout, [modules[name] for name in layout.layer_names], head_init,
                                self.backbone_type)
        self.head_layer_names = []
        self.output_heads = {}
        self.output_scales = {}
        for index, name, scale, detach in sorted(layout.outputs):
            grown = MultiHeadConv2d(modules[name], self.num_heads, detach_mean=detach)
            grown.layer_name = name
            _set_submodule(self.backbone, name, grown)
            self.head_layer_names.append(name)
            self.output_heads[index] = name
            self.output_scales[index] = scale
        self.num_stage_outputs = layout.num_network_outputs
        self._grown = {name: _get_submodule(self.backbone, name) for name in self.head_layer_names}
        self.head_input_layers = {}
        for name, producer, scale in layout.head_inputs:
            _set_submodule(self.backbone, name, MultiHeadInputConv2d(modules[name], self._grown[producer], scale))
            self.head_input_layers[name] = producer
        self.backbone.train(was_training)
        reads = ''.join(f'; {c} reads the heads of {p}' for c, p in self.head_input_layers.items())
        get_root_logger().info(f'MultiHeadArch: {self.backbone_type} with {self.num_heads} heads'
                               f'{" combined into " + str(self.num_outputs) if self.combine else ""}; output layer(s) '
                               f'{", ".join(self.head_layer_names)} grown x{self.num_heads}, tail scale(s) '
                               f'{", ".join(f"{s:g}" for s in self.output_scales.values())}{reads}; heads start '
                               f'from {START_NAMES[head_init]}.')
        return head_init

    # ------------------------------------------------------------------ forward
    # ------------------------------------------------------------------ forward
    def combine_heads(self, heads):
        """(B, K, C, h, w) -> (B, K', C, h, w): extended heads in pair order (identity without combine)."""
        if not self.combine:
            return heads
        return pair_means(heads, self.head_pairs)

    def forward(self, x, return_scores=False):
        """(B, C_in, H, W) -> (B, K', C_out, H', W'), or a list of them for multi-stage backbones.

        With ``return_scores`` (needs ``head_scores``): ``(heads, scores)``, ``scores`` the per-pixel logits
        (B, K', H', W') of each extended head being the winner, for the final output.
        """
        if return_scores and not self.head_scores:
            raise ValueError('MultiHeadArch: return_scores needs a score branch. Fix: `head_scores: true` under '
                             'network_g (and train it).')
        try:
            outputs, single = outputs_as_list(self.backbone(x))
            result, scores = [], None
            for index, y in enumerate(outputs):
                name = self.output_heads.get(index)
                if name is None:
                    result.append(y)
                    continue
                heads, mean = self._grown[name].pop_heads()
                # y + a * (pair means - mean), in place in one fresh (B, K', C, h, w) tensor: the same values with
                # fewer full-size temporaries (none of these ops saves its output for backward)
                delta = self.combine_heads(heads)
                delta = delta.sub_(mean.unsqueeze(1)) if delta is not heads else heads - mean.unsqueeze(1)
                cropped = crop_to(delta, y.shape[-2], y.shape[-1])
                delta = cropped if cropped is delta else cropped.contiguous()
                scale = self.output_scales[index]
                delta = delta if scale == 1.0 else delta.mul_(scale)
                # under autocast y may be wider than the heads (an FP32 residual): then out of place, promoted
                result.append(delta.add_(y.unsqueeze(1)) if delta.dtype == y.dtype else y.unsqueeze(1) + delta)
                if self._grown[name].keep_input:
                    features = self._grown[name].pop_input()
                    if return_scores:
                        logits = self.score_branch(features if self.score_to_backbone else features.detach())
                        scores = crop_to(logits, y.shape[-2], y.shape[-1])
        finally:  # a backbone that fails midway must not leave a stash behind (the next call would refuse)
            for layer in self._grown.values():
                layer.forget()
        out = result[0] if single else result
        return (out, scores) if return_scores else out

    def extra_repr(self):
        return (f'num_heads={self.num_heads}, combine={self.combine}, num_outputs={self.num_outputs}, '
                f'head_layers={self.head_layer_names}, head_input_layers={list(self.head_input_layers)}')


def _build_backbone(backbone):
    if isinstance(backbone, nn.Module):
        return backbone
    if not isinstance(backbone, dict) or 'type' not in backbone:
        raise ValueError('MultiHeadArch needs `backbone: {type: <registered arch>, ...}` (got '
                         f'{backbone!r}). Fix: e.g. `backbone: {{type: NAFNet, width: 32}}`, or put `num_heads` and '
                         '`combine` next to `type` under network_g.')
    opt = deepcopy(backbone)
    arch_type = opt.pop('type')
    if arch_type == 'MultiHeadArch':
        raise ValueError('MultiHeadArch: the backbone cannot itself be a MultiHeadArch.')
    return registered(ARCH_REGISTRY, arch_type, 'network_g backbone type')(**opt)


def _get_submodule(root, name):
    module = root
    for part in name.split('.'):
        module = getattr(module, part)
    return module


def _set_submodule(root, name, new):
    parent_name, _, child = name.rpartition('.')
    parent = _get_submodule(root, parent_name) if parent_name else root
    setattr(parent, child, new)


def _rename_keys(mapping, old_prefix, new_prefix):
    """Rename keys that start with ``old_prefix`` in place, keeping their order."""
    items = list(mapping.items())
    if not any(k.startswith(old_prefix) for k, _ in items):
        return
    for k, _ in items:
        del mapping[k]
    for k, v in items:
        mapping[new_prefix + k[len(old_prefix):] if k.startswith(old_prefix) else k] = v


def _strip_backbone_prefix(module, state_dict, prefix, local_metadata):
    """state_dict hook: ``<prefix>backbone.x`` -> ``<prefix>x`` so keys equal the backbone's own."""
    _rename_keys(state_dict, prefix + 'backbone.', prefix)
    metadata = getattr(state_dict, '_metadata', None)
    if metadata is not None:
        inner = prefix + 'backbone'
        for key in [k for k in list(metadata) if k == inner or k.startswith(inner + '.')]:
            metadata[prefix + key[len(inner) + 1:] if key != inner else prefix.rstrip('.')] = metadata.pop(key)
    return state_dict


def _add_backbone_prefix(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
    """load_state_dict pre-hook: accept the backbone's own keys (``<prefix>x`` -> ``<prefix>backbone.x``)."""
    own = (prefix + 'backbone.', prefix + 'score_branch.')
    items = [(k, v) for k, v in state_dict.items() if k.startswith(prefix) and not k.startswith(own)]
    if any(k.startswith(prefix + 'backbone.') for k in state_dict):
        return
    for k, _ in items:
        del state_dict[k]
    for k, v in items:
        state_dict[prefix + 'backbone.' + k[len(prefix):]] = v
