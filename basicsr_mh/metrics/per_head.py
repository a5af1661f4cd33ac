"""Batched per-head PSNR and SSIM that reproduce BasicSR's numpy metrics on ``tensor2img`` images.

A multi-head model predicts ``K`` restorations per input: ``pred`` is ``(B, K, C, H, W)`` and the ground truth ``gt``
is ``(B, C, H, W)``, both float tensors nominally in ``[0, 1]``, RGB. BasicSR evaluates one output with
``calculate_metric(dict(img=tensor2img(out), img2=tensor2img(gt)), opt)``: both images are quantized to uint8 BGR,
then the numpy ``calculate_psnr`` / ``calculate_ssim`` run. This module computes the same numbers for all heads at
once in torch, on the tensors' device:

* images are quantized exactly as ``tensor2img`` does (float32, clamp to ``[0, 1]``, ``(x * 255.0).round()``);
* ``crop_border`` and ``test_y_channel`` (BasicSR's ``bgr2ycbcr`` Y formula, float32 rounding included) apply;
* SSIM uses the 11x11 Gaussian window (sigma 1.5) in 'valid' mode, per channel, averaged over channels.

How SSIM is made fast:

* The window is separable: a horizontal then a vertical 11-tap filter. On CPU the horizontal pass is one oneDNN
  convolution over the image seen as a single long signal cut in blocks of ``P`` samples (the ``P`` phases are the
  channels, a 2-tap kernel spans the next block); the vertical pass is one batched matrix product: each block of 32
  output rows is a banded ``(32, 42)`` matrix times the 42 input rows it needs. Elsewhere (CUDA, float64) both passes
  are block-Toeplitz matrix products.
* Per head only three planes are filtered, built from the difference ``d = x - y`` to the ground truth ``y``:
  ``d``, ``f = 2 (y - m) d`` and ``z = d^2 + f`` (``m``: the ground truth's rounded channel mean). With ``mu``, ``F``,
  ``Z`` their filtered values and the ground truth's own terms (computed once per image)::

      t    = 2 var_y + c2 - 2 (mu_y - m) mu
      num1 = 2 mu_y^2 + c1 + 2 mu_y mu     den1 = num1 + mu^2       (= 2 mu_x mu_y + c1,  mu_x^2 + mu_y^2 + c1)
      num2 = F + t                         den2 = Z + t - mu^2      (= 2 cov_xy + c2,     var_x + var_y + c2)

  Nothing large cancels when a head is close to the ground truth, so float32 suffices (heads offset by a large
  constant are centred first). Errors against BasicSR stay around 1e-7 on photos and below 3e-5 on adversarial flat
  images.
* Heads are processed in groups sized to the image (one 720p head per group, many small images per group). On CPU
  the buffers are kept between calls (fresh multi-megabyte tensors cost page faults): about 110 MB for a 720p RGB
  SSIM call, released by :func:`clear_workspace_cache` (or never kept with ``WORKSPACE_CACHE = False``).

PSNR is a sum of squared differences accumulated in float64. :func:`psnr_ssim_per_head` (used by
:func:`per_head_many`) gets PSNR almost for free from the SSIM pass. Any other metric type falls back to BasicSR's
``calculate_metric`` on ``tensor2img`` images, head by head.
"""
import collections
import contextlib
import math
import threading
import torch
import torch.nn.functional as F

from basicsr_mh import compat  # noqa: F401  (installs the torchvision alias before basicsr is imported)
from .cpu_strips import cpu_psnr_ssim

__all__ = [
    'quantize_like_tensor2img', 'to_y_channel', 'gaussian_filter_valid', 'psnr_per_head', 'ssim_per_head',
    'psnr_ssim_per_head', 'per_head', 'per_head_many', 'metric_per_head_fallback', 'clear_workspace_cache'
]

_C1 = (0.01 * 255)**2
_C2 = (0.03 * 255)**2
_WIN = 11  # Gaussian window size
_SIGMA = 1.5
_HALO = _WIN - 1
# BasicSR's bgr2ycbcr(y_only=True) weights for B, G, R on [0, 1] inputs, then + 16 (result in [0, 255] scale).
_Y_WEIGHTS_BGR = (24.966, 128.553, 65.481)
_CONV_PHASES = 16  # block length of the polyphase horizontal convolution (one AVX-512 vector of float32)
_GEMM_BLOCK = 32  # block length of the block-Toeplitz matrix products
_CPU_CONV = True  # CPU float32: oneDNN convolutions (False: matrix products everywhere; tests flip it)
# Elements (pixels x channels) per head group.
_GROUP_ELEMS = {'cpu': 1 << 21, 'other': 1 << 24}
_FAST_TYPES = ('calculate_psnr', 'calculate_ssim')


def _gaussian_taps():
    """The 11 taps of ``cv2.getGaussianKernel(11, 1.5)`` (same formula and normalisation), as Python floats."""
    taps = [math.exp(-0.5 / (_SIGMA * _SIGMA) * (i - (_WIN - 1) * 0.5)**2) for i in range(_WIN)]
    total = sum(taps)
    return [t * (1.0 / total) for t in taps]


_TAPS = _gaussian_taps()
_WEIGHT_CACHE = {}


def _cached(key, build):
    value = _WEIGHT_CACHE.get(key)
    if value is None:
        value = build()
        _WEIGHT_CACHE[key] = value
    return value


def _toeplitz(block, dtype, device):
    """Banded pieces so that ``out[m*P+p] = sum_q x[m*P+q] T0[q,p] + x[(m+1)*P+q] T1[q,p]`` (q < P, resp. q < 10).

    Returns ``(T0, T1, T0^T, T1^T)``, contiguous, of shapes ``(P, P)``, ``(10, P)``, ``(P, P)``, ``(P, 10)``.
    """

    def build():
        full = torch.zeros(2 * block, block, dtype=torch.float64)
        taps = torch.tensor(_TAPS, dtype=torch.float64)
        for p in range(block):
            full[p:p + _WIN, p] = taps
        t0 = full[:block].to(device=device, dtype=dtype).contiguous()
        t1 = full[block:block + _HALO].to(device=device, dtype=dtype).contiguous()
        return t0, t1, t0.t().contiguous(), t1.t().contiguous()

    return _cached(('toeplitz', block, dtype, str(device)), build)


def _polyphase_weight(phases, dtype, device):
    """Weight ``(P, P, 1, 2)`` (channels-last) of the horizontal pass: ``out[p] = sum_{k,q} w[p,q,0,k] x[kP+q]``."""

    def build():
        weight = torch.zeros(phases, phases, 1, 2, dtype=torch.float64)
        for p in range(phases):
            for k in range(2):
                for q in range(phases):
                    i = k * phases + q - p
                    if 0 <= i < _WIN:
                        weight[p, q, 0, k] = _TAPS[i]
        return weight.to(device=device, dtype=dtype).contiguous(memory_format=torch.channels_last)

    return _cached(('poly', phases, dtype, str(device)), build)


def _precision_is_exact(device):
    """False when float32 matmuls / convolutions may run in TF32 or bf16 on ``device`` (user precision settings)."""
    try:
        if torch.get_float32_matmul_precision() != 'highest':
            return False
        if device.type == 'cuda':
            if torch.backends.cuda.matmul.allow_tf32:
                return False
            backends = [torch.backends.cuda.matmul]
        elif device.type == 'cpu':
            mkldnn = torch.backends.mkldnn
            backends = [mkldnn, getattr(mkldnn, 'matmul', None), getattr(mkldnn, 'conv', None)]
        else:
            return True
        return all(getattr(b, 'fp32_precision', 'none') in ('none', 'ieee') for b in backends if b is not None)
    except Exception:  # pragma: no cover - exotic torch builds
        return False


def _ceil_to(n, m):
    return -(-n // m) * m


class _Workspace:
    """Named buffers of one computation, kept between calls on CPU (see :func:`clear_workspace_cache`).

    Fresh multi-megabyte CPU tensors cost page faults on first touch (glibc maps them anew), which for a 720p image
    is a good part of a metric call; reusing them avoids that. Buffers that must start zeroed are zeroed when
    created and only ever written in their leading part.
    """

    def __init__(self):
        self._buffers = {}

    def get(self, name, shape, dtype, device, zero=False):
        shape = tuple(int(v) for v in shape)
        buf = self._buffers.get(name)
        if buf is None or tuple(buf.shape) != shape or buf.dtype != dtype or buf.device != device:
            buf = (torch.zeros if zero else torch.empty)(shape, dtype=dtype, device=device)
            self._buffers[name] = buf
        return buf


WORKSPACE_CACHE = True  # keep CPU buffers between calls (about 110 MB for a 720p RGB SSIM call)
_CACHE_SIZE = 2
_CACHE = collections.OrderedDict()
_CACHE_LOCK = threading.Lock()


@contextlib.contextmanager
def _workspace(key, device):
    """A workspace for ``key``: cached on CPU (LRU of two), private and fresh elsewhere or when in use by a thread."""
    if not WORKSPACE_CACHE or device.type != 'cpu' or not _CACHE_LOCK.acquire(blocking=False):
        yield _Workspace()
        return
    try:
        ws = _CACHE.pop(key, None) or _Workspace()
        try:
            yield ws
        finally:
            _CACHE[key] = ws
            while len(_CACHE) > _CACHE_SIZE:
                _CACHE.popitem(last=False)
    finally:
        _CACHE_LOCK.release()


def clear_workspace_cache():
    """Free the CPU buffers that :func:`ssim_per_head` / :func:`psnr_per_head` keep for the next call."""
    with _CACHE_LOCK:
        _CACHE.clear()


class _GaussFilter:
    """Valid 11x11 Gaussian filter of ``planes`` images of size ``h x w``, with buffers from a workspace.

    Write the input into :meth:`input_view` (``(planes, h, w)``), then :meth:`run` returns the valid part, a view of
    shape ``(planes, h - 10, w - 10)`` that the next run may overwrite. Source padding stays zero.
    """

    def __init__(self, ws, name, planes, h, w, dtype, device):
        self.planes, self.h, self.w = planes, h, w
        self.n = planes * h * w
        self.use_conv = (
            _CPU_CONV and device.type == 'cpu' and dtype == torch.float32 and torch.backends.mkldnn.is_available())
        rows = planes * h
        if self.use_conv:
            p, pv = _CONV_PHASES, _GEMM_BLOCK
            self.rows_pad = _ceil_to(rows, pv)
            # the vertical matrix product reads rows up to rows_pad + 10: the horizontal pass must produce them
            self.blocks = -(-(self.rows_pad + _HALO) * w // p)
            self.src = ws.get(name + '.src', ((self.blocks + 1) * p, ), dtype, device, zero=True)
            self.w_h = _polyphase_weight(p, dtype, device)
            band = torch.cat(_toeplitz(pv, dtype, device)[2:], dim=1)  # (P, P + 10): [T0^T | T1^T]
            nb = self.rows_pad // pv
            self.band_b = band.expand(nb, pv, pv + _HALO)
            self.out = ws.get(name + '.out', (self.rows_pad * w, ), dtype, device)
        else:
            p = _GEMM_BLOCK
            self.n_pad = _ceil_to(self.n, p)
            self.rows_pad = _ceil_to(rows, p)
            self.src = ws.get(name + '.src', (self.n_pad + p, ), dtype, device, zero=True)
            self.mid = ws.get(name + '.mid', ((self.rows_pad + p) * w, ), dtype, device, zero=True)
            self.out = ws.get(name + '.out', (self.rows_pad * w, ), dtype, device)
            self.t0, self.t1, t0t, t1t = _toeplitz(p, dtype, device)
            nb = self.rows_pad // p
            self.t0t_b, self.t1t_b = t0t.expand(nb, p, p), t1t.expand(nb, p, _HALO)

    def input_view(self):
        return self.src[:self.n].view(self.planes, self.h, self.w)

    def run(self):
        h, w, ho, wo = self.h, self.w, self.h - _HALO, self.w - _HALO
        if self.use_conv:
            p, pv = _CONV_PHASES, _GEMM_BLOCK
            # Horizontal: the whole buffer as one signal, P phases as channels (outputs straddling rows: unused).
            signal = self.src.view(1, 1, self.blocks + 1, p).permute(0, 3, 1, 2)
            mid = F.conv2d(signal, self.w_h).permute(0, 2, 3, 1).reshape(-1)
            # Vertical: blocks of P output rows = [T0^T | T1^T] @ (P + 10 input rows), one batched product into
            # the reused output buffer (the windows overlap; they are only read).
            nb = self.rows_pad // pv
            windows = mid.as_strided((nb, pv + _HALO, w), (pv * w, w, 1))
            torch.bmm(self.band_b, windows, out=self.out.view(nb, pv, w))
        else:
            p = _GEMM_BLOCK
            m = self.n_pad // p
            mid = self.mid[:self.n_pad].view(m, p)
            torch.mm(self.src[:self.n_pad].view(m, p), self.t0, out=mid)
            mid.addmm_(self.src[p:self.n_pad + p].view(m, p)[:, :_HALO], self.t1)
            nb = self.rows_pad // p
            out = self.out.view(nb, p, w)
            torch.bmm(self.t0t_b, self.mid[:self.rows_pad * w].view(nb, p, w), out=out)
            out.baddbmm_(self.t1t_b, self.mid[p * w:(self.rows_pad + p) * w].view(nb, p, w)[:, :_HALO])
        return self.out[:self.n].view(self.planes, h, w)[:, :ho, :wo]


def gaussian_filter_valid(x):
    """Filter images with BasicSR's SSIM window (11x11 Gaussian, sigma 1.5), keeping only the valid region.

    Equals ``cv2.filter2D(img, -1, window)[5:-5, 5:-5]`` per plane, up to rounding in ``x``'s dtype.

    Args:
        x (Tensor): ``(..., H, W)`` float32 or float64 tensor, ``H, W >= 11``.

    Returns:
        Tensor: ``(..., H - 10, W - 10)`` contiguous tensor, same dtype and device as ``x``.
    """
    *lead, h, w = x.shape
    if h < _WIN or w < _WIN:
        raise ValueError(f'gaussian_filter_valid needs H, W >= {_WIN}, got {h}x{w}.')
    planes = math.prod(lead)
    filt = _GaussFilter(_Workspace(), 'f', planes, h, w, x.dtype, x.device)
    filt.input_view().copy_(x.reshape(planes, h, w))
    return filt.run().reshape(*lead, h - _HALO, w - _HALO).contiguous()


def _quantize_into(src, out, fix_nan=True):
    """``out <- round(clamp(float32(src), 0, 1) * 255)``; ``out`` float32 (or float64), ``src`` any float tensor.

    With ``fix_nan`` NaN becomes 0 (what tensor2img's uint8 cast gives on x86); without it NaN stays NaN, which the
    metric functions detect in their results and then redo with ``fix_nan`` (one pass less in the common case).
    """
    if src.dtype == torch.float32 and out.dtype == torch.float32:
        torch.clamp(src, 0, 1, out=out)
    else:
        out.copy_(src.to(torch.float32))  # tensor2img casts to float32 first
        out.clamp_(0, 1)
    out.mul_(255.0).round_()
    if fix_nan:
        torch.nan_to_num_(out, nan=0.0)
    return out


def quantize_like_tensor2img(x):
    """Quantize like ``basicsr.utils.tensor2img``: float32, clamp to [0, 1], ``(x * 255.0).round()``.

    Channel order is kept (no RGB -> BGR swap) and the result stays a float tensor on ``x``'s device.

    Args:
        x (Tensor): any shape, e.g. ``(B, K, C, H, W)`` or ``(C, H, W)``, float values nominally in [0, 1].

    Returns:
        Tensor: float32 tensor of the same shape holding the integers 0..255 of tensor2img's uint8 image (NaN -> 0).
    """
    return _quantize_into(x, torch.empty(x.shape, dtype=torch.float32, device=x.device))


def _y_into(q, out, tmp64):
    """BasicSR's ``to_y_channel`` of quantized images, following its float32 / float64 steps.

    Args:
        q (Tensor): ``(N, C, h, w)`` float32 integers 0..255, RGB (C=3) or gray (C=1).
        out (Tensor): ``(N, 1, h, w)`` float32 output.
        tmp64 (Tensor): ``(N, 1, h, w)`` float64 scratch (unused for C=1).
    """
    if q.shape[1] == 1:  # to_y_channel leaves 1-channel images as (img / 255.) * 255. in float32
        torch.div(q, 255.0, out=out)
        return out.mul_(255.0)
    # numpy: img.astype(float32) / 255. is float32; its dot with the python weights runs in float64; + 16; / 255.;
    # astype(float32); * 255. in float32.
    tmp64.copy_(torch.div(q[:, 2:3], 255.0)).mul_(_Y_WEIGHTS_BGR[0])
    tmp64.add_(torch.div(q[:, 1:2], 255.0), alpha=_Y_WEIGHTS_BGR[1])
    tmp64.add_(torch.div(q[:, 0:1], 255.0), alpha=_Y_WEIGHTS_BGR[2])
    tmp64.add_(16.0).div_(255.0)
    out.copy_(tmp64)
    return out.mul_(255.0)


def to_y_channel(q):
    """BasicSR's ``to_y_channel`` on quantized RGB (or gray) tensors.

    Args:
        q (Tensor): ``(N, C, H, W)`` with C in {1, 3}, integer values 0..255 in RGB order (e.g. from
            :func:`quantize_like_tensor2img`).

    Returns:
        Tensor: ``(N, 1, H, W)`` float32 Y channel in [0, 255] (not rounded): the values BasicSR's metrics use.
    """
    q = q.to(torch.float32)
    n, _, h, w = q.shape
    out = torch.empty(n, 1, h, w, dtype=torch.float32, device=q.device)
    tmp = torch.empty(n, 1, h, w, dtype=torch.float64, device=q.device)
    return _y_into(q, out, tmp)


def _check_inputs(pred, gt):
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
    if gt.device != pred.device:
        gt = gt.to(pred.device)
    return pred, gt


def _crop(x, crop_border):
    if crop_border:
        return x[..., crop_border:-crop_border, crop_border:-crop_border]
    return x


class _Images:
    """Quantized (cropped, Y-converted) images of a call, written group by group into caller-provided buffers."""

    def __init__(self, ws, pred, gt, crop_border, test_y_channel, fix_nan):
        self.ws, self.pred, self.gt, self.fix_nan = ws, pred, gt, fix_nan
        self.crop_border = int(crop_border)
        self.test_y = bool(test_y_channel)
        _, k, c, h, w = pred.shape
        self.h, self.w = max(0, h - 2 * self.crop_border), max(0, w - 2 * self.crop_border)
        self.c = 1 if self.test_y else c
        self.k, self.device = k, pred.device
        target = _GROUP_ELEMS['cpu' if self.device.type == 'cpu' else 'other']
        self.group = int(max(1, min(k, target // max(1, c * self.h * self.w))))
        if self.test_y:
            self.q_rgb = ws.get('img.q_rgb', (self.group, c, self.h, self.w), torch.float32, self.device)
            self.y64 = ws.get('img.y64', (self.group, 1, self.h, self.w), torch.float64, self.device)

    def groups(self):
        for k0 in range(0, self.k, self.group):
            yield k0, min(self.group, self.k - k0)

    def quantize(self, x, out):
        """``x``: ``(n, C, H, W)`` raw -> ``out`` ``(n, c, h, w)`` float32 (cropped, maybe Y)."""
        x = _crop(x, self.crop_border)
        if not self.test_y:
            return _quantize_into(x, out, self.fix_nan)
        n = x.shape[0]
        q = _quantize_into(x, self.q_rgb[:n], self.fix_nan)
        return _y_into(q, out, self.y64[:n])

    def gt_image(self, b):
        out = self.ws.get('img.gt', (1, self.c, self.h, self.w), torch.float32, self.device)
        return self.quantize(self.gt[b:b + 1], out)[0]


def _row_dots(a, b, row=4096):
    """Per-item sums of ``a * b`` for ``(n, L)`` float32 data: float32 dots over rows, summed in float64.

    One fused pass; a single float32 dot over millions of elements would lose ~1e-4 relative precision.
    """
    n, length = a.shape
    main = length // row * row
    total = torch.zeros(n, dtype=torch.float64, device=a.device)
    if main:
        total += torch.linalg.vecdot(a[:, :main].reshape(n, -1, row), b[:, :main].reshape(n, -1, row)).sum(
            dim=1, dtype=torch.float64)
    if main < length:
        total += torch.linalg.vecdot(a[:, main:], b[:, main:]).to(torch.float64)
    return total


def _sum_squares(flat):
    """Sums of squares of the rows of ``(n, L)`` float32 data, accumulated in float64."""
    return _row_dots(flat, flat)


def _psnr_from_sse(sse, count):
    mse = sse / count
    psnr = 10.0 * torch.log10(255.0 * 255.0 / mse)
    return torch.where(mse == 0, torch.full_like(psnr, float('inf')), psnr)


def _psnr_impl(pred, gt, crop_border, test_y_channel, fix_nan):
    bsz, k, c, h, w = pred.shape
    with _workspace(('psnr', pred.device, c, h, w, crop_border, test_y_channel), pred.device) as ws:
        imgs = _Images(ws, pred, gt, crop_border, test_y_channel, fix_nan)
        count = imgs.c * imgs.h * imgs.w
        if count == 0:
            return torch.full((bsz, k), float('nan'), dtype=torch.float64)
        buf = ws.get('psnr.buf', (imgs.group, imgs.c, imgs.h, imgs.w), torch.float32, imgs.device)
        sse = []
        for b in range(bsz):
            y = imgs.gt_image(b)
            for k0, n in imgs.groups():
                d = imgs.quantize(pred[b, k0:k0 + n], buf[:n]).sub_(y)
                sse.append(_sum_squares(d.view(n, -1)))
        return _psnr_from_sse(torch.cat(sse).cpu().view(bsz, k), count)


class _GtTerms:
    """Per-pixel ground-truth terms of the SSIM map, ``(c, h-10, w-10)`` each, in buffers reused across images.

    The ground truth is centred per channel on its (rounded) mean ``m`` before filtering, which shrinks the float32
    cancellation in ``var_y = G*(y - m)^2 - (G*(y - m))^2`` for most images; the terms do not depend on ``m``.
    """

    def __init__(self, ws, c, h, w, dtype, device):
        shape = (c, h - _HALO, w - _HALO)
        self.g1, self.g2, self.k3, self.g3 = (ws.get('gt.' + n, shape, dtype, device) for n in ('g1', 'g2', 'k3', 'g3'))
        self.y2c = ws.get('gt.y2c', (c, h, w), dtype, device)  # 2 (y - m), the factor of d in plane f

    def center(self, y):
        """Per-channel centre ``m`` (``(c, 1, 1)``) of the ground truth ``y`` (``(c, h, w)``)."""
        return y.mean(dim=(1, 2), keepdim=True).round_()

    def compute(self, y, m, mu_c, e_cc):
        """From ``mu_c = G*(y - m)`` and ``e_cc = G*((y - m)^2)``:
        ``g1 = 2 mu_y^2 + c1``, ``g2 = 2 mu_y``, ``k3 = 2 var_y + c2``, ``g3 = -2 (mu_y - m)``, ``y2c = 2 (y - m)``."""
        torch.mul(mu_c, -2.0, out=self.g3)
        torch.add(mu_c, m, out=self.g2).mul_(2.0)
        torch.mul(self.g2, self.g2, out=self.g1).mul_(0.5).add_(_C1)
        torch.addcmul(e_cc, mu_c, mu_c, value=-1.0, out=self.k3).mul_(2.0).add_(_C2)
        torch.sub(y, m, out=self.y2c).mul_(2.0)


def _center_offset(d, samples=64, threshold=16.0):
    """Integer per-(head, channel) offset of ``d`` (``(n, c, h, w)``), estimated on a subsample, or None if small.

    ``var(d)`` is computed as ``G*(d^2) - (G*d)^2``; in float32 that loses ~|mean|^2 * 1e-7 absolutely, which
    matters (against c2 = 58.5) only when a head is offset from the ground truth by tens of gray levels. Removing
    a constant changes no variance or covariance, so such heads are centred first (exact for integer offsets).
    """
    n, c, h, w = d.shape
    sample = d[:, :, ::max(1, h // samples), ::max(1, w // samples)]
    delta = sample.mean(dim=(2, 3)).round_()
    if bool((delta.abs() < threshold).all()):
        return None
    return delta.view(n, c, 1, 1)


def _ssim_impl(pred, gt, crop_border, test_y_channel, fix_nan, want_sse=False):
    bsz, k, c_in, h_in, w_in = pred.shape
    device = pred.device
    dtype = torch.float32 if _precision_is_exact(device) else torch.float64
    key = ('ssim', device, dtype, c_in, h_in, w_in, crop_border, test_y_channel)
    with _workspace(key, device) as ws:
        imgs = _Images(ws, pred, gt, crop_border, test_y_channel, fix_nan)
        h, w, c, g = imgs.h, imgs.w, imgs.c, imgs.group
        if h < _WIN or w < _WIN:
            nan = torch.full((bsz, k), float('nan'), dtype=torch.float64)
            if not want_sse:
                return nan
            return nan, (_psnr_impl(pred, gt, crop_border, test_y_channel, fix_nan) if h * w else nan)
        ho, wo = h - _HALO, w - _HALO
        # One filter per filtered quantity: d, f = 2 (y - m) d, z = d^2 + f.
        filters = [_GaussFilter(ws, f'q{i}', g * c, h, w, dtype, device) for i in range(3)]
        d_all, f_all, z_all = (filt.input_view().view(g, c, h, w) for filt in filters)
        qbuf = d_all if dtype == torch.float32 else ws.get('qbuf', (g, c, h, w), torch.float32, device)
        num1_buf = ws.get('num1', (g, c, ho, wo), dtype, device)
        ratio_buf = ws.get('ratio', (g, c, ho, wo), dtype, device)
        gt_terms = _GtTerms(ws, c, h, w, dtype, device)
        sums, sse = [], []
        for b in range(bsz):
            y = imgs.gt_image(b).to(dtype)
            # Ground-truth statistics through the same filters: y - m and (y - m)^2.
            m = gt_terms.center(y)
            torch.sub(y, m, out=d_all[0])
            torch.mul(d_all[0], d_all[0], out=f_all[0])
            gt_terms.compute(y, m, filters[0].run().view(g, c, ho, wo)[0], filters[1].run().view(g, c, ho, wo)[0])
            for k0, n in imgs.groups():
                d, f, z = d_all[:n], f_all[:n], z_all[:n]
                x = imgs.quantize(pred[b, k0:k0 + n], qbuf[:n])
                if x.data_ptr() != d.data_ptr():
                    d.copy_(x)
                d.sub_(y)
                if want_sse:
                    sse.append(_sum_squares(d.reshape(n, -1)))
                delta = _center_offset(d)
                if delta is not None:  # a large constant offset would cost float32 precision in E[d^2] - mu^2
                    d.sub_(delta)
                torch.mul(d, gt_terms.y2c, out=f)
                torch.addcmul(f, d, d, out=z)
                mu, f_mu, z_mu = (filt.run().view(g, c, ho, wo)[:n] for filt in filters)
                t = torch.addcmul(gt_terms.k3, gt_terms.g3, mu, out=num1_buf[:n])  # 2 var_y + c2 - 2 (mu_y - m) mu
                num2 = f_mu.add_(t)  # 2 cov_xy + c2 (covariances and variances ignore the offset)
                den2 = z_mu.add_(t).addcmul_(mu, mu, value=-1.0)  # var_x + var_y + c2
                if delta is not None:
                    mu.add_(delta)
                num1 = torch.addcmul(gt_terms.g1, gt_terms.g2, mu, out=t)  # 2 mu_x mu_y + c1
                den = torch.addcmul(num1, mu, mu, out=mu).mul_(den2)  # (mu_x^2 + mu_y^2 + c1) * den2
                ratio = torch.div(num2, den, out=ratio_buf[:n])
                sums.append(_row_dots(num1.reshape(n, -1), ratio.reshape(n, -1)))  # sum of the SSIM map
        ssim = torch.cat(sums).cpu().view(bsz, k) / (c * ho * wo)
        if not want_sse:
            return ssim
        return ssim, _psnr_from_sse(torch.cat(sse).cpu().view(bsz, k), c * h * w)


def _retry_on_nan(impl, pred, gt, crop_border, test_y_channel, **kwargs):
    pred, gt = _check_inputs(pred, gt)
    out = impl(pred, gt, crop_border, test_y_channel, False, **kwargs)
    first = out[0] if isinstance(out, tuple) else out
    if torch.isnan(first).any():  # NaN in the inputs (or an empty crop): redo with NaN -> 0 like tensor2img
        clear_workspace_cache()  # stale NaN in reused buffers would leak into the blocked filter products
        out = impl(pred, gt, crop_border, test_y_channel, True, **kwargs)
    return out


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
    return _retry_on_nan(_psnr_impl, pred, gt, crop_border, test_y_channel)


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
    return _retry_on_nan(_ssim_impl, pred, gt, crop_border, test_y_channel)


def psnr_ssim_per_head(pred, gt, crop_border=0, test_y_channel=False):
    """PSNR and SSIM together, sharing quantization; PSNR costs one extra reduction per head.

    Args:
        pred (Tensor): ``(B, K, C, H, W)``; gt (Tensor): ``(B, C, H, W)``; as :func:`psnr_per_head`.
        crop_border (int): pixels cut from each edge before measuring (both metrics).
        test_y_channel (bool): measure on BasicSR's Y channel (both metrics).

    Returns:
        tuple[Tensor, Tensor]: ``(psnr, ssim)``, each ``(B, K)`` float64 on the CPU.
    """
    ssim, psnr = _retry_on_nan(_ssim_impl, pred, gt, crop_border, test_y_channel, want_sse=True)
    return psnr, ssim


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
    """``(type, crop_border, test_y_channel)`` when the batched implementation applies, else None."""
    if metric_opt.get('type') not in _FAST_TYPES or metric_opt.get('input_order', 'HWC') != 'HWC':
        return None
    crop_border = metric_opt.get('crop_border', None)
    if isinstance(crop_border, bool) or not isinstance(crop_border, int) or crop_border < 0:
        return None
    if pred.dim() not in (4, 5) or pred.shape[-3] not in (1, 3) or not pred.is_floating_point():
        return None
    return metric_opt['type'], crop_border, bool(metric_opt.get('test_y_channel', False))


def per_head(pred, gt, metric_opt):
    """One BasicSR metric for every head: ``value[b, k] = calculate_metric(tensor2img(pred[b, k]), tensor2img(gt[b]))``.

    ``calculate_psnr`` and ``calculate_ssim`` run batched in torch on the tensors' device (see :func:`psnr_per_head`,
    :func:`ssim_per_head`); any other registered metric type falls back to BasicSR itself.

    Args:
        pred (Tensor): ``(B, K, C, H, W)`` head outputs, RGB, nominally in [0, 1] (clamped like tensor2img).
        gt (Tensor): ``(B, C, H, W)`` ground truth.
        metric_opt (dict): one metric entry of a BasicSR option file, e.g.
            ``{'type': 'calculate_ssim', 'crop_border': 4, 'test_y_channel': True}``; ``better`` is ignored.

    Returns:
        Tensor: ``(B, K)`` float64 on the CPU.
    """
    settings = _fast_settings(pred, metric_opt)
    if settings is None:
        return metric_per_head_fallback(pred, gt, metric_opt)
    metric_type, crop_border, test_y = settings
    name = 'psnr' if metric_type == 'calculate_psnr' else 'ssim'
    if _use_cpu_strips(pred, gt, crop_border):
        value = cpu_psnr_ssim(pred, gt, crop_border, test_y, want=(name, ))[name]
        if not torch.isnan(value).any():  # NaN inputs propagate: the torch path maps them as tensor2img does
            return value
    fn = psnr_per_head if metric_type == 'calculate_psnr' else ssim_per_head
    return fn(pred, gt, crop_border=crop_border, test_y_channel=test_y)


def _use_cpu_strips(pred, gt, crop_border):
    """The strip/OpenCV path (:mod:`.cpu_strips`) serves 5-D CPU tensors with room for the window.

    Infinite values are clamped as ``tensor2img`` does; NaN values make its result NaN, and the caller then falls back
    to the torch path (which maps NaN as ``tensor2img``'s uint8 cast does), so no full-size finiteness scan is needed.
    """
    if pred.dim() != 5 or gt.dim() != 4 or pred.device.type != 'cpu' or gt.device.type != 'cpu':
        return False
    return min(pred.shape[-2], pred.shape[-1]) - 2 * crop_border >= 11


def per_head_many(pred, gt, metric_opts):
    """Several metrics for every head; a PSNR and an SSIM entry with equal settings are computed in one pass.

    Args:
        pred (Tensor): ``(B, K, C, H, W)``; gt (Tensor): ``(B, C, H, W)``.
        metric_opts (dict): ``{name: metric_opt}`` as in a BasicSR ``val.metrics`` section.

    Returns:
        dict[str, Tensor]: ``{name: (B, K) float64 CPU tensor}``, in the order of ``metric_opts``.
    """
    results = {}
    pending = {}  # (crop_border, test_y) -> {'calculate_psnr': name, 'calculate_ssim': name}
    for name, opt in metric_opts.items():
        settings = _fast_settings(pred, opt)
        if settings is None:
            continue
        slot = pending.setdefault(settings[1:], {})
        if settings[0] not in slot:
            slot[settings[0]] = name
    for (crop_border, test_y), slot in pending.items():
        both = cpu_psnr_ssim(pred, gt, crop_border,
                             test_y) if len(slot) == 2 and _use_cpu_strips(pred, gt, crop_border) else None
        if both is not None and not (torch.isnan(both['psnr']).any() or torch.isnan(both['ssim']).any()):
            results[slot['calculate_psnr']], results[slot['calculate_ssim']] = both['psnr'], both['ssim']
        elif len(slot) == 2:
            psnr, ssim = psnr_ssim_per_head(pred, gt, crop_border, test_y)
            results[slot['calculate_psnr']], results[slot['calculate_ssim']] = psnr, ssim
    for name, opt in metric_opts.items():
        if name not in results:
            results[name] = per_head(pred, gt, opt)
    return {name: results[name] for name in metric_opts}
