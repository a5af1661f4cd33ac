"""The model types of the NAFNet/HINet and Restormer option files: ``ImageRestorationModel``, ``ImageCleanModel``.

Both are :class:`MultiHeadImageRestorationModel` with their home repository's defaults, so one class serves a
published single-head file as it is and the same file with ``num_heads``/``combine`` added: with a plain network
they train and validate as at home (one image per input, metrics without ``_overall``/``_h{k}``), with heads they
are the multi-head model (:func:`basicsr_mh.options.upgrade_options` keeps the model type and logs one line).

Shared with every :class:`MultiHeadImageRestorationModel`: ``val.grids`` tiling (``crop_size``, ``crop_size_h``/
``_w``, ratios), ``val.max_minibatch``, ``val.window_size``, ``val.rgb2bgr``/``use_image``, the pixel loss on every
stage output of list-returning networks (HINet, MPRNet), Restormer's progressive training
(``datasets.train.mini_batch_sizes``/``gt_sizes``/``iters``) and ``train.mixing_augs``, the forks' schedulers, any
``torch.optim`` optimizer, ``path.param_key`` as ``param_key_g``.

A name that the installed BasicSR already registers is left to BasicSR (BasicSR raises on a second registration);
the multi-head upgrade then renames the model type to ``MultiHeadImageRestorationModel``.
"""
from basicsr.utils.registry import MODEL_REGISTRY

from .multihead_model import MultiHeadImageRestorationModel


class ImageRestorationModel(MultiHeadImageRestorationModel):
    """NAFNet/HINet's ``ImageRestorationModel``: the multi-head model with ``train.use_grad_clip`` on by default.

    The forks clip the gradient norm to 0.01 unless ``use_grad_clip: false`` (their option files never set it), in
    the single-head and in the multi-head model alike. Takes the forks' options: ``val.grids`` with ``crop_size_h``/
    ``crop_size_w`` (or ratios, or ``crop_size``), ``val.max_minibatch``, ``val.rgb2bgr``, ``val.use_image``.
    """

    default_grad_clip = True


class ImageCleanModel(MultiHeadImageRestorationModel):
    """Restormer's ``ImageCleanModel``: the multi-head model; ``train.use_grad_clip`` off unless set (Restormer reads
    it without a default; its option files set ``true``).

    Takes Restormer's options: ``train.mixing_augs`` (``mixup``, ``mixup_beta``, ``use_identity``), progressive
    training (``datasets.train.mini_batch_sizes``, ``gt_sizes``, ``iters``, with ``gt_size`` the loader's patch size),
    ``val.window_size`` (reflect padding to a multiple), ``val.rgb2bgr``, ``val.use_image``, ``train.ema_decay``.
    """

    default_grad_clip = False


for _cls in (ImageRestorationModel, ImageCleanModel):
    if _cls.__name__ not in MODEL_REGISTRY:
        MODEL_REGISTRY.register(_cls)
