"""Per-head PSNR and SSIM equal to BasicSR's numpy metrics on ``tensor2img`` images: a dispatcher over two paths.

A multi-head model predicts ``K`` restorations per input: ``pred`` is ``(B, K, C, H, W)`` and the ground truth ``gt``
is ``(B, C, H, W)``, both float tensors nominally in ``[0, 1]``, RGB. BasicSR evaluates one output with
``calculate_metric(dict(img=tensor2img(out), img2=tensor2img(gt)), opt)``. This module gives the same numbers for
all heads at once:

* CUDA tensors: :func:`~basicsr_mh.metrics.torch_path.torch_psnr_ssim` (torch on the GPU, BasicSR's
  ``calculate_ssim_pt``);
* everything else: :func:`~basicsr_mh.metrics.cpu_strips.cpu_psnr_ssim` (OpenCV on cache-sized row strips, threads);
* metric types other than ``calculate_psnr`` / ``calculate_ssim`` (or options those paths do not cover):
  BasicSR's own ``calculate_metric`` on ``tensor2img`` images, head by head (:func:`metric_per_head_fallback`).

Both paths quantize as ``tensor2img`` (NaN -> 0, infinite values clamped), apply ``crop_border`` and
``test_y_channel``, return ``inf`` PSNR for identical images and NaN SSIM (as BasicSR) for images smaller than the
11x11 window after the crop. A ``crop_border`` that leaves no pixels is a ValueError (BasicSR: NaN PSNR, an OpenCV
assertion for SSIM).
"""
import torch

from basicsr_mh import compat  # noqa: F401  (installs the torchvision alias before basicsr is imported)
from .cpu_strips import cpu_psnr_ssim
from .torch_path import torch_psnr_ssim

__all__ = [
    'psnr_per_head', 'ssim_per_head', 'psnr_ssim_per_head', 'per_head', 'per_head_many', 'metric_per_head_fallback'
]

_FAST_TYPES = {'calculate_psnr': 'psnr', 'calculate_ssim': 'ssim'}


def _check_inputs(pred, gt):
    """``pred`` as ``(B, K, C, H, W)`` (a 4-D tensor is K = 1); ValueError/TypeError naming the problem."""
    if pred.dim() == 4:
        pred = pred.unsqueeze(1)
    if pred.dim() != 5 or gt.dim() != 4:
        raise ValueError(f'Expected pred (B, K, C, H, W) and gt (B, C, H, W), got {tuple(pred.shape)} and '
                         f'{tuple(gt.shape)}.')
    b, _, c, h, w = pred.shape
    if tuple(gt.shape) != (b, c, h, w):
        raise ValueError(f'gt shape {tuple(gt.shape)} does not match pred shape {tuple(pred.shape)}.')
    if c not in (1, 3):
        raise ValueError(f'Only 1- or 3-channel images are supported here, got C={c}.')
    if not (pred.is_floating_point() and gt.is_floating_point()):
        raise TypeError('pred and gt must be floating point tensors.')
    return pred, gt


def _psnr_ssim(pred, gt, crop_border, test_y_channel, want):
    """The dispatcher: ``{name: (B, K) float64 CPU tensor}`` for ``name`` in ``want`` (``'psnr'``, ``'ssim'``)."""
    pred, gt = _check_inputs(pred, gt)
    h, w = pred.shape[-2:]
    if min(h, w) <= 2 * crop_border:
        raise ValueError(f'crop_border {crop_border} leaves no pixels of the {h}x{w} image. Fix: set the metric\'s '
                         f'crop_border below {(min(h, w) + 1) // 2}.')
    if pred.device.type == 'cuda':
        return torch_psnr_ssim(pred, gt.to(pred.device), int(crop_border), bool(test_y_channel), want)
    return cpu_psnr_ssim(pred, gt, int(crop_border), bool(test_y_channel), want)


def psnr_per_head(pred, gt, crop_border=0, test_y_channel=False, **kwargs):
    """PSNR of every head against the ground truth, equal to BasicSR's numpy ``calculate_psnr`` on tensor2img images.

    Args:
        pred (Tensor): ``(B, K, C, H, W)`` predictions, RGB, C in {1, 3}, nominally in [0, 1] (clamped). A 4-D
            ``(B, C, H, W)`` tensor counts as K = 1.
        gt (Tensor): ``(B, C, H, W)`` ground truth.
        crop_border (int): pixels cut from each edge before measuring.
        test_y_channel (bool): measure on BasicSR's Y channel (bgr2ycbcr, y_only).
        **kwargs: ignored (e.g. ``better``).

    Returns:
        Tensor: ``(B, K)`` float64 on the CPU, in dB; ``inf`` where a head equals the ground truth after quantization.
    """
    return _psnr_ssim(pred, gt, crop_border, test_y_channel, ('psnr', ))['psnr']


def ssim_per_head(pred, gt, crop_border=0, test_y_channel=False, **kwargs):
    """SSIM of every head against the ground truth, equal to BasicSR's numpy ``calculate_ssim`` on tensor2img images.

    11x11 Gaussian window (sigma 1.5), valid region only, computed per channel and averaged over channels.

    Args:
        pred (Tensor): ``(B, K, C, H, W)`` predictions, RGB, C in {1, 3}, nominally in [0, 1] (clamped). A 4-D
            ``(B, C, H, W)`` tensor counts as K = 1.
        gt (Tensor): ``(B, C, H, W)`` ground truth.
        crop_border (int): pixels cut from each edge before measuring.
        test_y_channel (bool): measure on BasicSR's Y channel (bgr2ycbcr, y_only).
        **kwargs: ignored (e.g. ``better``).

    Returns:
        Tensor: ``(B, K)`` float64 on the CPU; NaN when the cropped image is smaller than 11x11 (BasicSR: the mean of
        an empty array).
    """
    return _psnr_ssim(pred, gt, crop_border, test_y_channel, ('ssim', ))['ssim']


def psnr_ssim_per_head(pred, gt, crop_border=0, test_y_channel=False):
    """PSNR and SSIM together, in one call of the path.

    Args:
        pred (Tensor): ``(B, K, C, H, W)``; gt (Tensor): ``(B, C, H, W)``; as :func:`psnr_per_head`.
        crop_border (int): pixels cut from each edge before measuring (both metrics).
        test_y_channel (bool): measure on BasicSR's Y channel (both metrics).

    Returns:
        tuple[Tensor, Tensor]: ``(psnr, ssim)``, each ``(B, K)`` float64 on the CPU.
    """
    both = _psnr_ssim(pred, gt, crop_border, test_y_channel, ('psnr', 'ssim'))
    return both['psnr'], both['ssim']


def metric_per_head_fallback(pred, gt, metric_opt):
    """Any BasicSR metric, head by head: ``calculate_metric(dict(img=tensor2img(pred[b, k]), img2=...), opt)``.

    Args:
        pred (Tensor): ``(B, K, C, H, W)`` (or ``(B, C, H, W)`` for K = 1).
        gt (Tensor): ``(B, C, H, W)``.
        metric_opt (dict): a BasicSR metric option entry with ``type``; ``better`` is ignored.

    Returns:
        Tensor: ``(B, K)`` float64 on the CPU.
    """
    from basicsr.metrics import calculate_metric
    from basicsr.utils import tensor2img

    if pred.dim() == 4:
        pred = pred.unsqueeze(1)
    opt = {key: val for key, val in metric_opt.items() if key != 'better'}
    bsz, k = pred.shape[:2]
    out = torch.empty(bsz, k, dtype=torch.float64)
    for b in range(bsz):
        img2 = tensor2img(gt[b])
        for j in range(k):
            out[b, j] = float(calculate_metric(dict(img=tensor2img(pred[b, j]), img2=img2), opt))
    return out


def _fast_settings(pred, metric_opt):
    """``(name, crop_border, test_y_channel)`` (name ``'psnr'``/``'ssim'``) when the two paths apply, else None."""
    if metric_opt.get('type') not in _FAST_TYPES or metric_opt.get('input_order', 'HWC') != 'HWC':
        return None
    crop_border = metric_opt.get('crop_border', None)
    if isinstance(crop_border, bool) or not isinstance(crop_border, int) or crop_border < 0:
        return None
    if pred.dim() not in (4, 5) or pred.shape[-3] not in (1, 3) or not pred.is_floating_point():
        return None
    return _FAST_TYPES[metric_opt['type']], crop_border, bool(metric_opt.get('test_y_channel', False))


def per_head(pred, gt, metric_opt):
    """One BasicSR metric for every head: ``value[b, k] = calculate_metric(tensor2img(pred[b, k]), tensor2img(gt[b]))``.

    ``calculate_psnr`` and ``calculate_ssim`` run batched (OpenCV strips on the CPU, torch on CUDA); any other
    registered metric type falls back to BasicSR itself.

    Args:
        pred (Tensor): ``(B, K, C, H, W)`` head outputs, RGB, nominally in [0, 1] (clamped like tensor2img); a 4-D
            ``(B, C, H, W)`` tensor counts as K = 1.
        gt (Tensor): ``(B, C, H, W)`` ground truth.
        metric_opt (dict): one metric entry of a BasicSR option file, e.g.
            ``{'type': 'calculate_ssim', 'crop_border': 4, 'test_y_channel': True}``; ``better`` is ignored.

    Returns:
        Tensor: ``(B, K)`` float64 on the CPU.
    """
    return per_head_many(pred, gt, {'metric': metric_opt})['metric']


def per_head_many(pred, gt, metric_opts):
    """Several metrics for every head; the PSNR and SSIM entries with equal settings are computed in one call.

    Args:
        pred (Tensor): ``(B, K, C, H, W)``; gt (Tensor): ``(B, C, H, W)``.
        metric_opts (dict): ``{name: metric_opt}`` as in a BasicSR ``val.metrics`` section.

    Returns:
        dict[str, Tensor]: ``{name: (B, K) float64 CPU tensor}``, in the order of ``metric_opts``.
    """
    pending = {}  # (crop_border, test_y) -> {'psnr': [names], 'ssim': [names]}
    for name, opt in metric_opts.items():
        settings = _fast_settings(pred, opt)
        if settings is not None:
            pending.setdefault(settings[1:], {}).setdefault(settings[0], []).append(name)
    results = {}
    for (crop_border, test_y), names in pending.items():
        values = _psnr_ssim(pred, gt, crop_border, test_y, tuple(names))
        results.update({name: values[metric].clone() for metric in names for name in names[metric]})
    for name, opt in metric_opts.items():
        if name not in results:
            results[name] = metric_per_head_fallback(pred, gt, opt)
    return {name: results[name] for name in metric_opts}
