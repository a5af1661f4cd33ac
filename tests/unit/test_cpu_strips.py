"""The CPU strip path of the per-head metrics equals BasicSR's numpy PSNR / SSIM on tensor2img images."""
import math
import numpy as np
import pytest
import torch
from basicsr.metrics import calculate_psnr, calculate_ssim
from basicsr.utils import tensor2img

from basicsr_mh.data.example_pairs import photo_bgr
from basicsr_mh.metrics.cpu_strips import cpu_psnr_ssim


def _photo_batch(height, width, channels, heads, seed):
    """A real photo as gt (1, C, H, W) and K degraded heads: noise, shifts, values outside [0, 1], one exact copy."""
    rgb = photo_bgr('astronaut', (width, height))[..., ::-1].astype(np.float32) / 255.
    gt = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)[:channels].unsqueeze(0)
    gen = torch.Generator().manual_seed(seed)
    heads_list = [gt[0].clone()]
    for k in range(1, heads):
        h = torch.roll(gt[0], shifts=k, dims=-1) + 0.03 * k * torch.randn(gt[0].shape, generator=gen)
        heads_list.append(h * 1.1 - 0.05)
    return torch.stack(heads_list).unsqueeze(0), gt


@pytest.mark.parametrize('height, width, channels', [(37, 45, 3), (130, 97, 3), (64, 50, 1), (150, 140, 3)])
@pytest.mark.parametrize('crop_border, test_y', [(0, False), (4, True), (3, False), (0, True)])
def test_equals_basicsr(height, width, channels, crop_border, test_y):
    pred, gt = _photo_batch(height, width, channels, heads=4, seed=height)
    got = cpu_psnr_ssim(pred, gt, crop_border, test_y)
    assert got['psnr'].shape == (1, 4) and got['psnr'].dtype == torch.float64
    g = tensor2img(gt[0])
    for k in range(4):
        p = tensor2img(pred[0, k])
        ref_psnr = calculate_psnr(p, g, crop_border, test_y_channel=test_y)
        ref_ssim = calculate_ssim(p, g, crop_border, test_y_channel=test_y)
        if math.isinf(ref_psnr):
            assert math.isinf(float(got['psnr'][0, k]))
        else:
            assert float(got['psnr'][0, k]) == pytest.approx(ref_psnr, abs=1e-3)
        assert float(got['ssim'][0, k]) == pytest.approx(ref_ssim, abs=1e-4)


def test_thread_count_does_not_change_values():
    pred, gt = _photo_batch(200, 150, 3, heads=3, seed=1)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = cpu_psnr_ssim(pred, gt)
        torch.set_num_threads(2)
        two = cpu_psnr_ssim(pred, gt)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one['psnr'], two['psnr']) and torch.equal(one['ssim'], two['ssim'])
