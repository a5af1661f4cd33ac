"""Per-head image-quality metrics: BasicSR's PSNR / SSIM for all heads of a multi-output model at once.

:mod:`basicsr_mh.metrics.per_head` is the dispatcher (reach the module through ``sys.modules`` or ``from ... import``:
the package attribute ``per_head`` is the function) over :mod:`.cpu_strips` (CPU, OpenCV) and :mod:`.torch_path`
(CUDA). ``basicsr`` itself is imported lazily, by the CUDA and fallback paths only, after :mod:`basicsr_mh.compat`
has installed its torchvision alias.
"""
from basicsr_mh import compat  # noqa: F401  (must precede any basicsr import)
from .per_head import (metric_per_head_fallback, per_head, per_head_many, psnr_per_head, psnr_ssim_per_head,
                       ssim_per_head)
from .torch_path import quantize_like_tensor2img, to_y_channel

#: PSNR and SSIM on RGB without border crop (BasicSR's ``val.metrics`` layout): the default of the demo and of
#: ``basicsr-mh analyze`` when an option file names no metrics. Copy it before changing it.
RGB_PSNR_SSIM = {
    'psnr': dict(type='calculate_psnr', crop_border=0, test_y_channel=False),
    'ssim': dict(type='calculate_ssim', crop_border=0, test_y_channel=False),
}

__all__ = [
    'RGB_PSNR_SSIM', 'per_head', 'per_head_many', 'psnr_per_head', 'ssim_per_head', 'psnr_ssim_per_head',
    'quantize_like_tensor2img', 'to_y_channel', 'metric_per_head_fallback'
]
