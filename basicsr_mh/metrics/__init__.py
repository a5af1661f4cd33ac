"""Per-head image-quality metrics: BasicSR's PSNR / SSIM for all heads of a multi-output model at once.

See :mod:`basicsr_mh.metrics.per_head` (reach the module through ``sys.modules`` or ``from ... import``: the package
attribute ``per_head`` is the function). ``basicsr`` itself is imported lazily, by the fallback path only, after
:mod:`basicsr_mh.compat` has installed its torchvision alias.
"""
from basicsr_mh import compat  # noqa: F401  (must precede any basicsr import)
from .per_head import (clear_workspace_cache, gaussian_filter_valid, metric_per_head_fallback, per_head, per_head_many,
                       psnr_per_head, psnr_ssim_per_head, quantize_like_tensor2img, ssim_per_head, to_y_channel)

#: PSNR and SSIM on RGB without border crop (BasicSR's ``val.metrics`` layout): the default of the demo and of
#: ``basicsr-mh analyze`` when an option file names no metrics. Copy it before changing it.
RGB_PSNR_SSIM = {
    'psnr': dict(type='calculate_psnr', crop_border=0, test_y_channel=False),
    'ssim': dict(type='calculate_ssim', crop_border=0, test_y_channel=False),
}

__all__ = [
    'RGB_PSNR_SSIM', 'per_head', 'per_head_many', 'psnr_per_head', 'ssim_per_head', 'psnr_ssim_per_head',
    'quantize_like_tensor2img', 'to_y_channel', 'gaussian_filter_valid', 'metric_per_head_fallback',
    'clear_workspace_cache'
]
