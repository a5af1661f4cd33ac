"""``head_init: identity``: start a backbone's output layer(s) so that the network starts at its input.

Measured on the build probe (:class:`~basicsr_mh.archs.tail_probe.TailProbe`): the output layer(s) are scaled so that
the output departs from the input by an RMS of :data:`IDENTITY_PERTURBATION`, their biases zeroed; the grown heads then
draw distinct weights at that scale, so no two heads tie in the min-head assignment.
"""
import math
import torch

#: RMS of a head's departure from the input at an identity start, measured on the build probe.
IDENTITY_PERTURBATION = 1e-3


class NoIdentityStart(ValueError):
    """``head_init: identity`` is impossible: the backbone's output is not its input when the output layer is zero."""


@torch.no_grad()
def start_at_identity(probe, layers, backbone_type, global_residual=False):
    """Scale the output layer(s) ``layers`` (plain Conv2d, before they are grown) so that the network starts at its
    input: with the layers at zero the final output must equal the probe input (a global residual, as NAFNet, HINet,
    Restormer and MPRNet have); then their weights are scaled so the output departs from the input by an RMS of
    :data:`IDENTITY_PERTURBATION` on the probe, and their biases are zeroed. The grown heads then draw distinct
    weights at that scale (:meth:`MultiHeadConv2d._init_from`), so no two heads tie in the min-head assignment.

    Args:
        probe (TailProbe): runs the backbone on its probe image ``(1, C, s, s)``.
        layers (list[nn.Conv2d]): the output layer(s).
        backbone_type (str): for messages.
        global_residual (bool): the backbone declares that its output is its input when the layers give zero
            (:class:`~basicsr_mh.heads.HeadLayout`); the check (one forward) is skipped and the output at zero is
            the probe image itself.

    Raises:
        NoIdentityStart: the backbone's output with the layers at zero is not its input (``head_init: identity`` is
            impossible; the message names the fix); the layers are left as they were.
    """
    weights = [layer.weight.detach().clone() for layer in layers]
    x = probe.probe_input
    if global_residual:
        for layer in layers:
            if layer.bias is not None:
                layer.bias.zero_()
        _scale_departure(probe, layers, weights, x)
        return
    biases = [None if layer.bias is None else layer.bias.detach().clone() for layer in layers]
    for layer in layers:
        layer.weight.zero_()
        if layer.bias is not None:
            layer.bias.zero_()
    at_zero, _ = probe.run()
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
    _scale_departure(probe, layers, weights, final)


def _scale_departure(probe, layers, weights, at_zero):
    """Put ``weights`` back into ``layers`` scaled so that the final output departs from ``at_zero`` (the output
    with the layers at zero) by an RMS of :data:`IDENTITY_PERTURBATION` on the probe."""
    for layer, weight in zip(layers, weights):
        layer.weight.copy_(weight)
    moved, _ = probe.run()
    rms = float((moved[-1] - at_zero).double().pow(2).mean().sqrt())
    scale = IDENTITY_PERTURBATION / rms if rms > 0 else 0.0
    for layer, weight in zip(layers, weights):
        layer.weight.copy_(weight * scale)
