"""PSNRLoss: the pixel loss of NAFNet and HINet, ``10 / ln(10) * log(mse + 1e-8)`` per sample, averaged."""
import math
import torch
from basicsr.utils.registry import LOSS_REGISTRY
from torch import nn

_Y_COEF = (65.481, 128.553, 24.966)


@LOSS_REGISTRY.register()
class PSNRLoss(nn.Module):
    """Negative PSNR as a loss: ``loss_weight * 10/ln10 * mean_n log(mean_{c,h,w}(pred - target)^2 + 1e-8)``.

    Args:
        loss_weight (float): multiplier. Default 1.
        reduction (str): only ``'mean'`` (over samples), as in NAFNet/HINet.
        toY (bool): compare the Y channel (BT.601, as NAFNet's option of that name) instead of RGB.

    Forward: ``pred``, ``target`` (N, C, H, W) -> scalar. :meth:`per_sample` gives the (N,) values before the mean.
    """

    def __init__(self, loss_weight=1.0, reduction='mean', toY=False):
        super().__init__()
        if reduction != 'mean':
            raise ValueError(f'PSNRLoss supports only reduction: mean, got {reduction!r}. Fix: remove `reduction`.')
        self.loss_weight = loss_weight
        self.reduction = reduction
        self.scale = 10 / math.log(10)
        self.toY = toY
        self.register_buffer('coef', torch.tensor(_Y_COEF).reshape(1, 3, 1, 1), persistent=False)

    def _to_y(self, x):
        return ((x * self.coef.to(x)).sum(dim=1, keepdim=True) + 16.) / 255.

    def per_sample(self, pred, target):
        """(N, C, H, W), (N, C, H, W) -> (N,): ``loss_weight * 10/ln10 * log(mse_n + 1e-8)``."""
        if pred.dim() != 4:
            raise ValueError(f'PSNRLoss expects 4-D (N, C, H, W) tensors, got shape {tuple(pred.shape)}.')
        if self.toY:
            pred, target = self._to_y(pred), self._to_y(target)
        mse = ((pred - target)**2).mean(dim=(1, 2, 3))
        return self.loss_weight * self.scale * torch.log(mse + 1e-8)

    def per_head(self, pred, target):
        """(B, K, C, H, W), (B, C, H, W) -> (B, K): :meth:`per_sample` of every head against the sample's target,
        head by head (``target`` is not copied K times; temporaries of one head at a time)."""
        return torch.stack([self.per_sample(pred[:, k], target) for k in range(pred.shape[1])], dim=1)

    def forward(self, pred, target, weight=None, **kwargs):
        """(N, C, H, W), (N, C, H, W) -> scalar loss (mean over samples)."""
        return self.per_sample(pred, target).mean()
