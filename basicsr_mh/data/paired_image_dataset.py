"""Restormer's ``Dataset_PairedImage``: BasicSR's paired dataset with padding and Restormer's geometric augmentations.

Registered in BasicSR's DATASET_REGISTRY (unless the installed BasicSR registers the name itself).
"""
import cv2
import numpy as np
import random
from basicsr.data.paired_image_dataset import PairedImageDataset
from basicsr.data.transforms import augment, paired_random_crop
from basicsr.utils import FileClient, bgr2ycbcr, imfrombytes, img2tensor
from basicsr.utils.registry import DATASET_REGISTRY
from torchvision.transforms.functional import normalize

from basicsr_mh import compat  # noqa: F401  (installs the torchvision alias before basicsr is imported)


def geometric_transform(img, mode):
    """One of the 8 flips/rotations of Restormer's ``data_augmentation`` on an HWC array.

    Args:
        img (ndarray): (H, W, C).
        mode (int): 0 identity, 1 flip up-down, 2 rot90 (counter-clockwise), 3 rot90 + flip, 4 rot180,
            5 rot180 + flip, 6 rot270, 7 rot270 + flip.

    Returns:
        ndarray: a contiguous copy.
    """
    if not 0 <= mode <= 7:
        raise ValueError(f'geometric_transform: mode must be in 0..7, got {mode}.')
    out = np.rot90(img, k=mode // 2)
    if mode % 2:
        out = np.flipud(out)
    return out.copy()


def random_geometric_augment(*imgs):
    """Restormer's ``random_augmentation``: the same random one of 8 transforms (``random.randint(0, 7)``) for all."""
    mode = random.randint(0, 7)
    return [geometric_transform(img, mode) for img in imgs]


def pad_pair(img_gt, img_lq, gt_size, scale=1):
    """Reflect-pad (``cv2.BORDER_REFLECT``, bottom/right) a pair smaller than the patch: gt to ``gt_size``, lq to
    ``gt_size // scale`` (Restormer's ``padding``); the pair is returned as is when it is large enough."""
    h_pad, w_pad = max(0, gt_size - img_gt.shape[0]), max(0, gt_size - img_gt.shape[1])
    if h_pad == 0 and w_pad == 0:
        return img_gt, img_lq
    lq_h_pad = max(0, gt_size // scale - img_lq.shape[0])
    lq_w_pad = max(0, gt_size // scale - img_lq.shape[1])
    padded = []
    for img, (hp, wp) in ((img_gt, (h_pad, w_pad)), (img_lq, (lq_h_pad, lq_w_pad))):
        out = cv2.copyMakeBorder(img, 0, hp, 0, wp, cv2.BORDER_REFLECT)
        padded.append(out[..., None] if out.ndim == 2 else out)
    return padded[0], padded[1]


class Dataset_PairedImage(PairedImageDataset):  # noqa: N801 (the name option files use)
    """Paired lq/gt images for restoration, as Restormer's ``Dataset_PairedImage``.

    Options are BasicSR's ``PairedImageDataset``'s (``dataroot_gt``, ``dataroot_lq``, ``io_backend`` disk or lmdb,
    ``meta_info_file``, ``filename_tmpl``, ``gt_size``, ``mean``/``std``, ``color: y``), plus:

    - ``geometric_augs`` (bool, default false): in training, one random flip/rotation of 8 (Restormer's
      ``random_augmentation``), the same for lq and gt.
    - ``use_hflip`` / ``use_rot`` (bool, default false): BasicSR's ``augment`` as well (not needed with
      ``geometric_augs``).

    In training, a pair smaller than ``gt_size`` is reflect-padded first (Restormer), then cropped at the same place
    (``gt_size`` for gt, ``gt_size // scale`` for lq). Returns ``{'lq': (C, h, w), 'gt': (C, H, W), 'lq_path',
    'gt_path'}``, float32 RGB in [0, 1]. Keys of progressive training (``mini_batch_sizes``, ``gt_sizes``, ``iters``)
    are read by the model, not here: the loader always yields ``gt_size`` patches.
    """

    def __init__(self, opt):
        if opt.get('phase') == 'train' and not opt.get('gt_size'):
            raise ValueError(f'datasets.train.gt_size is missing: Dataset_PairedImage ({opt.get("name")}) needs the '
                             'training patch size (with progressive training: the largest gt_sizes entry).')
        super().__init__(opt)
        self.geometric_augs = bool(opt.get('geometric_augs', False))

    def __getitem__(self, index):
        if self.file_client is None:
            self.file_client = FileClient(self.io_backend_opt.pop('type'), **self.io_backend_opt)
        scale = self.opt.get('scale', 1)
        index = index % len(self.paths)
        gt_path = self.paths[index]['gt_path']
        img_gt = imfrombytes(self.file_client.get(gt_path, 'gt'), float32=True)
        lq_path = self.paths[index]['lq_path']
        img_lq = imfrombytes(self.file_client.get(lq_path, 'lq'), float32=True)

        if self.opt['phase'] == 'train':
            gt_size = self.opt['gt_size']
            img_gt, img_lq = pad_pair(img_gt, img_lq, gt_size, scale)
            img_gt, img_lq = paired_random_crop(img_gt, img_lq, gt_size, scale, gt_path)
            if self.geometric_augs:
                img_gt, img_lq = random_geometric_augment(img_gt, img_lq)
            if self.opt.get('use_hflip', False) or self.opt.get('use_rot', False):
                img_gt, img_lq = augment([img_gt, img_lq], self.opt.get('use_hflip', False),
                                         self.opt.get('use_rot', False))

        if self.opt.get('color') == 'y':
            img_gt = bgr2ycbcr(img_gt, y_only=True)[..., None]
            img_lq = bgr2ycbcr(img_lq, y_only=True)[..., None]
        if self.opt['phase'] != 'train':
            img_gt = img_gt[0:img_lq.shape[0] * scale, 0:img_lq.shape[1] * scale, :]

        img_gt, img_lq = img2tensor([img_gt, img_lq], bgr2rgb=True, float32=True)
        if self.mean is not None or self.std is not None:
            normalize(img_lq, self.mean, self.std, inplace=True)
            normalize(img_gt, self.mean, self.std, inplace=True)
        return {'lq': img_lq, 'gt': img_gt, 'lq_path': lq_path, 'gt_path': gt_path}


if 'Dataset_PairedImage' not in DATASET_REGISTRY:
    DATASET_REGISTRY.register(Dataset_PairedImage)
