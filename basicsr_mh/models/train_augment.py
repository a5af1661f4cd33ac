"""Restormer's batch-level training augmentations: progressive patch/batch sizes and mixup (``mixing_augs``).

Both act on a training batch just before the forward pass (the model calls them from ``optimize_parameters``), so
any training loop (BasicSR's, ours) gets them without Restormer-specific code. They draw from Python's ``random``
and torch's generator in the same order as Restormer's ``train.py`` and ``Mixing_Augment``.
"""
import random
import torch


class ProgressiveTraining:
    """Restormer's progressive learning: stage ``s`` trains on ``mini_batch_sizes[s]`` samples of
    ``gt_sizes[s]``-pixel patches for ``iters[s]`` iterations.

    Args:
        mini_batch_sizes (list[int]): batch size per GPU of each stage (``<= batch_size``).
        gt_sizes (list[int]): ground-truth patch size of each stage (``<= gt_size``).
        iters (list[int]): iterations of each stage; iterations past their sum stay in the last stage.
        gt_size (int | None): the loader's patch size (``datasets.train.gt_size``), for the checks.
        batch_size (int | None): the loader's batch size (``datasets.train.batch_size_per_gpu``), for the checks.
        scale (int): lq patches are ``gt_sizes[s] // scale``.

    Iteration ``i`` (1-based) belongs to the first stage ``s`` with ``i <= iters[0] + ... + iters[s]``. A batch
    ``(B, C, h, w)`` is cut to ``mini_batch_sizes[s]`` random samples (``random.sample``) and to a random
    ``gt_sizes[s]`` crop at the same place in lq and gt.
    """

    def __init__(self, mini_batch_sizes, gt_sizes, iters, gt_size=None, batch_size=None, scale=1):
        lists = {'mini_batch_sizes': mini_batch_sizes, 'gt_sizes': gt_sizes, 'iters': iters}
        for key, values in lists.items():
            if not isinstance(values, (list, tuple)) or not values or any(
                    isinstance(v, bool) or not isinstance(v, int) or v <= 0 for v in values):
                raise ValueError(f'datasets.train.{key} must be a non-empty list of positive integers, got {values!r}.')
        if not len(mini_batch_sizes) == len(gt_sizes) == len(iters):
            raise ValueError('datasets.train.mini_batch_sizes, gt_sizes and iters must have one entry per stage; got '
                             f'{len(mini_batch_sizes)}, {len(gt_sizes)} and {len(iters)} entries.')
        if gt_size is not None and max(gt_sizes) > gt_size:
            raise ValueError(f'datasets.train.gt_sizes {list(gt_sizes)} exceed gt_size {gt_size}, the size the loader '
                             'crops. Fix: set gt_size to the largest stage size.')
        if batch_size is not None and max(mini_batch_sizes) > batch_size:
            raise ValueError(f'datasets.train.mini_batch_sizes {list(mini_batch_sizes)} exceed batch_size_per_gpu '
                             f'{batch_size}. Fix: set batch_size_per_gpu to the largest mini-batch size.')
        self.mini_batch_sizes = list(mini_batch_sizes)
        self.gt_sizes = list(gt_sizes)
        self.iters = list(iters)
        self.ends = [sum(iters[:s + 1]) for s in range(len(iters))]
        self.scale = scale

    @classmethod
    def from_options(cls, dataset_opt, scale=1):
        """Build from ``datasets.train`` (keys ``mini_batch_sizes``, ``gt_sizes``, ``iters``); None without them."""
        dataset_opt = dataset_opt or {}
        keys = ('mini_batch_sizes', 'gt_sizes', 'iters')
        given = [k for k in keys if dataset_opt.get(k) is not None]
        if not given:
            return None
        if len(given) != len(keys):
            missing = [k for k in keys if k not in given]
            raise ValueError(f'datasets.train sets {given} for progressive training but not {missing}. Fix: set all '
                             'three (one entry per stage), or none.')
        return cls(dataset_opt['mini_batch_sizes'], dataset_opt['gt_sizes'], dataset_opt['iters'],
                   dataset_opt.get('gt_size'), dataset_opt.get('batch_size_per_gpu'), scale)

    def stage(self, current_iter):
        """Stage index of iteration ``current_iter`` (1-based)."""
        return next((s for s, end in enumerate(self.ends) if current_iter <= end), len(self.ends) - 1)

    def __call__(self, lq, gt, current_iter):
        """Cut a batch for ``current_iter``: returns ``(lq, gt)`` with the stage's batch and patch size."""
        s = self.stage(current_iter)
        mini_batch, patch = self.mini_batch_sizes[s], self.gt_sizes[s]
        if mini_batch < lq.shape[0]:
            indices = random.sample(range(0, lq.shape[0]), k=mini_batch)
            lq, gt = lq[indices], gt[indices]
        h, w = lq.shape[-2:]
        p = patch // self.scale
        if p < h or p < w:
            top = int((h - min(p, h)) * random.random())
            left = int((w - min(p, w)) * random.random())
            lq = lq[..., top:top + p, left:left + p]
            s_ = self.scale
            gt = gt[..., top * s_:(top + p) * s_, left * s_:(left + p) * s_]
        return lq, gt


class MixingAugment:
    """Restormer's ``Mixing_Augment``: mixup of whole training pairs.

    Args:
        mixup_beta (float): ``lam ~ Beta(mixup_beta, mixup_beta)``. Default: 1.2.
        use_identity (bool): with probability 1/2 leave the batch unchanged (``random.randint(0, 1)``).
        device (torch.device): where the permutation lives.

    ``gt, lq -> lam * gt + (1 - lam) * gt[perm], lam * lq + (1 - lam) * lq[perm]`` with one ``lam`` and one random
    permutation ``perm`` of the batch for both, so pairs stay aligned.
    """

    def __init__(self, mixup_beta=1.2, use_identity=False, device='cpu'):
        self.dist = torch.distributions.beta.Beta(torch.tensor([float(mixup_beta)]), torch.tensor([float(mixup_beta)]))
        self.device = device
        self.use_identity = use_identity
        self.augments = [self.mixup]

    @classmethod
    def from_options(cls, mixing_opt, device):
        """Build from ``train.mixing_augs`` (``mixup``, ``mixup_beta``, ``use_identity``); None unless ``mixup``."""
        if not mixing_opt or not mixing_opt.get('mixup', False):
            return None
        return cls(mixing_opt.get('mixup_beta', 1.2), mixing_opt.get('use_identity', False), device)

    def mixup(self, target, input_):
        """Mix each pair with a randomly chosen other pair of the batch."""
        lam = self.dist.rsample((1, 1)).item()
        r_index = torch.randperm(target.size(0)).to(self.device)
        target = lam * target + (1 - lam) * target[r_index, :]
        input_ = lam * input_ + (1 - lam) * input_[r_index, :]
        return target, input_

    def __call__(self, target, input_):
        """``(gt, lq) -> (gt, lq)`` augmented (or unchanged when the identity is drawn)."""
        if self.use_identity:
            augment = random.randint(0, len(self.augments))
            if augment < len(self.augments):
                target, input_ = self.augments[augment](target, input_)
        else:
            augment = random.randint(0, len(self.augments) - 1)
            target, input_ = self.augments[augment](target, input_)
        return target, input_
