"""Declared head layouts (:class:`basicsr_mh.heads.HeadLayout`) of our backbones, the probe they replace, and the
wrapper's recovery from a backbone that fails midway."""
# isort: off
import basicsr_mh  # noqa: F401  (must come before basicsr)
# isort: on
import pytest
import torch
from basicsr.utils.registry import ARCH_REGISTRY
from torch import nn

from basicsr_mh.archs.multihead_arch import MultiHeadArch, head_layout
from basicsr_mh.archs.tail_probe import find_in_channels, find_layout
from basicsr_mh.heads import HeadLayout

#: small configurations of every backbone that declares its layout
DECLARED = {
    'NAFNet':
    dict(width=8, middle_blk_num=1, enc_blk_nums=[1, 1], dec_blk_nums=[1, 1]),
    'NAFNetLocal':
    dict(width=8, middle_blk_num=1, enc_blk_nums=[1, 1], dec_blk_nums=[1, 1]),
    'HINet':
    dict(wf=8, depth=3, hin_position_left=1, hin_position_right=2),
    'HINetLocal':
    dict(wf=8, depth=3, hin_position_left=1, hin_position_right=2),
    'Restormer':
    dict(dim=8, num_blocks=[1, 1, 1, 1], num_refinement_blocks=1, heads=[1, 1, 2, 2]),
    'Restormer dual-pixel':
    dict(
        dim=8,
        num_blocks=[1, 1, 1, 1],
        num_refinement_blocks=1,
        heads=[1, 1, 2, 2],
        inp_channels=6,
        out_channels=3,
        dual_pixel_task=True),
    'MPRNet':
    dict(n_feat=8, scale_unetfeats=8, scale_orsnetfeats=8, num_cab=1),
}


def _backbone(name, seed=0):
    torch.manual_seed(seed)
    return ARCH_REGISTRY.get(name.split()[0])(**DECLARED[name]).eval()


@pytest.mark.parametrize('name', sorted(DECLARED))
def test_declared_layout_equals_the_probe(name):
    """What a backbone declares is what the build-time probe finds (layers, tail scales, detach flags, the convs
    that read a stage image), so skipping the probe changes nothing."""
    backbone = _backbone(name)
    declared = backbone.multihead_layout()
    assert isinstance(declared, HeadLayout)
    found, _ = find_layout(backbone, find_in_channels(DECLARED[name], backbone))
    assert sorted(declared.outputs) == sorted(found.outputs)
    assert declared.num_network_outputs == found.num_network_outputs
    assert sorted(declared.head_inputs) == sorted(found.head_inputs)


@pytest.mark.parametrize('name', sorted(DECLARED))
def test_declared_residual_is_true(name):
    """``global_residual`` is declared only where the output is the input with the output layers at zero."""
    backbone = _backbone(name)
    layout = backbone.multihead_layout()
    in_ch = find_in_channels(DECLARED[name], backbone)
    x = torch.rand(1, in_ch, 16, 16)
    with torch.no_grad():
        for layer in layout.layer_names:
            conv = backbone.get_submodule(layer)
            conv.weight.zero_()
            if conv.bias is not None:
                conv.bias.zero_()
        out = backbone(x)
    final = (out if torch.is_tensor(out) else out[getattr(backbone, 'final_output_index', -1)])
    assert (final.shape == x.shape and torch.equal(final, x)) == layout.global_residual


def _count_forwards(module):
    calls = []
    handle = module.register_forward_hook(lambda *args: calls.append(1))
    return calls, handle


@pytest.mark.parametrize('head_init, forwards', [('identity', 1), ('backbone', 0)])
@pytest.mark.parametrize('name', ['NAFNet', 'HINet', 'MPRNet'])
def test_declared_build_runs_the_backbone_at_most_once(name, head_init, forwards):
    """No probe for our backbones: the build runs them once to measure an identity start, never otherwise (the MH-C
    MPRNet build went from 10+ probe forwards at 64x64 to one at 16x16)."""
    backbone = _backbone(name)
    calls, handle = _count_forwards(backbone)
    net = MultiHeadArch(backbone, num_heads=4, combine=True, head_init=head_init)
    handle.remove()
    assert len(calls) == forwards and net.head_init == head_init


@pytest.mark.parametrize('name', ['NAFNet', 'HINet'])
def test_declared_identity_start_equals_the_probed_one(name):
    """The identity start of a declared layout (no check forward) gives bit-identical weights to the probed path
    (which checks the residual with the output layers at zero): same init, same training numbers."""
    layers = _backbone(name).multihead_layout().layer_names
    nets = []
    for head_layers in (None, layers):  # naming the layers forces the probe
        nets.append(MultiHeadArch(_backbone(name, seed=3), num_heads=3, combine=True, head_layers=head_layers))
    declared, probed = (n.state_dict() for n in nets)
    assert list(declared) == list(probed)
    for key in declared:
        assert torch.equal(declared[key], probed[key]), key


def test_feed_all_heads_false_drops_the_declared_head_inputs():
    layout, _ = head_layout(_backbone('HINet'), DECLARED['HINet'], feed_all_heads=False)
    assert layout.head_inputs == () and len(layout.outputs) == 2


class _FailsOnOddWidth(nn.Module):
    """A two-stage toy: the head layer runs, then the second stage fails on an odd width (as a backbone with a size
    factor does)."""

    def __init__(self):
        super().__init__()
        self.body = nn.Conv2d(3, 8, 3, padding=1)
        self.out = nn.Conv2d(8, 3, 3, padding=1)

    def forward(self, x):
        y = self.out(self.body(x)) + x
        if x.shape[-1] % 2:
            raise RuntimeError('odd width')
        return y


def test_a_failed_pass_leaves_nothing_behind():
    """A backbone that raises after its head layer ran must not leave a stash: the next call (infer's retry with
    other paddings) works and equals a fresh network's output."""
    torch.manual_seed(0)
    net = MultiHeadArch(_FailsOnOddWidth(), num_heads=2, combine=True, head_layers='out').eval()
    with torch.no_grad(), pytest.raises(RuntimeError, match='odd width'):
        net(torch.rand(1, 3, 8, 9))
    x = torch.rand(1, 3, 8, 8)
    with torch.no_grad():
        heads = net(x)
    assert heads.shape == (1, 3, 3, 8, 8)
    assert all(layer._stash is None for layer in net._grown.values())
