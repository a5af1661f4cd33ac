"""Find a backbone's output layer(s) by probing it, for backbones that do not declare a :class:`HeadLayout`.

A seeded random probe image runs through the backbone with forward hooks on every Conv2d (:class:`TailProbe`);
:func:`find_layout` perturbs candidate layers (from the last one back) and keeps, per network output, the last conv
run once whose effect on that output is exactly a scaled crop of the perturbation (an additive tail: global residual,
crop after padding, ``x / img_range + mean``), and, for multi-stage backbones, the convs that read a non-final stage's
image (HINet/MPRNet ``sam*.conv3``). Our own backbones declare the same layout (``multihead_layout()``), so this
runs only for BasicSR's backbones (EDSR, MSRResNet, SwinIR, ...) and users' own.
"""
import inspect
import math
import torch
from collections import OrderedDict
from torch import nn

from ..heads import HeadLayout, close_names
from .multihead_layers import crop_to, outputs_as_list

_IN_CHANNEL_KEYS = ('img_channel', 'inp_channels', 'in_channels', 'num_in_ch', 'in_chans', 'in_nc', 'in_c', 'in_chn')


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


def find_in_channels(backbone_opt, backbone):
    """The backbone's input channels: declared (:func:`declared_in_channels`), else its first Conv2d's."""
    channels, _ = declared_in_channels(backbone_opt, backbone)
    if channels is not None:
        return channels
    for module in backbone.modules():
        if isinstance(module, nn.Conv2d):
            return module.in_channels
    raise ValueError('MultiHeadArch: cannot tell the backbone\'s input channels. Fix: set `probe_channels` under '
                     'network_g.')


def _snap_scale(a):
    """Round a measured tail scale to 1/n or n when it is within float error of one (img_range 1 or 255)."""
    for cand in (round(a), 1.0 / round(1.0 / a) if abs(a) > 1e-12 and round(1.0 / a) != 0 else None):
        if cand and abs(a - cand) <= 1e-4 * abs(cand):
            return float(cand)
    return float(a)


class TailProbe:
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
        return outputs_as_list(out)[0], calls

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
            d = crop_to(delta, diff.shape[-2], diff.shape[-1]).double()
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


def make_probe(backbone, in_ch, probe_size):
    """A :class:`TailProbe` of ``backbone`` on a seeded random image ``(1, in_ch, probe_size, probe_size)`` (on the
    backbone's device and dtype); nothing runs yet."""
    ref = next(iter(backbone.parameters()), None)
    gen = torch.Generator().manual_seed(0)
    probe_input = torch.rand(1, in_ch, probe_size, probe_size, generator=gen)
    if ref is not None:
        probe_input = probe_input.to(device=ref.device, dtype=ref.dtype)
    return TailProbe(backbone, probe_input)


def probe_backbone(backbone, in_ch, probe_size):
    """Run ``backbone`` (in eval mode) once on the probe of :func:`make_probe`.

    Returns:
        tuple: (:class:`TailProbe`, its outputs (list of tensors), the Conv2d calls {name: [output shapes]}).
    """
    probe = make_probe(backbone, in_ch, probe_size)
    probe_input = probe.probe_input
    try:
        base_outputs, calls = probe.run()
    except Exception as err:
        raise ValueError(f'MultiHeadArch: the backbone {type(backbone).__name__} failed on a probe input of shape '
                         f'{tuple(probe_input.shape)}: {err}. Fix: set `probe_size` (a size the backbone accepts) '
                         'or `probe_channels` under network_g.') from err
    return probe, base_outputs, calls


def find_layout(backbone, in_channels, probe_size=64, head_layers=None, feed_all_heads=True):
    """Probe ``backbone`` (left in eval mode) for its :class:`HeadLayout`.

    Args:
        backbone (nn.Module): the plain backbone.
        in_channels (int): input channels of the probe image ``(1, in_channels, probe_size, probe_size)``.
        probe_size (int): its spatial size (a size the backbone accepts).
        head_layers (list[str] | str | None): the output layer(s) named by the user; found when None.
        feed_all_heads (bool): also find the convs that read a non-final stage's image.

    Returns:
        tuple: ``(HeadLayout, TailProbe)``; the probe can run the backbone again (:func:`start_at_identity`).

    Raises:
        ValueError: naming the layer and the fix, when no additive output layer is found or a named one is not.
    """
    backbone_type = type(backbone).__name__
    probe, base_outputs, calls = probe_backbone(backbone, in_channels, probe_size)
    modules = dict(backbone.named_modules())
    assigned = _choose_head_layers(backbone_type, head_layers, probe, base_outputs, calls, modules)
    head_inputs = _find_head_inputs(probe, assigned, calls, modules) if feed_all_heads else {}
    layout = HeadLayout(
        outputs=tuple((index, name, scale, detach) for index, (name, scale, detach) in sorted(assigned.items())),
        num_network_outputs=len(base_outputs),
        head_inputs=tuple((consumer, producer, scale) for consumer, (producer, scale) in head_inputs.items()),
        global_residual=False,  # not probed here: start_at_identity checks it
        probe_size=probe_size)
    return layout, probe


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
                raise ValueError(_not_additive_message(backbone_type, name, effects))
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
        raise ValueError(_not_additive_message(backbone_type, last, effects))
    if head_layers is None and len(base_outputs) - 1 not in assigned:
        raise ValueError(f'MultiHeadArch: found no additive output layer for the final output of '
                         f'{backbone_type}. Fix: name it in `head_layers`.')
    return assigned


def _find_head_inputs(probe, assigned, calls, modules):
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


def _not_additive_message(backbone_type, name, effects):
    worst = min((res for _, res, _ in effects), default=math.inf)
    return (f'MultiHeadArch: the tail of {backbone_type} after layer "{name}" is not additive (a change '
            f'of that layer\'s output moves the network output by something other than a scaled crop of it; '
            f'relative misfit {worst:.3g}), so its heads cannot be computed exactly. Supported tails: global '
            'residual, crop after padding, `x / img_range + mean`. Fix: name an additive output layer in '
            '`head_layers`, or remove the non-linear step after it (clamp, sigmoid, ...).')
