"""Shared fixtures: tiny blurred/sharp pair folders built from scikit-image's bundled photos, and option files."""
import os

import basicsr_mh  # noqa: F401  (must precede basicsr imports: installs the torchvision alias)
import cv2
import numpy as np
import pytest
import yaml
from skimage import data as skdata

PHOTOS = ('astronaut', 'coffee', 'rocket', 'chelsea', 'retina', 'immunohistochemistry')


def photo_bgr(name, size=None):
    """A real photo from scikit-image as uint8 BGR, optionally resized to (w, h)."""
    img = getattr(skdata, name)()
    if img.ndim == 2:
        img = np.stack([img] * 3, axis=-1)
    img = cv2.cvtColor(img[..., :3], cv2.COLOR_RGB2BGR)
    if size is not None:
        img = cv2.resize(img, size, interpolation=cv2.INTER_AREA)
    return img


def motion_blur(img, length, angle):
    """Blur with a straight line kernel of ``length`` pixels at ``angle`` degrees."""
    kernel = np.zeros((length, length), np.float32)
    kernel[length // 2, :] = 1.0
    rot = cv2.getRotationMatrix2D((length / 2 - 0.5, length / 2 - 0.5), angle, 1.0)
    kernel = cv2.warpAffine(kernel, rot, (length, length))
    kernel /= kernel.sum()
    return cv2.filter2D(img, -1, kernel, borderType=cv2.BORDER_REFLECT)


def make_pair_folder(root, names, size, seed):
    """Write ``root/{gt,lq}/<name>.png`` pairs; returns (gt_dir, lq_dir)."""
    rng = np.random.default_rng(seed)
    gt_dir, lq_dir = os.path.join(root, 'gt'), os.path.join(root, 'lq')
    os.makedirs(gt_dir, exist_ok=True)
    os.makedirs(lq_dir, exist_ok=True)
    for i, name in enumerate(names):
        img = photo_bgr(name, size)
        blurred = motion_blur(img, int(rng.integers(3, 8)), float(rng.uniform(0, 180)))
        cv2.imwrite(os.path.join(gt_dir, f'{i:03d}_{name}.png'), img)
        cv2.imwrite(os.path.join(lq_dir, f'{i:03d}_{name}.png'), blurred)
    return gt_dir, lq_dir


@pytest.fixture(scope='session')
def pair_data(tmp_path_factory):
    """Train pairs (4 photos, 64x64) and validation pairs (2 other photos, odd size 45x37)."""
    root = tmp_path_factory.mktemp('pairs')
    train = make_pair_folder(str(root / 'train'), PHOTOS[:4], (64, 64), seed=0)
    val = make_pair_folder(str(root / 'val'), PHOTOS[4:], (45, 37), seed=1)
    return {'train': train, 'val': val}


def srmodel_options(pair_data, name, num_heads=4, combine=True, total_iter=20, val_freq=10, **extra_net):
    """An upstream-BasicSR SRModel option dict (NAFNet width 8, L1Loss, CosineAnnealingRestartLR)."""
    network = dict(type='NAFNet', img_channel=3, width=8, middle_blk_num=1, enc_blk_nums=[1, 1], dec_blk_nums=[1, 1])
    if num_heads is not None:
        network.update(num_heads=num_heads, combine=combine)
    network.update(extra_net)
    return {
        'name': name,
        'model_type': 'SRModel',
        'scale': 1,
        'num_gpu': 0,
        'manual_seed': 10,
        'datasets': {
            'train': {
                'name': 'TinyTrain', 'type': 'PairedImageDataset', 'dataroot_gt': pair_data['train'][0],
                'dataroot_lq': pair_data['train'][1], 'filename_tmpl': '{}', 'io_backend': {'type': 'disk'},
                'gt_size': 32, 'use_hflip': True, 'use_rot': True, 'num_worker_per_gpu': 0, 'batch_size_per_gpu': 2,
                'dataset_enlarge_ratio': 1, 'prefetch_mode': None
            },
            'val': {
                'name': 'TinyVal', 'type': 'PairedImageDataset', 'dataroot_gt': pair_data['val'][0],
                'dataroot_lq': pair_data['val'][1], 'io_backend': {'type': 'disk'}
            },
        },
        'network_g': network,
        'path': {'pretrain_network_g': None, 'strict_load_g': True, 'resume_state': None},
        'train': {
            'ema_decay': 0.9,
            'optim_g': {'type': 'Adam', 'lr': 1e-3, 'weight_decay': 0, 'betas': [0.9, 0.99]},
            'scheduler': {'type': 'CosineAnnealingRestartLR', 'periods': [total_iter], 'restart_weights': [1],
                          'eta_min': 1e-7},
            'total_iter': total_iter, 'warmup_iter': -1,
            'pixel_opt': {'type': 'L1Loss', 'loss_weight': 1.0, 'reduction': 'mean'},
        },
        'val': {
            'val_freq': val_freq, 'save_img': True,
            'metrics': {'psnr': {'type': 'calculate_psnr', 'crop_border': 0, 'test_y_channel': False},
                        'ssim': {'type': 'calculate_ssim', 'crop_border': 0, 'test_y_channel': False}},
        },
        'logger': {'print_freq': 5, 'save_checkpoint_freq': 10, 'use_tb_logger': True, 'wandb': {'project': None}},
        'dist_params': {'backend': 'nccl', 'port': 29500},
    }


def write_options(path, opt):
    """Write an option dict as YAML; returns the path as str."""
    with open(path, 'w') as f:
        yaml.safe_dump(opt, f, sort_keys=False)
    return str(path)
