"""Losses registered into BasicSR's LOSS_REGISTRY: PSNRLoss and MinHeadLoss."""
from .min_head_loss import MinHeadLoss, build_inner_loss  # noqa: F401
from .psnr_loss import PSNRLoss  # noqa: F401
