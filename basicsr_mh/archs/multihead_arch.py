"""MultiHeadArch: give any BasicSR backbone K output heads by growing only its output layer.

The wrapped backbone's ``forward()`` is not touched. Its output layer (a ``Conv2d`` that feeds the network output
through an additive tail: global residual, crop after padding, ``x / img_range + mean``) is replaced by a
:class:`MultiHeadConv2d` with ``K * C_out`` output channels. That layer hands the backbone the mean of its heads and
keeps all heads; since the tail is additive, head ``k`` of the network is exactly
``y(mean) + a * crop(R_k - mean)``. A probe at build time finds the output layer, measures ``a`` and checks the
additivity; a backbone whose tail is not additive gets a clear error naming the layer.

Multi-stage backbones (HINet, MPRNet): a stage's image may also feed a later stage through a conv that reads it
(``sam12.conv3`` of HINet's supervised attention module). That conv is grown too, to ``K * C`` input channels
(:class:`MultiHeadInputConv2d`), and reads all K head images of the stage, as the reference multi-head HINet and MPRNet
do, so their checkpoints load and give the same outputs (``feed_all_heads=False``: it reads the mean of the heads).
"""
import inspect
import math
import torch
import warnings
from basicsr.utils import get_root_logger
from basicsr.utils.registry import ARCH_REGISTRY
from collections import OrderedDict
from copy import deepcopy
from torch import nn

from ..keys import close_names
from .pair_means import pair_means

__all__ = [
    'MultiHeadArch', 'MultiHeadConv2d', 'MultiHeadInputConv2d', 'ScoreBranch', 'image_scores', 'extended_head_pairs',
    'num_extended_heads', 'head_pair_name'
]

MAX_RECOMMENDED_HEADS = 16
#: ``network_g.head_init`` values: ``backbone`` keeps the backbone's own initialisation of the output layer;
#: ``identity`` scales it so that every head starts at the network input plus a small distinct perturbation.
HEAD_INITS = ('backbone', 'identity')
START_NAMES = {'identity': 'the input (head_init: identity)', 'backbone': "the backbone's own initialisation"}
#: RMS of a head's departure from the input at an identity start, measured on the build probe.
IDENTITY_PERTURBATION = 1e-3
_IN_CHANNEL_KEYS = ('img_channel', 'inp_channels', 'in_channels', 'num_in_ch', 'in_chans', 'in_nc', 'in_c', 'in_chn')


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


def _conv_settings(conv):
    """Everything but the channel counts of a Conv2d, to build a grown copy of it."""
    return dict(
        kernel_size=conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,
        dilation=conv.dilation,
        groups=conv.groups,
        bias=conv.bias is not None,
        padding_mode=conv.padding_mode,
        device=conv.weight.device,
        dtype=conv.weight.dtype)


class MultiHeadConv2d(nn.Conv2d):
    """A Conv2d with ``num_heads * head_channels`` output channels that returns the mean of its heads.

    The weight is head-major: output channel ``k * C + c`` is channel ``c`` of head ``k`` (the reference
    multi-head NAFNet/Restormer layout), so its ``weight``/``bias`` keys and shapes equal theirs.

    Forward: ``x`` (B, C_in, h, w) -> mean of heads (B, C, h, w), which the backbone continues with. All heads
    ``(B, K, C, h, w)`` and the mean are kept until :meth:`pop_heads` is called by :class:`MultiHeadArch`.
    When ``detach_mean`` is set (the layer reaches the network output only through an additive tail), the mean is
    handed on without gradient, so every head's gradient comes from its own output only (exact, no cancellation).

    Loading a single-head checkpoint (``C`` output channels) replicates that layer into every head (warm start).
    """

    def __init__(self, conv, num_heads, detach_mean=True):
        super().__init__(conv.in_channels, conv.out_channels * num_heads, **_conv_settings(conv))
        self.num_heads = num_heads
        self.head_channels = conv.out_channels
        self.detach_mean = detach_mean
        self.layer_name = ''
        self._stash = None
        #: Keep the layer's input features for :meth:`pop_input` (set when a score branch reads them).
        self.keep_input = False
        self._input = None
        self._init_from(conv)

    @torch.no_grad()
    def _init_from(self, conv):
        """Head 0 takes the backbone's own initial weights; heads 1..K-1 a fresh draw of the same scale."""
        c = self.head_channels
        w0 = conv.weight.detach()
        std = w0.std() if w0.numel() > 1 else w0.abs().mean()
        self.weight[:c].copy_(w0)
        if self.num_heads > 1 and float(std) > 0:
            fresh = self.weight[c:]
            fresh.mul_(std / fresh.std().clamp_min(1e-12))
        elif self.num_heads > 1:
            self.weight[c:].copy_(w0.repeat(self.num_heads - 1, 1, 1, 1))
        if self.bias is not None:
            self.bias.copy_(conv.bias.detach().repeat(self.num_heads))

    def forward(self, x):
        """(B, C_in, h, w) -> mean of the heads (B, C, h, w); all heads are kept for :meth:`pop_heads`."""
        if self._stash is not None:
            raise RuntimeError(f'MultiHeadArch: the output layer "{self.layer_name}" was called twice in one '
                               'forward pass. A head layer must be used once per forward; name another layer in '
                               '`head_layers`.')
        out = super().forward(x)
        b, _, h, w = out.shape
        heads = out.view(b, self.num_heads, self.head_channels, h, w)
        mean = heads.mean(dim=1)
        if self.detach_mean:
            # detached in the stash too: head k = y(mean) + a * (R_k - mean) must carry gradient through R_k only
            # (a mean with gradient here would send -a/K of every head's gradient into all the other heads)
            mean = mean.detach()
        self._stash = (heads, mean)
        if self.keep_input:
            self._input = x
        # a copy: backbones may add to the returned tensor in place (MSRResNet's `out += base`)
        return mean.clone()

    def pop_input(self):
        """Return and forget the input features (B, C_in, h, w) of the last forward (``keep_input`` set)."""
        features, self._input = self._input, None
        if features is None:
            raise RuntimeError(f'MultiHeadArch: the output layer "{self.layer_name}" kept no input features.')
        return features

    def pop_heads(self):
        """Return and forget ``(heads (B, K, C, h, w), mean (B, C, h, w))`` of the last forward."""
        stash, self._stash = self._stash, None
        if stash is None:
            raise RuntimeError(f'MultiHeadArch: the output layer "{self.layer_name}" was not called in forward.')
        return stash

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        key = prefix + 'weight'
        if key in state_dict:
            loaded = state_dict[key]
            out_ch = loaded.shape[0]
            if out_ch != self.out_channels:
                if out_ch == self.head_channels:
                    state_dict[key] = loaded.repeat(self.num_heads, *([1] * (loaded.dim() - 1)))
                    if prefix + 'bias' in state_dict:
                        state_dict[prefix + 'bias'] = state_dict[prefix + 'bias'].repeat(self.num_heads)
                    get_root_logger().info(f'MultiHeadArch: single-head checkpoint layer "{prefix[:-1]}" replicated '
                                           f'into all {self.num_heads} heads (warm start).')
                elif out_ch % self.head_channels == 0:
                    raise ValueError(
                        f'The checkpoint\'s output layer "{prefix[:-1]}" has {out_ch // self.head_channels} heads, '
                        f'but network_g.num_heads is {self.num_heads}. Fix: set `num_heads: '
                        f'{out_ch // self.head_channels}` (and the `combine` it was trained with), or load a '
                        'single-head checkpoint to warm-start every head.')
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)


class MultiHeadInputConv2d(nn.Conv2d):
    """A Conv2d that reads a headed stage image and gets all K head images, stacked head-major on the channels.

    For a multi-stage backbone whose later stage reads an earlier stage's image through a conv ``c`` (input
    ``x = y(mean)``, additive in the head layer ``producer`` with scale ``a``), head ``k``'s image is
    ``x + a * (R_k - mean)``; this layer convolves the K head images concatenated on the channels (input channel
    ``k * C + c`` is channel ``c`` of head ``k``), so its weight has ``K * C`` input channels: the layout of the
    reference multi-head HINet/MPRNet (``sam.conv3``). A fresh layer and a single-head checkpoint's weight ``W`` start
    as ``W / K`` for every head, i.e. as the plain conv of the mean image.

    Forward: ``x`` (B, C, h, w), the backbone's stage image built from the mean of the heads -> (B, C_out, h', w').
    """

    def __init__(self, conv, producer, scale=1.0):
        num_heads = producer.num_heads
        super().__init__(conv.in_channels * num_heads, conv.out_channels, **_conv_settings(conv))
        self.num_heads = num_heads
        self.head_channels = conv.in_channels
        self.scale = scale
        # a plain reference, not a submodule: the producer's parameters stay under its own name
        object.__setattr__(self, 'producer', producer)
        with torch.no_grad():
            self.weight.copy_(conv.weight.detach().repeat(1, num_heads, 1, 1) / num_heads)
            if self.bias is not None:
                self.bias.copy_(conv.bias.detach())

    def forward(self, x):
        """(B, C, h, w) stage image of the mean head -> conv of the K head images (B, K * C, h, w)."""
        stash = self.producer._stash
        if stash is None:
            raise RuntimeError(f'MultiHeadArch: "{self.producer.layer_name}" must run before the layer that reads '
                               'its stage image.')
        heads, mean = stash
        delta = heads - mean.unsqueeze(1)
        stacked = x.unsqueeze(1) + (delta if self.scale == 1.0 else self.scale * delta)
        return super().forward(stacked.flatten(1, 2))

    def extra_repr(self):
        return f'{super().extra_repr()}, heads_of={self.producer.layer_name!r}'

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        key = prefix + 'weight'
        if key in state_dict and state_dict[key].dim() == 4 and state_dict[key].shape[1] != self.in_channels:
            in_ch = state_dict[key].shape[1]
            if in_ch == self.head_channels:
                state_dict[key] = state_dict[key].repeat(1, self.num_heads, 1, 1) / self.num_heads
                get_root_logger().info(f'MultiHeadArch: single-head checkpoint layer "{prefix[:-1]}" replicated '
                                       f'over the {self.num_heads} head images it reads (warm start).')
            elif in_ch % self.head_channels == 0:
                raise ValueError(
                    f'The checkpoint\'s layer "{prefix[:-1]}" reads {in_ch // self.head_channels} head images, but '
                    f'network_g.num_heads is {self.num_heads}. Fix: set `num_heads: {in_ch // self.head_channels}`.')
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)


def declared_in_channels(backbone_opt, backbone):
    """``(channels, key)`` of a backbone's input as its options or its constructor's default declare them.

    Args:
        backbone_opt (dict | None): the backbone's options (``img_channel``, ``in_channels``, ``num_in_ch``, ...).
        backbone (nn.Module): the built backbone; its class hierarchy is searched for a default (HINet registers
            other convs before the one that reads the image; HINetLocal passes its arguments on with ``**kwargs``).

    Returns:
        tuple: ``(int, str)``, or ``(None, None)`` when neither declares it.
    """
    for key in _IN_CHANNEL_KEYS:
        if isinstance(backbone_opt, dict) and isinstance(backbone_opt.get(key), int):
            return backbone_opt[key], key
    for cls in type(backbone).__mro__:
        try:
            params = inspect.signature(cls.__init__).parameters
        except (TypeError, ValueError):
            continue
        for key in _IN_CHANNEL_KEYS:
            if key in params and isinstance(params[key].default, int):
                return params[key].default, key
    return None, None


def _find_in_channels(backbone_opt, backbone):
    channels, _ = declared_in_channels(backbone_opt, backbone)
    if channels is not None:
        return channels
    for module in backbone.modules():
        if isinstance(module, nn.Conv2d):
            return module.in_channels
    raise ValueError('MultiHeadArch: cannot tell the backbone\'s input channels. Fix: set `probe_channels` under '
                     'network_g.')


def _outputs_as_list(out):
    if torch.is_tensor(out):
        return [out], True
    if isinstance(out, (list, tuple)) and all(torch.is_tensor(o) for o in out):
        return list(out), False
    raise TypeError(f'MultiHeadArch: the backbone returned {type(out).__name__}; a tensor or a list of tensors '
                    '(multi-stage backbones) is supported.')


def _crop_to(x, height, width):
    """Top-left crop of the last two dims of ``x`` to (height, width)."""
    if x.shape[-2] == height and x.shape[-1] == width:
        return x
    return x[..., :height, :width]


def _snap_scale(a):
    """Round a measured tail scale to 1/n or n when it is within float error of one (img_range 1 or 255)."""
    for cand in (round(a), 1.0 / round(1.0 / a) if abs(a) > 1e-12 and round(1.0 / a) != 0 else None):
        if cand and abs(a - cand) <= 1e-4 * abs(cand):
            return float(cand)
    return float(a)


class _TailProbe:
    """Runs the backbone with hooks to find its output layer(s) and check that the tail after them is additive."""

    def __init__(self, backbone, probe_input):
        self.backbone = backbone
        self.probe_input = probe_input

    @torch.no_grad()
    def run(self, perturb=None, watch=()):
        """Forward once. ``perturb``: (module, delta) added to that module's output. Returns outputs and calls.

        The inputs of the layers named in ``watch`` (first call) are kept in ``self.inputs``.
        """
        calls = OrderedDict()
        handles = []
        self.inputs = {}

        def make_hook(name):

            def hook(module, args, output):
                calls.setdefault(name, []).append(tuple(output.shape))
                if name in watch and name not in self.inputs:
                    self.inputs[name] = args[0].detach().clone()
                if perturb is not None and module is perturb[0]:
                    return output + perturb[1]
                return None

            return hook

        for name, module in self.backbone.named_modules():
            if isinstance(module, nn.Conv2d):
                handles.append(module.register_forward_hook(make_hook(name)))
        try:
            out = self.backbone(self.probe_input)
        finally:
            for h in handles:
                h.remove()
        return _outputs_as_list(out)[0], calls

    @torch.no_grad()
    def tail_effect(self, module, out_shape, base_outputs):
        """Perturb ``module``'s output; return per network output (scale a, relative residual, moved)."""
        gen = torch.Generator().manual_seed(1234)
        delta = torch.randn(out_shape, generator=gen).to(self.probe_input)
        outputs, _ = self.run((module, delta))
        effects = []
        for y0, y1 in zip(base_outputs, outputs):
            diff = (y1 - y0).double()
            moved = bool(diff.abs().max() > 0)
            if diff.shape[1] != delta.shape[1] or delta.shape[-2] < diff.shape[-2] or delta.shape[-1] < diff.shape[-1]:
                effects.append((None, math.inf, moved))
                continue
            d = _crop_to(delta, diff.shape[-2], diff.shape[-1]).double()
            a = float((diff * d).sum() / (d * d).sum())
            scale = max(float((a * d).abs().max()), 1e-12)
            residual = float((diff - a * d).abs().max()) / scale
            effects.append((a, residual, moved))
        return effects

    @torch.no_grad()
    def input_effect(self, module, out_shape, watch):
        """Perturb ``module``'s output; return {name: a} for the layers in ``watch`` whose input moves by exactly
        ``a * delta`` (same shape as ``module``'s output)."""
        self.run(watch=watch)
        base = self.inputs
        gen = torch.Generator().manual_seed(4321)
        delta = torch.randn(out_shape, generator=gen).to(self.probe_input)
        self.run((module, delta), watch=watch)
        found = {}
        for name, moved in self.inputs.items():
            if name not in base or moved.shape != delta.shape:
                continue
            diff, d = (moved - base[name]).double(), delta.double()
            a = float((diff * d).sum() / (d * d).sum())
            residual = float((diff - a * d).abs().max()) / max(float((a * d).abs().max()), 1e-12)
            if abs(a) > 1e-8 and residual < 1e-3:
                found[name] = _snap_scale(a)
        return found


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


class ScoreBranch(nn.Sequential):
    """Per-pixel logits of each extended head being the winner, from the features that feed the output layer
    (resilient multiple-choice learning, Letzelter et al., NeurIPS 2023).

    conv3x3 (C_in -> 32), GELU, conv1x1 (32 -> K'); the last conv starts at zero, so every head starts equally
    likely. Forward: (B, C_in, h, w) -> (B, K', h, w).
    """

    def __init__(self, in_channels, num_outputs, hidden=32):
        super().__init__(nn.Conv2d(in_channels, hidden, 3, padding=1), nn.GELU(), nn.Conv2d(hidden, num_outputs, 1))
        nn.init.zeros_(self[2].weight)
        nn.init.zeros_(self[2].bias)


def image_scores(scores):
    """Per-image logits from per-pixel ones: (B, K', H, W) -> (B, K') (the spatial mean)."""
    return scores.mean(dim=(2, 3))


def _probe_backbone(backbone, in_ch, probe_size):
    """Run ``backbone`` (in eval mode) once on a seeded random probe ``(1, in_ch, probe_size, probe_size)``.

    Returns:
        tuple: (:class:`_TailProbe`, its outputs (list of tensors), the Conv2d calls {name: [output shapes]}).
    """
    ref = next(iter(backbone.parameters()), None)
    gen = torch.Generator().manual_seed(0)
    probe_input = torch.rand(1, in_ch, probe_size, probe_size, generator=gen)
    if ref is not None:
        probe_input = probe_input.to(device=ref.device, dtype=ref.dtype)
    probe = _TailProbe(backbone, probe_input)
    try:
        base_outputs, calls = probe.run()
    except Exception as err:
        raise ValueError(f'MultiHeadArch: the backbone {type(backbone).__name__} failed on a probe input of shape '
                         f'{tuple(probe_input.shape)}: {err}. Fix: set `probe_size` (a size the backbone accepts) '
                         'or `probe_channels` under network_g.') from err
    return probe, base_outputs, calls


class NoIdentityStart(ValueError):
    """``head_init: identity`` is impossible: the backbone's output is not its input when the output layer is zero."""


@torch.no_grad()
def start_at_identity(probe, layers, backbone_type):
    """Scale the output layer(s) ``layers`` (plain Conv2d, before they are grown) so that the network starts at its
    input: with the layers at zero the final output must equal the probe input (a global residual, as NAFNet, HINet,
    Restormer and MPRNet have); then their weights are scaled so the output departs from the input by an RMS of
    :data:`IDENTITY_PERTURBATION` on the probe, and their biases are zeroed. The grown heads then draw distinct
    weights at that scale (:meth:`MultiHeadConv2d._init_from`), so no two heads tie in the min-head assignment.

    Raises:
        NoIdentityStart: the backbone's output with the layers at zero is not its input (``head_init: identity`` is
            impossible; the message names the fix); the layers are left as they were.
    """
    weights = [layer.weight.detach().clone() for layer in layers]
    biases = [None if layer.bias is None else layer.bias.detach().clone() for layer in layers]
    for layer in layers:
        layer.weight.zero_()
        if layer.bias is not None:
            layer.bias.zero_()
    at_zero, _ = probe.run()
    x = probe.probe_input
    final = at_zero[-1]
    misfit = float((final - x).abs().max()) if final.shape == x.shape else math.inf
    if not misfit <= 1e-4:
        for layer, weight, bias in zip(layers, weights, biases):  # leave the backbone's initialisation as it was
            layer.weight.copy_(weight)
            if bias is not None:
                layer.bias.copy_(bias)
        shape_note = '' if final.shape == x.shape else f' (output {tuple(final.shape)}, input {tuple(x.shape)})'
        raise NoIdentityStart(
            f'network_g.head_init: identity needs a backbone whose output is its input when the output '
            f'layer gives zero (a global residual); {backbone_type} is not{shape_note}, misfit '
            f'{misfit:.3g}. Fix: `head_init: backbone`.')
    for layer, weight in zip(layers, weights):
        layer.weight.copy_(weight)
    moved, _ = probe.run()
    rms = float((moved[-1] - final).double().pow(2).mean().sqrt())
    scale = IDENTITY_PERTURBATION / rms if rms > 0 else 0.0
    for layer, weight in zip(layers, weights):
        layer.weight.copy_(weight * scale)


def identity_backbone(backbone, backbone_opt=None, head_layers=None, probe_size=64, probe_channels=None):
    """``head_init: identity`` for a plain (single-head) backbone: its output layer(s), found by the same probe as
    for heads, start as :func:`start_at_identity` says. Returns ``backbone`` (changed in place)."""
    was_training = backbone.training
    backbone.eval()
    in_ch = probe_channels or _find_in_channels(backbone_opt, backbone)
    probe, base_outputs, calls = _probe_backbone(backbone, in_ch, probe_size)
    modules = dict(backbone.named_modules())
    backbone_type = type(backbone).__name__
    assigned = MultiHeadArch._choose_head_layers(backbone_type, head_layers, probe, base_outputs, calls, modules)
    start_at_identity(probe, [modules[name] for name, _, _ in assigned.values()], backbone_type)
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
        probe_size (int): spatial size of the build-time probe input (a multiple of the backbone's size factor).
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
                                  kwargs.get('probe_size', 64), kwargs.get('probe_channels'))
            return plain
        return super().__new__(cls)

    def __init__(self,
                 backbone=None,
                 num_heads=1,
                 combine=False,
                 head_layers=None,
                 probe_size=64,
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
        pair_i = torch.tensor([p[0] for p in self.head_pairs], dtype=torch.long)
        pair_j = torch.tensor([p[1] for p in self.head_pairs], dtype=torch.long)
        self.register_buffer('pair_i', pair_i, persistent=False)
        self.register_buffer('pair_j', pair_j, persistent=False)

        in_ch = probe_channels or _find_in_channels(backbone, self.backbone)
        self.feed_all_heads = bool(feed_all_heads)
        self.head_init = self._attach_heads(head_layers, in_ch, probe_size, self.head_init)
        self.head_scores, self.score_to_backbone = head_scores, score_to_backbone  # checked in __new__
        if self.head_scores:
            final = getattr(self.backbone, 'final_output_index', -1) % self.num_stage_outputs
            final_layer = self._grown[self.output_heads[final]]
            final_layer.keep_input = True
            self.score_branch = ScoreBranch(final_layer.in_channels, self.num_outputs)
        self._register_state_dict_hook(_strip_backbone_prefix)
        self._register_load_state_dict_pre_hook(_add_backbone_prefix)

    # ------------------------------------------------------------------ build
    def _attach_heads(self, head_layers, in_ch, probe_size, head_init):
        was_training = self.backbone.training
        self.backbone.eval()
        probe, base_outputs, calls = _probe_backbone(self.backbone, in_ch, probe_size)
        modules = dict(self.backbone.named_modules())
        assigned = self._choose_head_layers(self.backbone_type, head_layers, probe, base_outputs, calls, modules)
        head_inputs = self._find_head_inputs(probe, assigned, calls, modules) if self.feed_all_heads else {}
        head_init = self._start(probe, [modules[name] for name, _, _ in assigned.values()], head_init)
        self.head_layer_names = []
        self.output_heads = {}
        self.output_scales = {}
        for index, (name, scale, detach) in sorted(assigned.items()):
            conv = modules[name]
            grown = MultiHeadConv2d(conv, self.num_heads, detach_mean=detach)
            grown.layer_name = name
            _set_submodule(self.backbone, name, grown)
            self.head_layer_names.append(name)
            self.output_heads[index] = name
            self.output_scales[index] = scale
        self.num_stage_outputs = len(base_outputs)
        self._grown = {name: _get_submodule(self.backbone, name) for name in self.head_layer_names}
        self.head_input_layers = {}
        for name, (producer, scale) in head_inputs.items():
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

    def _start(self, probe, layers, head_init):
        """Initialise the output layer(s) before they are grown (every head is then drawn at their scale); returns
        the ``head_init`` used. The default (None) is ``identity`` where the backbone allows it (a global residual),
        else ``backbone``, logged."""
        if head_init == 'backbone':
            return head_init
        try:
            start_at_identity(probe, layers, self.backbone_type)
        except NoIdentityStart:
            if head_init == 'identity':
                raise
            get_root_logger().info(f'MultiHeadArch: {self.backbone_type} has no global residual; its heads start '
                                   'from the backbone\'s own initialisation (head_init: backbone).')
            return 'backbone'
        return 'identity'

    def _find_head_inputs(self, probe, assigned, calls, modules):
        """Return {conv name: (head layer, scale)} for the convs that read a non-final stage's image.

        Only head layers that move other outputs are examined; a candidate runs once per forward, has ``groups=1``,
        ``C_out`` input channels, and its input moves by ``a * delta`` when the head layer's output moves by delta.
        """
        heads = {name for name, _, _ in assigned.values()}
        found = {}
        for _, (name, _, detach) in sorted(assigned.items()):
            if detach:
                continue
            channels = modules[name].out_channels
            watch = [
                n for n, shapes in calls.items() if len(shapes) == 1 and n not in heads and n not in found
                and modules[n].groups == 1 and modules[n].in_channels == channels
            ]
            if watch:
                for consumer, scale in probe.input_effect(modules[name], calls[name][0], watch).items():
                    found[consumer] = (name, scale)
        return found

    @staticmethod
    def _choose_head_layers(backbone_type, head_layers, probe, base_outputs, calls, modules):
        """Return {output index: (layer name, tail scale a, detach_mean)} after checking additivity."""
        out_channels = {y.shape[1] for y in base_outputs}
        candidates = [
            name for name, shapes in calls.items() if len(shapes) == 1 and modules[name].out_channels in out_channels
        ]
        if head_layers is not None:
            names = [head_layers] if isinstance(head_layers, str) else list(head_layers)
            for name in names:
                if name not in modules or not isinstance(modules[name], nn.Conv2d):
                    close = close_names(name, calls)
                    raise ValueError(f'network_g.head_layers names "{name}", which is no Conv2d layer of '
                                     f'{backbone_type}. Conv2d layers with {sorted(out_channels)} output '
                                     f'channels: {candidates[-8:]}; close names: {close}.')
                if len(calls.get(name, [])) != 1:
                    raise ValueError(f'network_g.head_layers: layer "{name}" of {backbone_type} runs '
                                     f'{len(calls.get(name, []))} times per forward; a head layer must run exactly '
                                     'once. Fix: name the layer that produces the final image.')
            search = names
        else:
            search = list(reversed(candidates))
        assigned = {}
        for name in search:
            effects = probe.tail_effect(modules[name], calls[name][0], base_outputs)
            additive = [
                i for i, (a, res, _) in enumerate(effects)
                if a is not None and res < 1e-3 and abs(a) > 1e-8 and i not in assigned
            ]
            if not additive:
                if head_layers is not None:
                    raise ValueError(MultiHeadArch._not_additive_message(backbone_type, name, effects))
                continue
            index = additive[-1]
            moves_others = any(moved for i, (_, _, moved) in enumerate(effects) if i != index)
            assigned[index] = (name, _snap_scale(effects[index][0]), not moves_others)
            if head_layers is None and len(assigned) == len(base_outputs):
                break
        if not assigned:
            last = search[0] if search else None
            if last is None:
                raise ValueError(f'MultiHeadArch: {backbone_type} has no Conv2d layer with '
                                 f'{sorted(out_channels)} output channels that runs once per forward, so no output '
                                 'layer can be grown. Fix: name it in `head_layers`.')
            effects = probe.tail_effect(modules[last], calls[last][0], base_outputs)
            raise ValueError(MultiHeadArch._not_additive_message(backbone_type, last, effects))
        if head_layers is None and len(base_outputs) - 1 not in assigned:
            raise ValueError(f'MultiHeadArch: found no additive output layer for the final output of '
                             f'{backbone_type}. Fix: name it in `head_layers`.')
        return assigned

    @staticmethod
    def _not_additive_message(backbone_type, name, effects):
        worst = min((res for _, res, _ in effects), default=math.inf)
        return (f'MultiHeadArch: the tail of {backbone_type} after layer "{name}" is not additive (a change '
                f'of that layer\'s output moves the network output by something other than a scaled crop of it; '
                f'relative misfit {worst:.3g}), so its heads cannot be computed exactly. Supported tails: global '
                'residual, crop after padding, `x / img_range + mean`. Fix: name an additive output layer in '
                '`head_layers`, or remove the non-linear step after it (clamp, sigmoid, ...).')

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
            outputs, single = _outputs_as_list(self.backbone(x))
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
                cropped = _crop_to(delta, y.shape[-2], y.shape[-1])
                delta = cropped if cropped is delta else cropped.contiguous()
                scale = self.output_scales[index]
                delta = delta if scale == 1.0 else delta.mul_(scale)
                # under autocast y may be wider than the heads (an FP32 residual): then out of place, promoted
                result.append(delta.add_(y.unsqueeze(1)) if delta.dtype == y.dtype else y.unsqueeze(1) + delta)
                if self._grown[name].keep_input:
                    features = self._grown[name].pop_input()
                    if return_scores:
                        logits = self.score_branch(features if self.score_to_backbone else features.detach())
                        scores = _crop_to(logits, y.shape[-2], y.shape[-1])
        finally:  # a backbone that fails midway must not leave a stash behind (the next call would refuse)
            for layer in self._grown.values():
                layer._stash = None
                layer._input = None
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
    if arch_type not in ARCH_REGISTRY:
        close = close_names(arch_type, ARCH_REGISTRY.keys())
        raise ValueError(f'network_g backbone type "{arch_type}" is not in BasicSR\'s ARCH_REGISTRY. Close names: '
                         f'{close}. Fix: correct `type`, or import the module that registers it.')
    return ARCH_REGISTRY.get(arch_type)(**opt)


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
