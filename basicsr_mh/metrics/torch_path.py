"""GPU path of the per-head PSNR / SSIM: every head at once, in torch, on the tensors' device (used for CUDA).

Equal (PSNR within 1e-10 dB, SSIM within 1e-10) to BasicSR's numpy ``calculate_psnr`` / ``calculate_ssim`` on
``tensor2img`` images:

- quantization as ``tensor2img``: float32, clamp to [0, 1], ``(x * 255.0).round()``; NaN becomes 0 (the x86 result
  of ``tensor2img``'s uint8 cast); infinite values clamp;
- ``crop_border``; ``test_y_channel`` with BasicSR's ``to_y_channel`` steps (float32 / float64 as numpy does them);
- PSNR from the float64 mean squared error, ``inf`` for identical images, NaN for an empty crop. BasicSR's
  ``calculate_psnr_pt`` is not reused: it adds 1e-8 to the MSE (up to ~3e-3 dB off at 48 dB, 80 dB instead of
  ``inf``) and has no Y channel for gray images;
- SSIM by BasicSR's own ``calculate_ssim_pt`` (float64 11x11 Gaussian convolution, valid region, channel mean) on
  the quantized images; NaN (BasicSR: the mean of an empty map) when the cropped image is smaller than 11x11.

Heads run in groups of about :data:`GROUP_ELEMENTS` pixels x channels (peak memory ~12 float64 copies of a group).
"""
import torch

from basicsr_mh import compat  # noqa: F401  (installs the torchvision alias before basicsr is imported)

#: Pixels x channels of the heads measured together in one SSIM call (64 MB per float64 buffer).
GROUP_ELEMENTS = 1 << 23
_WIN = 11  # BasicSR's SSIM window
# BasicSR's bgr2ycbcr(y_only=True) weights for B, G, R on [0, 1] inputs, then + 16 (result in [0, 255] scale).
_Y_WEIGHTS_BGR = (24.966, 128.553, 65.481)


def quantize_like_tensor2img(x):
    """Quantize like ``basicsr.utils.tensor2img``: float32, clamp to [0, 1], ``(x * 255.0).round()``, NaN -> 0.

    Channel order is kept (no RGB -> BGR swap) and the result stays a float tensor on ``x``'s device.

    Args:
        x (Tensor): any shape, e.g. ``(B, K, C, H, W)`` or ``(C, H, W)``, float values nominally in [0, 1].

    Returns:
        Tensor: float32 tensor of the same shape holding the integers 0..255 of tensor2img's uint8 image.
    """
    q = x.detach().to(torch.float32).clamp(0, 1).mul_(255.0).round_()
    return torch.nan_to_num_(q, nan=0.0)


def to_y_channel(q):
    """BasicSR's ``to_y_channel`` on quantized RGB (or gray) tensors, following its float32 / float64 steps.

    Args:
        q (Tensor): ``(N, C, H, W)`` with C in {1, 3}, integer values 0..255 in RGB order (e.g. from
            :func:`quantize_like_tensor2img`).

    Returns:
        Tensor: ``(N, 1, H, W)`` float32 Y channel in [0, 255] (not rounded): the values BasicSR's metrics use.
    """
    q = q.to(torch.float32)
    if q.shape[1] == 1:  # to_y_channel leaves 1-channel images as (img / 255.) * 255. in float32
        return q / 255.0 * 255.0
    # numpy: img.astype(float32) / 255. is float32; its dot with the python weights runs in float64; + 16; / 255.;
    # astype(float32); * 255. in float32.
    scaled = q / 255.0
    y = scaled[:, 2:3].double() * _Y_WEIGHTS_BGR[0]
    y += scaled[:, 1:2].double() * _Y_WEIGHTS_BGR[1]
    y += scaled[:, 0:1].double() * _Y_WEIGHTS_BGR[2]
    y += 16.0
    return (y / 255.0).to(torch.float32) * 255.0


def _images(x, crop_border, test_y):
    """``(N, C, H, W)`` raw -> ``(N, c, h, w)`` float32 values BasicSR's metrics see (quantized, cropped, maybe Y)."""
    q = quantize_like_tensor2img(x)
    if crop_border:
        q = q[..., crop_border:-crop_border, crop_border:-crop_border]
    return to_y_channel(q) if test_y else q


def torch_psnr_ssim(pred, gt, crop_border=0, test_y_channel=False, want=('psnr', 'ssim')):
    """PSNR and/or SSIM of every head, computed on the tensors' device.

    Args:
        pred (Tensor): ``(B, K, C, H, W)`` float, RGB (C in {1, 3}), [0, 1] (clamped like ``tensor2img``).
        gt (Tensor): ``(B, C, H, W)`` float, on ``pred``'s device.
        crop_border (int), test_y_channel (bool): as BasicSR's metric options.
        want (tuple[str]): which of ``'psnr'``, ``'ssim'`` to compute.

    Returns:
        dict[str, Tensor]: each ``(B, K)`` float64 on the CPU.
    """
    from basicsr.metrics.psnr_ssim import calculate_ssim_pt

    bsz, k = pred.shape[:2]
    out = {name: torch.empty(bsz, k, dtype=torch.float64) for name in want}
    with torch.no_grad():
        for b in range(bsz):
            y = _images(gt[b:b + 1], crop_border, test_y_channel).double()
            _, c, h, w = y.shape
            group = max(1, GROUP_ELEMENTS // max(1, c * h * w))
            for k0 in range(0, k, group):
                x = _images(pred[b, k0:k0 + group], crop_border, test_y_channel).double()
                n = x.shape[0]
                if 'psnr' in want:
                    mse = (x - y).square_().mean(dim=(1, 2, 3))  # NaN for an empty crop, as numpy's mean
                    psnr = 10.0 * torch.log10(255.0 * 255.0 / mse)
                    out['psnr'][b, k0:k0 + n] = torch.where(mse == 0, float('inf'), psnr).cpu()
                if 'ssim' in want:
                    if h < _WIN or w < _WIN:
                        out['ssim'][b, k0:k0 + n] = float('nan')
                    else:
                        ssim = calculate_ssim_pt(x / 255.0, y.expand_as(x) / 255.0, crop_border=0)
                        out['ssim'][b, k0:k0 + n] = ssim.cpu()
    return out
