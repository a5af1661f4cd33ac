"""Shared fixtures: tiny blurred/sharp pair folders built from scikit-image's bundled photos, and option files."""
# isort: off
import basicsr_mh  # noqa: F401  (must precede basicsr imports: installs the torchvision alias)
# isort: on
import copy
import pytest
import yaml

from basicsr_mh.data.example_pairs import make_pair_folder
from basicsr_mh.metrics import RGB_PSNR_SSIM

#: Whole photos of ``skimage.data`` for the tiny pair folders: four for training, two others for validation.
#: A Restormer of the published layout (every argument of its option files), shrunk to CPU size.
TINY_RESTORMER = dict(
    type='Restormer',
    inp_channels=3,
    out_channels=3,
    dim=8,
    num_blocks=[1, 1, 1, 1],
    num_refinement_blocks=1,
    heads=[1, 1, 1, 1],
    ffn_expansion_factor=2,
    bias=False,
    LayerNorm_type='WithBias',
    dual_pixel_task=False)
PHOTOS = ('astronaut', 'coffee', 'rocket', 'chelsea', 'retina', 'immunohistochemistry')


@pytest.fixture(scope='session')
def pair_data(tmp_path_factory):
    """Train pairs (4 photos, 64x64) and validation pairs (2 other photos, odd size 45x37)."""
    root = tmp_path_factory.mktemp('pairs')
    train = make_pair_folder(str(root / 'train'), PHOTOS[:4], (64, 64), seed=0)
    val = make_pair_folder(str(root / 'val'), PHOTOS[4:], (45, 37), seed=1)
    return {'train': train, 'val': val}


def tiny_datasets(pair_data, dataset_type='PairedImageDataset', **train_extra):
    """``datasets`` options over :func:`pair_data`: 32x32 crops in batches of 2, no workers; ``train_extra`` adds to
    (or overrides) the train entry (augmentation flags, progressive-training lists)."""
    train = {
        'name': 'TinyTrain',
        'type': dataset_type,
        'dataroot_gt': pair_data['train'][0],
        'dataroot_lq': pair_data['train'][1],
        'filename_tmpl': '{}',
        'io_backend': {
            'type': 'disk'
        },
        'gt_size': 32,
        'num_worker_per_gpu': 0,
        'batch_size_per_gpu': 2,
        'dataset_enlarge_ratio': 1,
        'prefetch_mode': None
    }
    train.update(train_extra)
    val = {
        'name': 'TinyVal',
        'type': dataset_type,
        'dataroot_gt': pair_data['val'][0],
        'dataroot_lq': pair_data['val'][1],
        'io_backend': {
            'type': 'disk'
        }
    }
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
        'datasets': tiny_datasets(pair_data, use_hflip=True, use_rot=True),
        'network_g': network,
        'path': {
            'pretrain_network_g': None,
            'strict_load_g': True,
            'resume_state': None
        },
        'train': {
            'ema_decay': 0.9,
            'optim_g': {
                'type': 'Adam',
                'lr': 1e-3,
                'weight_decay': 0,
                'betas': [0.9, 0.99]
            },
            'scheduler': {
                'type': 'CosineAnnealingRestartLR',
                'periods': [total_iter],
                'restart_weights': [1],
                'eta_min': 1e-7
            },
            'total_iter': total_iter,
            'warmup_iter': -1,
            'pixel_opt': {
                'type': 'L1Loss',
                'loss_weight': 1.0,
                'reduction': 'mean'
            },
        },
        'val': {
            'val_freq': val_freq,
            'save_img': True,
            'metrics': copy.deepcopy(RGB_PSNR_SSIM),
        },
        'logger': {
            'print_freq': 5,
            'save_checkpoint_freq': 10,
            'use_tb_logger': True,
            'wandb': {
                'project': None
            }
        },
        'dist_params': {
            'backend': 'nccl',
            'port': 29500
        },
    }


def write_options(path, opt):
    """Write an option dict as YAML; returns the path as str."""
    with open(path, 'w') as f:
        yaml.safe_dump(opt, f, sort_keys=False)
    return str(path)


def in_process_training(opt, tmp_path):
    """Make an option dict of :func:`srmodel_options` buildable in this process (``build_model``): one rank, no
    distribution, every path under ``tmp_path``; returns ``opt``."""
    opt.update(is_train=True, dist=False, rank=0, world_size=1, root_path=str(tmp_path))
    opt['path'].update(
        experiments_root=str(tmp_path),
        models=str(tmp_path),
        training_states=str(tmp_path),
        log=str(tmp_path),
        visualization=str(tmp_path))
    return opt
