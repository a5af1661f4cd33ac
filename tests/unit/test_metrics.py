"""basicsr_mh.metrics.per_head against BasicSR's own numpy metrics on tensor2img images.

Ground truths are crops (odd sizes) of scikit-image photos; every head is a different degradation (noise, blur,
shift, brightness, out-of-range values, an exact copy), so a mix-up between heads or batch items would show.
"""
import importlib
import warnings

# isort: off
import basicsr_mh  # noqa: F401  (must precede basicsr imports: installs the torchvision alias)
# isort: on
import cv2
import numpy as np
import pytest
import torch
from basicsr.metrics import calculate_metric
from basicsr.utils import tensor2img
from basicsr.utils.registry import METRIC_REGISTRY
from skimage import data

from basicsr_mh.metrics import (metric_per_head_fallback, per_head, per_head_many, psnr_per_head, psnr_ssim_per_head,
                                quantize_like_tensor2img, ssim_per_head, to_y_channel)
from basicsr_mh.metrics.cpu_strips import cpu_psnr_ssim
from basicsr_mh.metrics.torch_path import torch_psnr_ssim

PH = importlib.import_module('basicsr_mh.metrics.per_head')  # the module (the package attribute is the function)
PSNR_TOL = 1e-3  # dB
SSIM_TOL = 1e-4


def _crop(name, top, left, h, w):
    img = getattr(data, name)()
    return np.ascontiguousarray(img[top:top + h, left:left + w])


def _to_tensor(img_u8):
    """uint8 HWC RGB (or HW gray) -> float32 CHW in [0, 1]."""
    if img_u8.ndim == 2:
        img_u8 = img_u8[..., None]
    return torch.from_numpy(img_u8.astype(np.float32) / 255.).permute(2, 0, 1).contiguous()


def _heads(img_u8, num_heads, seed):
    """(K, C, H, W) float32 heads: degraded copies of the image, all different."""
    rng = np.random.default_rng(seed)
    gt = _to_tensor(img_u8)
    heads = []
    for k in range(num_heads):
        kind = k % 6
        if kind == 0:  # exact copy (PSNR inf, SSIM 1)
            x = gt.clone()
        elif kind == 1:  # gaussian noise, outside [0, 1] in places
            x = gt + torch.from_numpy(rng.normal(0, 0.02 + 0.01 * k, gt.shape).astype(np.float32))
        elif kind == 2:  # blur
            x = _to_tensor(cv2.GaussianBlur(img_u8, (0, 0), 0.7 + 0.2 * k))
        elif kind == 3:  # shift
            x = torch.roll(gt, shifts=(1 + k // 6, -2), dims=(1, 2))
        elif kind == 4:  # brightness / contrast, clipped values outside [0, 1]
            x = gt * 1.3 - 0.1
        else:  # tiny perturbation (mostly rounds to the same uint8) + a constant offset
            x = gt + 0.4 / 255 + torch.from_numpy(rng.uniform(-1e-3, 1e-3, gt.shape).astype(np.float32))
        heads.append(x)
    return torch.stack(heads)


def _batch(images, num_heads=6, seed=0):
    """pred (B, K, C, H, W), gt (B, C, H, W) from a list of same-size uint8 images."""
    preds = [_heads(img, num_heads, seed + i) for i, img in enumerate(images)]
    return torch.stack(preds), torch.stack([_to_tensor(img) for img in images])


def _reference(pred, gt, opt):
    """BasicSR's value for every (b, k), computed the way BasicSR's models do."""
    out = np.empty(pred.shape[:2])
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', RuntimeWarning)  # mean of an empty SSIM map
        for b in range(pred.shape[0]):
            img2 = tensor2img(gt[b])
            for k in range(pred.shape[1]):
                out[b, k] = calculate_metric(dict(img=tensor2img(pred[b, k]), img2=img2), opt)
    return torch.from_numpy(out)


def _assert_close(ours, ref, tol):
    assert ours.shape == ref.shape
    assert ours.dtype == torch.float64
    same_inf = torch.isinf(ours) & torch.isinf(ref) & (torch.sign(ours) == torch.sign(ref))
    both_nan = torch.isnan(ours) & torch.isnan(ref)
    diff = torch.where(same_inf | both_nan, torch.zeros_like(ours), (ours - ref).abs())
    assert not torch.isnan(diff).any(), (ours, ref)
    assert diff.max().item() <= tol, f'max error {diff.max().item():.3g} > {tol}\nours {ours}\nref {ref}'


@pytest.fixture(scope='module')
def rgb_batch():
    # Two different photos, same odd size (B = 2).
    return _batch([_crop('astronaut', 30, 200, 97, 131), _crop('coffee', 100, 250, 97, 131)], num_heads=6)


@pytest.fixture(scope='module')
def rocket_batch():
    return _batch([_crop('rocket', 101, 303, 64, 75)], num_heads=5, seed=7)


@pytest.fixture(scope='module')
def gray_batch():
    return _batch([_crop('camera', 150, 180, 83, 71)], num_heads=6, seed=3)


@pytest.mark.parametrize('crop_border,test_y', [(0, False), (0, True), (4, False), (3, True)])
@pytest.mark.parametrize('metric', ['calculate_psnr', 'calculate_ssim'])
def test_rgb_matches_basicsr(rgb_batch, metric, crop_border, test_y):
    pred, gt = rgb_batch
    opt = {'type': metric, 'crop_border': crop_border, 'test_y_channel': test_y, 'better': 'higher'}
    ours = per_head(pred, gt, opt)
    _assert_close(ours, _reference(pred, gt, opt), PSNR_TOL if metric == 'calculate_psnr' else SSIM_TOL)
    # the values really differ per head and per image
    assert len({round(v, 6) for v in ours.flatten().tolist()}) > pred.shape[0] * pred.shape[1] // 2


@pytest.mark.parametrize('test_y', [False, True])
def test_other_photo_and_sizes(rocket_batch, test_y):
    pred, gt = rocket_batch
    for metric, tol in (('calculate_psnr', PSNR_TOL), ('calculate_ssim', SSIM_TOL)):
        opt = {'type': metric, 'crop_border': 2, 'test_y_channel': test_y}
        _assert_close(per_head(pred, gt, opt), _reference(pred, gt, opt), tol)


@pytest.mark.parametrize('crop_border,test_y', [(0, False), (0, True), (5, False)])
def test_grayscale(gray_batch, crop_border, test_y):
    pred, gt = gray_batch
    assert pred.shape[2] == 1
    for metric, tol in (('calculate_psnr', PSNR_TOL), ('calculate_ssim', SSIM_TOL)):
        opt = {'type': metric, 'crop_border': crop_border, 'test_y_channel': test_y}
        _assert_close(per_head(pred, gt, opt), _reference(pred, gt, opt), tol)


def test_identical_heads_give_inf_psnr_and_unit_ssim(rgb_batch):
    _, gt = rgb_batch
    pred = gt[:, None].repeat(1, 3, 1, 1, 1)
    pred[:, 1] += 0.3 / 255  # rounds back to the same uint8 values
    psnr = per_head(pred, gt, {'type': 'calculate_psnr', 'crop_border': 0})
    assert torch.isinf(psnr).all() and (psnr > 0).all()
    ssim = per_head(pred, gt, {'type': 'calculate_ssim', 'crop_border': 0})
    assert torch.allclose(ssim, torch.ones_like(ssim), atol=1e-6)
    ref = _reference(pred, gt, {'type': 'calculate_psnr', 'crop_border': 0})
    assert torch.isinf(ref).all()


def test_values_outside_unit_range_are_clamped(rgb_batch):
    pred, gt = rgb_batch
    wild = pred * 3.0 - 1.0  # most values far outside [0, 1]
    for metric, tol in (('calculate_psnr', PSNR_TOL), ('calculate_ssim', SSIM_TOL)):
        opt = {'type': metric, 'crop_border': 1, 'test_y_channel': False}
        _assert_close(per_head(wild, gt, opt), _reference(wild, gt, opt), tol)


def test_flat_images_with_constant_offsets():
    """Worst case for float32 cancellation: flat / smooth regions and heads offset by constants."""
    h, w = 40, 53
    ramp = np.linspace(0, 255, w, dtype=np.float32)[None, :, None].repeat(h, 0).repeat(3, 2)
    flat = np.full((h, w, 3), 250, np.uint8)
    gts = [flat, np.round(ramp).astype(np.uint8)]
    gt = torch.stack([_to_tensor(img) for img in gts])
    offsets = torch.tensor([0., 1., 30., 64., 127., -200.]) / 255
    pred = (gt[:, None] + offsets.view(1, -1, 1, 1, 1)).contiguous()
    for test_y in (False, True):
        for metric, tol in (('calculate_psnr', PSNR_TOL), ('calculate_ssim', SSIM_TOL)):
            opt = {'type': metric, 'crop_border': 0, 'test_y_channel': test_y}
            _assert_close(per_head(pred, gt, opt), _reference(pred, gt, opt), tol)


def test_output_shape_dtype_and_4d_input(rgb_batch):
    pred, gt = rgb_batch
    for metric in ('calculate_psnr', 'calculate_ssim'):
        out = per_head(pred, gt, {'type': metric, 'crop_border': 0})
        assert out.shape == pred.shape[:2] and out.dtype == torch.float64 and out.device.type == 'cpu'
        single = per_head(pred[:, 2], gt, {'type': metric, 'crop_border': 0})  # (B, C, H, W): K = 1
        assert single.shape == (pred.shape[0], 1)
        assert torch.allclose(single[:, 0], out[:, 2], atol=1e-12, equal_nan=True)


def test_input_dtypes_follow_tensor2img(rocket_batch):
    pred, gt = rocket_batch
    for dtype in (torch.float64, torch.float16):
        p, g = pred.to(dtype), gt.to(dtype)
        for metric, tol in (('calculate_psnr', PSNR_TOL), ('calculate_ssim', SSIM_TOL)):
            opt = {'type': metric, 'crop_border': 0}
            _assert_close(per_head(p, g, opt), _reference(p, g, opt), tol)


def test_nan_inputs_become_zero():
    _, gt = _batch([_crop('chelsea', 50, 60, 31, 29)], num_heads=2)
    pred = gt[:, None].repeat(1, 2, 1, 1, 1)
    pred[0, 1, :, 3:9, 4:12] = float('nan')
    q = quantize_like_tensor2img(pred)
    assert not torch.isnan(q).any() and (q[0, 1, :, 3:9, 4:12] == 0).all()
    if tensor2img(pred[0, 1])[5, 5, 0] != 0:  # numpy's NaN -> uint8 cast is platform dependent
        pytest.skip('tensor2img does not map NaN to 0 on this platform')
    for metric, tol in (('calculate_psnr', PSNR_TOL), ('calculate_ssim', SSIM_TOL)):
        opt = {'type': metric, 'crop_border': 0}
        _assert_close(per_head(pred, gt, opt), _reference(pred, gt, opt), tol)
        # the next call (no NaN) is not affected
        clean = gt[:, None].repeat(1, 2, 1, 1, 1) * 0.9
        _assert_close(per_head(clean, gt, opt), _reference(clean, gt, opt), tol)


def test_quantize_and_y_channel_match_basicsr(rgb_batch):
    from basicsr.metrics.metric_util import to_y_channel as bsr_to_y

    pred, _ = rgb_batch
    q = quantize_like_tensor2img(pred)
    assert q.dtype == torch.float32 and q.shape == pred.shape
    for b, k in ((0, 1), (1, 4)):
        img = tensor2img(pred[b, k])  # BGR uint8
        assert np.array_equal(q[b, k].permute(1, 2, 0).numpy()[..., ::-1], img)
        y = to_y_channel(q[b, k][None])[0, 0].numpy()
        assert np.abs(y - bsr_to_y(img)[..., 0]).max() <= 2e-5


def test_image_smaller_than_window_gives_nan_like_basicsr(rgb_batch):
    pred, gt = rgb_batch
    opt = {'type': 'calculate_ssim', 'crop_border': 44}  # 97 - 88 = 9 rows < 11
    ours = per_head(pred, gt, opt)
    assert torch.isnan(ours).all() and torch.isnan(_reference(pred, gt, opt)).all()
    psnr_opt = {'type': 'calculate_psnr', 'crop_border': 44}
    _assert_close(per_head(pred, gt, psnr_opt), _reference(pred, gt, psnr_opt), PSNR_TOL)


def test_joint_psnr_ssim_and_per_head_many(rgb_batch):
    pred, gt = rgb_batch
    psnr, ssim = psnr_ssim_per_head(pred, gt, crop_border=3, test_y_channel=True)
    assert torch.equal(psnr, psnr_per_head(pred, gt, crop_border=3, test_y_channel=True))
    assert torch.equal(ssim, ssim_per_head(pred, gt, crop_border=3, test_y_channel=True))
    opts = {
        'psnr': {
            'type': 'calculate_psnr',
            'crop_border': 3,
            'test_y_channel': True,
            'better': 'higher'
        },
        'ssim': {
            'type': 'calculate_ssim',
            'crop_border': 3,
            'test_y_channel': True
        },
        'psnr_rgb': {
            'type': 'calculate_psnr',
            'crop_border': 0
        },
    }
    many = per_head_many(pred, gt, opts)
    assert list(many) == list(opts)
    assert torch.equal(many['psnr'], psnr) and torch.equal(many['ssim'], ssim)  # one path on the CPU: same numbers
    _assert_close(many['psnr_rgb'], _reference(pred, gt, opts['psnr_rgb']), PSNR_TOL)


def test_fallback_for_other_metrics(rocket_batch):
    pred, gt = rocket_batch
    name = 'calculate_mh_test_mean_abs_diff'
    if name not in METRIC_REGISTRY:

        def calculate_mh_test_mean_abs_diff(img, img2, crop_border=0, **kwargs):
            sl = slice(crop_border, -crop_border) if crop_border else slice(None)
            return float(np.abs(img[sl, sl].astype(np.float64) - img2[sl, sl].astype(np.float64)).mean())

        calculate_mh_test_mean_abs_diff.__name__ = name
        METRIC_REGISTRY.register(calculate_mh_test_mean_abs_diff)
    opt = {'type': name, 'crop_border': 1, 'better': 'lower'}
    ours = per_head(pred, gt, opt)
    _assert_close(ours, _reference(pred, gt, opt), 1e-12)
    assert ours[0, 0] == 0 and (ours[0, 1:] > 0).all()
    # the fallback gives exactly BasicSR's numbers for the built-in metrics too
    for metric, tol in (('calculate_psnr', PSNR_TOL), ('calculate_ssim', SSIM_TOL)):
        opt = {'type': metric, 'crop_border': 2, 'test_y_channel': True}
        slow = metric_per_head_fallback(pred, gt, opt)
        _assert_close(slow, _reference(pred, gt, opt), 1e-12)
        _assert_close(per_head(pred, gt, opt), slow, tol)


def _nan_maps_to_zero():
    """Whether tensor2img's uint8 cast maps NaN to 0 here (numpy's NaN -> uint8 cast is platform dependent)."""
    return tensor2img(torch.full((3, 2, 2), float('nan')))[0, 0, 0] == 0


def _edge_case(case):
    """(pred, gt, crop_border) of one edge case that BasicSR's numpy metrics handle (see test_edge_cases)."""
    pred, gt = _batch([_crop('chelsea', 40, 70, 37, 29)], num_heads=3, seed=5)
    crop = 0
    if case == 'nan_pred':
        pred[0, 1, :, 3:9, 4:12] = float('nan')
    elif case == 'nan_gt':
        gt = gt.clone()
        gt[0, 0, 10:14, 2:5] = float('nan')
    elif case == 'nan_in_cropped_border':  # NaN only where the crop removes it: no remapping needed
        pred[0, 2, :, :2, :] = float('nan')
        crop = 2
    elif case == 'inf':
        pred[0, 0, 1, 5:9, 5:9] = float('inf')
        pred[0, 2, 0, 20:, 10:] = -float('inf')
    elif case == 'tiny_9x12':  # smaller than the 11x11 window: SSIM NaN, PSNR a number
        pred, gt = pred[..., :9, :12].contiguous(), gt[..., :9, :12].contiguous()
    elif case == 'window_11x11':  # one SSIM window
        pred, gt = pred[..., 3:14, 2:13].contiguous(), gt[..., 3:14, 2:13].contiguous()
    elif case in ('float64', 'bfloat16'):
        pred, gt = pred.to(getattr(torch, case)), gt.to(getattr(torch, case))
    elif case == 'strided_views':  # non-contiguous inputs
        pred, gt = pred.transpose(-1, -2)[..., ::2], gt.transpose(-1, -2)[..., ::2]
    elif case == 'gray_y':
        pred, gt = pred[:, :, 1:2], gt[:, 1:2]
    return pred, gt, crop


EDGE_CASES = ('nan_pred', 'nan_gt', 'nan_in_cropped_border', 'inf', 'tiny_9x12', 'window_11x11', 'float64', 'bfloat16',
              'strided_views', 'gray_y')


@pytest.mark.parametrize('path', ['dispatcher', 'torch_path'])
@pytest.mark.parametrize('case', EDGE_CASES)
def test_edge_cases(case, path):
    """Each edge case equals BasicSR on the CPU path (the dispatcher) and on the GPU path's torch code run on CPU."""
    pred, gt, crop = _edge_case(case)
    if case.startswith('nan') and case != 'nan_in_cropped_border' and not _nan_maps_to_zero():
        pytest.skip('tensor2img does not map NaN to 0 on this platform')
    for test_y in (False, True):
        opts = {
            'psnr': {
                'type': 'calculate_psnr',
                'crop_border': crop,
                'test_y_channel': test_y
            },
            'ssim': {
                'type': 'calculate_ssim',
                'crop_border': crop,
                'test_y_channel': test_y
            },
        }
        if path == 'dispatcher':
            ours = per_head_many(pred, gt, opts)
        else:
            ours = torch_psnr_ssim(pred, gt, crop, test_y)
        for name, tol in (('psnr', PSNR_TOL), ('ssim', SSIM_TOL)):
            _assert_close(ours[name], _reference(pred, gt, opts[name]), tol)
        if case == 'tiny_9x12':
            assert torch.isnan(ours['ssim']).all() and not torch.isnan(ours['psnr']).any()
        else:
            assert torch.isfinite(ours['ssim']).all()


@pytest.mark.parametrize('metric', ['calculate_psnr', 'calculate_ssim'])
def test_crop_leaving_no_pixels_is_a_clear_error(rocket_batch, metric):
    """BasicSR gives NaN (PSNR) or an OpenCV assertion (SSIM) for an empty crop; we name the option and the fix."""
    pred, gt = rocket_batch  # 64 x 75
    with pytest.raises(ValueError, match=r'crop_border 32 leaves no pixels of the 64x75 image.*Fix'):
        per_head(pred, gt, {'type': metric, 'crop_border': 32})
    assert per_head(pred, gt, {'type': metric, 'crop_border': 31}).shape == pred.shape[:2]  # 2 rows are left


@pytest.mark.parametrize('crop_border,test_y', [(0, False), (4, True)])
def test_torch_path_matches_basicsr(rgb_batch, gray_batch, crop_border, test_y):
    """The CUDA path's code (BasicSR's calculate_ssim_pt on quantized images) run on CPU tensors."""
    for pred, gt in (rgb_batch, gray_batch):
        ours = torch_psnr_ssim(pred, gt, crop_border, test_y)
        for name, tol in (('psnr', PSNR_TOL), ('ssim', SSIM_TOL)):
            opt = {'type': f'calculate_{name}', 'crop_border': crop_border, 'test_y_channel': test_y}
            _assert_close(ours[name], _reference(pred, gt, opt), tol)
            assert ours[name].shape == pred.shape[:2] and ours[name].device.type == 'cpu'


def test_cpu_tensors_take_the_strip_path_once_per_setting(rgb_batch, monkeypatch):
    """CPU inputs never reach the torch path; PSNR + SSIM entries with equal settings share one strip call."""
    pred, gt = rgb_batch
    calls = []

    def torch_path(*args, **kwargs):
        raise AssertionError('CPU tensors reached the torch path')

    def strips(pred, gt, crop_border, test_y_channel, want):
        calls.append((crop_border, test_y_channel, tuple(sorted(want))))
        return cpu_psnr_ssim(pred, gt, crop_border, test_y_channel, want)

    monkeypatch.setattr(PH, 'torch_psnr_ssim', torch_path)
    monkeypatch.setattr(PH, 'cpu_psnr_ssim', strips)
    opts = {
        'psnr': {
            'type': 'calculate_psnr',
            'crop_border': 2
        },
        'ssim': {
            'type': 'calculate_ssim',
            'crop_border': 2
        },
        'psnr_again': {
            'type': 'calculate_psnr',
            'crop_border': 2,
            'better': 'higher'
        },
        'psnr_y': {
            'type': 'calculate_psnr',
            'crop_border': 2,
            'test_y_channel': True
        },
    }
    many = per_head_many(pred, gt, opts)
    assert sorted(calls) == [(2, False, ('psnr', 'ssim')), (2, True, ('psnr', ))]
    assert torch.equal(many['psnr'], many['psnr_again']) and many['psnr'] is not many['psnr_again']
    assert not torch.equal(many['psnr'], many['psnr_y'])


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
def test_cuda_matches_cpu(rgb_batch):
    pred, gt = rgb_batch
    for crop_border, test_y in ((0, False), (4, True)):
        for metric, tol in (('calculate_psnr', PSNR_TOL), ('calculate_ssim', SSIM_TOL)):
            opt = {'type': metric, 'crop_border': crop_border, 'test_y_channel': test_y}
            ours = per_head(pred.cuda(), gt.cuda(), opt)
            assert ours.device.type == 'cpu'
            _assert_close(ours, _reference(pred, gt, opt), tol)
