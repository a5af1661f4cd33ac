"""`basicsr-mh export`: one head as a plain backbone checkpoint that the stock architecture loads strictly."""
import pytest
import torch

from basicsr_mh.tools.common import ToolError, build_net, parse_head
from basicsr_mh.tools.export import build_plain, plain_state_dict

NAFNET = dict(type='NAFNet', img_channel=3, width=8, middle_blk_num=1, enc_blk_nums=[1, 1], dec_blk_nums=[1, 1])
BACKBONES = {
    'NAFNet': NAFNET,
    'Restormer': dict(type='Restormer', dim=8, num_blocks=[1, 1, 1, 1], num_refinement_blocks=1, heads=[1, 1, 2, 2]),
    'EDSR-x2': dict(type='EDSR', num_in_ch=3, num_out_ch=3, num_feat=8, num_block=1, upscale=2, img_range=255.),
    'MSRResNet-x2': dict(type='MSRResNet', num_in_ch=3, num_out_ch=3, num_feat=8, num_block=1, upscale=2),
}
HINET = dict(type='HINet', wf=8, depth=3, hin_position_left=1, hin_position_right=2)


def _perturb(net, seed=1, std=0.05):
    """Make every head different (a fresh net's extra heads share biases)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(std * torch.randn(p.shape, generator=gen))
    return net


def _final(out, index=-1):
    return out[index] if isinstance(out, (list, tuple)) else out


def _assert_every_head_exports(net_opt, size=32, index_of_final=-1):
    net, long_opt = build_net({'network_g': net_opt})
    _perturb(net)
    x = torch.rand(2, 3, size, size + 5, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        heads = _final(net(x), index_of_final)
        for k in range(net.num_outputs):
            plain, _ = build_plain(long_opt)
            plain.load_state_dict(plain_state_dict(net, k), strict=True)
            torch.testing.assert_close(_final(plain(x), index_of_final), heads[:, k], rtol=0, atol=1e-5)


@pytest.mark.parametrize('combine', [True, False])
@pytest.mark.parametrize('name', list(BACKBONES))
def test_every_head_exports_exactly(name, combine):
    _assert_every_head_exports(dict(BACKBONES[name], num_heads=3, combine=combine))


def test_hinet_without_feed_all_heads_exports_exactly():
    _assert_every_head_exports(dict(HINET, num_heads=2, combine=True, feed_all_heads=False))


def test_hinet_feed_all_heads_refused_when_heads_differ_exact_when_equal():
    net, _ = build_net({'network_g': dict(HINET, num_heads=2, combine=True)})
    assert net.head_input_layers, 'HINet should have a conv that reads all stage-1 heads'
    # fresh: the stage-input conv starts as W / K for every head image, so the plain conv sum_k W_k is exact
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        heads = net(x)[-1]
        for k in range(net.num_outputs):
            plain, _ = build_plain({'type': 'MultiHeadArch', 'backbone': HINET})
            plain.load_state_dict(plain_state_dict(net, k), strict=True)
            torch.testing.assert_close(plain(x)[-1], heads[:, k], rtol=0, atol=1e-5)
    _perturb(net)
    with pytest.raises(ToolError, match='feed_all_heads'):
        plain_state_dict(net, 0)


def test_parse_head():
    net, _ = build_net({'network_g': dict(NAFNET, num_heads=3, combine=True)})
    ckpt = {'multihead': {'best_head': 5}}
    assert parse_head('best', net, ckpt) == 5
    assert parse_head('h4', net, ckpt) == parse_head('4', net, ckpt) == parse_head('2+1', net, ckpt) == 4
    assert parse_head('1+2', net, ckpt) == 4
    with pytest.raises(ToolError, match='does not exist'):
        parse_head('6', net, ckpt)
    with pytest.raises(ToolError, match='best_head'):
        parse_head('best', net, {})
    plain_heads, _ = build_net({'network_g': dict(NAFNET, num_heads=3, combine=False)})
    assert parse_head('2+2', plain_heads, ckpt) == 2
    with pytest.raises(ToolError, match='combine: false'):
        parse_head('2+1', plain_heads, ckpt)
