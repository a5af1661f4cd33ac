"""`basicsr-mh infer`: odd sizes, grayscale, corrupt files, all heads, selection rules, tiling."""
import cv2
import hashlib
import numpy as np
import os
import pytest
import torch
from conftest import write_options
from torch import nn

import basicsr_mh_cli as cli
from basicsr_mh.inference import InferenceRunner
from basicsr_mh.tools.common import build_net
from basicsr_mh.tools.selection import select, sharpness_scores

NAFNET = dict(type='NAFNet', img_channel=3, width=8, middle_blk_num=1, enc_blk_nums=[1, 1], dec_blk_nums=[1, 1])
K, K_EXT = 3, 6


def _save_model(folder, net_opt, best_head=4):
    """A MultiHeadArch with distinct heads saved in BasicSR layout, and its option file; returns the option path."""
    net, _ = build_net({'network_g': net_opt})
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=gen))
    ckpt = os.path.join(folder, 'net_g.pth')
    torch.save(
        {
            'params': net.state_dict(),
            'multihead': {
                'num_heads': net.num_heads,
                'combine': net.combine,
                'best_head': best_head
            }
        }, ckpt)
    return write_options(
        os.path.join(folder, 'test.yml'), {
            'name': 'infer',
            'network_g': net_opt,
            'path': {
                'pretrain_network_g': ckpt
            }
        })


@pytest.fixture(scope='module')
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp('infer')
    opt = _save_model(str(root), dict(NAFNET, num_heads=K, combine=True))
    inp = root / 'in'
    inp.mkdir()
    rng = np.random.default_rng(0)
    cv2.imwrite(str(inp / 'odd.png'), (rng.random((37, 45, 3)) * 255).astype(np.uint8))
    cv2.imwrite(str(inp / 'wide.jpg'), (rng.random((64, 50, 3)) * 255).astype(np.uint8))
    cv2.imwrite(str(inp / 'gray.png'), (rng.random((40, 30)) * 255).astype(np.uint8))
    (inp / 'corrupt.png').write_bytes(b'\x89PNG\r\n\x1a\n truncated')
    (inp / 'notes.txt').write_text('not an image')
    return root, opt, inp


def _digests(folder):
    return {n: hashlib.sha256((folder / n).read_bytes()).hexdigest() for n in os.listdir(folder)}


def test_best_head_sizes_gray_and_skipped(setup, tmp_path, capsys):
    _, opt, inp = setup
    before = _digests(inp)
    out = tmp_path / 'out'
    assert cli.main(['infer', '--opt', opt, '--input', str(inp), '--output', str(out), '--quiet']) == 0
    printed = capsys.readouterr().out
    assert 'corrupt.png' in printed and 'notes.txt' in printed and 'h4 (2+1)' in printed
    assert sorted(os.listdir(out)) == ['gray.png', 'odd.png', 'wide.png']
    assert cv2.imread(str(out / 'odd.png'), cv2.IMREAD_UNCHANGED).shape == (37, 45, 3)
    assert cv2.imread(str(out / 'wide.png'), cv2.IMREAD_UNCHANGED).shape == (64, 50, 3)
    assert cv2.imread(str(out / 'gray.png'), cv2.IMREAD_UNCHANGED).shape == (40, 30)
    assert _digests(inp) == before


def test_all_heads_and_refusals(setup, tmp_path, capsys):
    _, opt, inp = setup
    out = tmp_path / 'all'
    assert cli.main(['infer', '--opt', opt, '--input',
                     str(inp), '--output',
                     str(out), '--heads', 'all', '--quiet']) == 0
    names = os.listdir(out)
    assert len(names) == 3 * K_EXT
    assert {f'odd_h{k}.png' for k in range(K_EXT)} <= set(names)
    assert cli.main(['infer', '--opt', opt, '--input', str(inp), '--output', str(inp)]) == 1
    assert 'input folder' in capsys.readouterr().err
    assert cli.main(['infer', '--opt', opt, '--input', str(inp / 'odd.png'), '--output', str(inp)]) == 1
    assert cli.main(
        ['infer', '--opt', opt, '--input',
         str(inp / 'corrupt.png'), '--output',
         str(tmp_path / 'n'), '--quiet']) == 1  # nothing readable
    assert cli.main([
        'infer', '--opt', opt, '--input',
        str(inp), '--output',
        str(tmp_path / 'x'), '--heads', '2', '--select', 'mean'
    ]) == 1


@pytest.mark.parametrize('rule', ['consensus', 'mean', 'sharpness'])
def test_select_cli_writes_choices(setup, tmp_path, rule):
    _, opt, inp = setup
    out = tmp_path / rule
    assert cli.main(
        ['infer', '--opt', opt, '--input',
         str(inp / 'odd.png'), '--output',
         str(out), '--select', rule, '--quiet']) == 0
    assert cv2.imread(str(out / 'odd.png')).shape == (37, 45, 3)
    lines = (out / 'selection.csv').read_text().splitlines()
    assert lines[0] == 'image,rule,head' and lines[1].startswith(f'odd.png,{rule},')


def test_one_channel_network(tmp_path):
    opt = _save_model(str(tmp_path), dict(NAFNET, img_channel=1, num_heads=2, combine=False), best_head=1)
    inp = tmp_path / 'in'
    inp.mkdir()
    rng = np.random.default_rng(1)
    cv2.imwrite(str(inp / 'color.png'), (rng.random((33, 21, 3)) * 255).astype(np.uint8))
    cv2.imwrite(str(inp / 'gray.png'), (rng.random((19, 26)) * 255).astype(np.uint8))
    out = tmp_path / 'out'
    assert cli.main(['infer', '--opt', opt, '--input', str(inp), '--output', str(out), '--quiet']) == 0
    assert cv2.imread(str(out / 'color.png'), cv2.IMREAD_UNCHANGED).shape == (33, 21, 3)
    assert cv2.imread(str(out / 'gray.png'), cv2.IMREAD_UNCHANGED).shape == (19, 26)


def test_selection_rules_on_constructed_heads():
    gen = torch.Generator().manual_seed(0)
    base = torch.rand(3, 24, 24, generator=gen)
    heads = torch.stack([base + 0.01 * torch.randn(base.shape, generator=gen) for _ in range(4)])
    heads[2] = 1 - base  # the outlier
    index, image = select(heads, 'consensus')
    assert index != 2
    index, image = select(heads, 'mean')
    assert index == -1 and torch.allclose(image, heads.mean(dim=0))
    blurred = torch.nn.functional.avg_pool2d(base.unsqueeze(0), 5, 1, 2)[0]
    sharp_vs_blur = torch.stack([blurred, base, blurred * 0.9 + base * 0.1])
    assert select(sharp_vs_blur, 'sharpness')[0] == 1
    assert sharpness_scores(sharp_vs_blur).argmax() == 1


class _NeedsMultipleOf8(nn.Module):
    """A per-pixel network that, like a windowed transformer, fails on sizes that are not multiples of 8."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1)

    def forward(self, x):
        if x.shape[-1] % 8 or x.shape[-2] % 8:
            raise RuntimeError('shape mismatch: input must be a multiple of 8')
        return self.conv(x) + x


def test_tiling_equals_whole_image_for_per_pixel_network_and_padding_found():
    torch.manual_seed(0)
    net = _NeedsMultipleOf8().eval()
    x = torch.rand(1, 3, 37, 45)
    whole_runner = InferenceRunner.for_images(net, tile=0)
    whole = whole_runner(x)
    assert whole.shape == (1, 1, 3, 37, 45) and whole_runner.pad_multiple == 8
    tiled = InferenceRunner.for_images(net, tile=20, overlap=4)(x)
    torch.testing.assert_close(tiled, whole, rtol=0, atol=1e-6)


def test_tiling_close_for_nafnet_with_overlap():
    net, _ = build_net({'network_g': dict(NAFNET, num_heads=2, combine=True)})
    x = torch.rand(1, 3, 70, 90, generator=torch.Generator().manual_seed(0))
    whole = InferenceRunner.for_images(net, tile=0)(x)
    tiled = InferenceRunner.for_images(net, tile=48, overlap=16)(x)
    assert tiled.shape == whole.shape == (1, 3, 3, 70, 90)
    assert float((tiled - whole).abs().mean()) < 0.02
