"""Fast CPU path of the per-head PSNR / SSIM: cache-sized row strips, OpenCV filters, a thread per strip.

Equal to BasicSR's numpy ``calculate_psnr`` / ``calculate_ssim`` on ``tensor2img`` images (uint8 quantization,
``crop_border``, ``test_y_channel``, 11x11 Gaussian window with sigma 1.5, valid filtering, mean over channels):

- quantization ``round(clip(x, 0, 1) * 255)`` is done strip by strip in float32, as ``tensor2img`` does;
- PSNR sums squared differences of the quantized images exactly (integers in float32, sums in float64);
- SSIM filters values centred at 128 with OpenCV's separable float32 filter; the window's statistics are then
  combined in float32 within a strip and summed in float64 (errors up to ~5e-6 against BasicSR's float64 SSIM on the
  tests' photos and degraded heads);
- the ground truth's statistics are computed once per strip and shared by all heads;
- NaN values become 0 as in ``tensor2img``'s uint8 cast: an image whose result is NaN is measured again with that
  mapping, so the common case pays no finiteness scan;
- strips of ~64 rows keep every intermediate in the CPU cache, and strips run in parallel threads (OpenCV and
  numpy release the GIL), so K heads cost little more than K times the arithmetic, with no memory traffic.

The RGB/BGR channel order does not change PSNR or the channel-mean SSIM; for the Y channel the weights are applied
to RGB input directly (``65.481 R + 128.553 G + 24.966 B``).
"""
import cv2
import math
import numpy as np
import os
import torch
from concurrent.futures import ThreadPoolExecutor

_HALO = 5  # half of BasicSR's 11x11 window
_STRIP_ROWS = 64
_C1 = (0.01 * 255)**2
_C2 = (0.03 * 255)**2
_Y_RGB = np.array([65.481, 128.553, 24.966], np.float32)
_GAUSS = cv2.getGaussianKernel(11, 1.5).astype(np.float32).ravel()


def _quantize(x, fix_nan=False):
    """float32 (..., h, w) in [0, 1] -> float32 uint8-valued, exactly as ``tensor2img`` (NaN -> 0 with ``fix_nan``)."""
    q = np.clip(x, 0.0, 1.0)
    q *= 255.0
    np.rint(q, out=q)
    return np.nan_to_num(q, copy=False, nan=0.0) if fix_nan else q


def _planes(q, test_y):
    """(C, h, w) quantized -> list of planes: the Y plane (float32, 0..255 scale) or each channel."""
    if test_y and q.shape[0] == 3:
        y = q[0] * (_Y_RGB[0] / 255.0)
        y += q[1] * (_Y_RGB[1] / 255.0)
        y += q[2] * (_Y_RGB[2] / 255.0)
        y += 16.0
        return [y]
    return [q[c] for c in range(q.shape[0])]


def _filter_valid(x):
    """11x11 Gaussian (sigma 1.5) of a float32 plane, valid region only: (h, w) -> (h - 10, w - 10)."""
    out = cv2.sepFilter2D(x, cv2.CV_32F, _GAUSS, _GAUSS, borderType=cv2.BORDER_REFLECT_101)
    return out[_HALO:-_HALO, _HALO:-_HALO]


def _ssim_strip(pred, gt, r0, r1, test_y, fix_nan):
    """SSIM map sums of rows [r0, r1) of the valid region for every head: pred (K, C, H, W) -> (K,) float64.

    Per pixel: ``(2 mu1 mu2 + C1)(2 s12 + C2) / ((mu1^2 + mu2^2 + C1)(s11 + s22 + C2))`` with the window moments
    of values centred at 128 (SSIM is shift-invariant in s11, s22, s12; the luminance term adds the 128 back).
    """
    gq = _planes(_quantize(gt[:, r0:r1 + 2 * _HALO], fix_nan), test_y)
    gt_terms = []
    for g in gq:
        g = g - 128.0
        mu2 = _filter_valid(g)
        s22_c2 = _filter_valid(g * g)
        s22_c2 -= mu2 * mu2
        s22_c2 += _C2
        mu2b = mu2 + 128.0
        gt_terms.append((2.0 * g, mu2 * 2.0, 2.0 * mu2b, mu2b * mu2b + _C1, s22_c2))
    sums = np.zeros(pred.shape[0], np.float64)
    for k in range(pred.shape[0]):
        pq = _planes(_quantize(pred[k, :, r0:r1 + 2 * _HALO], fix_nan), test_y)
        for p, (g2, mu2x2, mu2bx2, mu2b_sq_c1, s22_c2) in zip(pq, gt_terms):
            p -= 128.0
            mu1 = _filter_valid(p)
            den = _filter_valid(p * p)  # E[p^2]
            num = _filter_valid(p * g2)  # 2 E[p g]
            num -= mu1 * mu2x2  # 2 s12
            num += _C2
            mu1b = mu1 + 128.0
            lum = mu1b * mu2bx2
            lum += _C1
            num *= lum
            mu1 *= mu1
            den -= mu1  # s11
            den += s22_c2
            mu1b *= mu1b
            mu1b += mu2b_sq_c1
            den *= mu1b
            num /= den
            sums[k] += num.sum(dtype=np.float64)
    return sums


def _sse_strip(pred, gt, r0, r1, test_y, fix_nan):
    """Sum of squared differences of the quantized images, rows [r0, r1), every head: (K,) float64."""
    g = _quantize(gt[:, r0:r1], fix_nan)
    sums = np.zeros(pred.shape[0], np.float64)
    for k in range(pred.shape[0]):
        d = _quantize(pred[k, :, r0:r1], fix_nan)
        d -= g
        if test_y and d.shape[0] == 3:
            d = d[0] * (_Y_RGB[0] / 255.0) + d[1] * (_Y_RGB[1] / 255.0) + d[2] * (_Y_RGB[2] / 255.0)
        sums[k] = float(np.square(d, out=d).sum(dtype=np.float64))
    return sums


def _run_strips(work, height, pred, gt, test_y, threads, fix_nan):
    bounds = [(r, min(r + _STRIP_ROWS, height)) for r in range(0, height, _STRIP_ROWS)]
    if threads <= 1 or len(bounds) == 1:
        return sum(work(pred, gt, r0, r1, test_y, fix_nan) for r0, r1 in bounds)
    with ThreadPoolExecutor(threads) as pool:
        return sum(pool.map(lambda b: work(pred, gt, b[0], b[1], test_y, fix_nan), bounds))


def _psnr(p, g, test_y, threads, fix_nan):
    """PSNR of every head of one image: p (K, C, h, w), g (C, h, w) -> (K,) float64 (NaN for an empty image)."""
    planes, height, width = (1 if (test_y and g.shape[0] == 3) else g.shape[0]), g.shape[1], g.shape[2]
    if height * width == 0:
        return np.full(p.shape[0], math.nan)  # BasicSR: the mean of an empty array
    mse = _run_strips(_sse_strip, height, p, g, test_y, threads, fix_nan) / (planes * height * width)
    return np.array([math.inf if m == 0 else 10.0 * math.log10(255.0**2 / m) for m in mse])


def _ssim(p, g, test_y, threads, fix_nan):
    """SSIM of every head of one image: p (K, C, h, w), g (C, h, w) -> (K,) float64 (NaN below 11x11)."""
    planes = 1 if (test_y and g.shape[0] == 3) else g.shape[0]
    valid_h, valid_w = g.shape[1] - 2 * _HALO, g.shape[2] - 2 * _HALO
    if valid_h <= 0 or valid_w <= 0:
        return np.full(p.shape[0], math.nan)  # BasicSR: the mean of an empty SSIM map
    return _run_strips(_ssim_strip, valid_h, p, g, test_y, threads, fix_nan) / (planes * valid_h * valid_w)


def cpu_psnr_ssim(pred, gt, crop_border=0, test_y_channel=False, want=('psnr', 'ssim')):
    """PSNR and/or SSIM of every head on the CPU.

    NaN values become 0 as in ``tensor2img``'s uint8 cast on x86: an image whose result comes out NaN is redone with
    that mapping (no finiteness scan in the common case). Infinite values clamp to 0 or 1.

    Args:
        pred (Tensor): (B, K, C, H, W) float, RGB, [0, 1] (clamped like ``tensor2img``), on any device.
        gt (Tensor): (B, C, H, W).
        crop_border (int), test_y_channel (bool): as BasicSR's metric options.
        want (tuple[str]): which of ``'psnr'``, ``'ssim'`` to compute.

    Returns:
        dict[str, Tensor]: each (B, K) float64 (PSNR is ``inf`` for identical images, as BasicSR's; both are NaN
        where BasicSR's are: an empty crop, SSIM of an image smaller than 11x11 after the crop).
    """
    pred_np = pred.detach().to('cpu', torch.float32).contiguous().numpy()
    gt_np = gt.detach().to('cpu', torch.float32).contiguous().numpy()
    if crop_border:
        pred_np = pred_np[..., crop_border:-crop_border, crop_border:-crop_border]
        gt_np = gt_np[..., crop_border:-crop_border, crop_border:-crop_border]
    threads = max(1, min(torch.get_num_threads(), os.cpu_count() or 1))
    metrics = {'psnr': _psnr, 'ssim': _ssim}
    out = {name: torch.zeros(pred_np.shape[:2], dtype=torch.float64) for name in want}
    cv_threads = cv2.getNumThreads()
    cv2.setNumThreads(1)  # parallelism comes from the strips; restored below
    try:
        for b in range(pred_np.shape[0]):
            p, g = pred_np[b], gt_np[b]  # views: each strip is quantized into a fresh contiguous array
            for name in want:
                values = metrics[name](p, g, test_y_channel, threads, False)
                if np.isnan(values).any():  # NaN in the images (or an empty crop): redo with NaN -> 0 like tensor2img
                    values = metrics[name](p, g, test_y_channel, threads, True)
                out[name][b] = torch.from_numpy(values)
    finally:
        cv2.setNumThreads(cv_threads)
    return out
