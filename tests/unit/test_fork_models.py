"""NAFNet/HINet's ImageRestorationModel and Restormer's ImageCleanModel: grids tiling, progressive training, mixup,
fork defaults and option upgrades, and `basicsr train` end to end on fork-style option files (single and multi-head).
"""
import math
import pytest
import random
import torch
from basicsr.data import build_dataset
from basicsr.models import build_model
from basicsr.utils.registry import ARCH_REGISTRY, MODEL_REGISTRY
from conftest import TINY_RESTORMER, tiny_datasets
from torch.utils.data import DataLoader

from basicsr_mh.inference import GridTiling, InferenceRunner, grid_crop_size, grid_positions
from basicsr_mh.models import ImageCleanModel, ImageRestorationModel, MultiHeadImageRestorationModel
from basicsr_mh.models.train_augment import MixingAugment, ProgressiveTraining
from basicsr_mh.options import upgrade_options

K, K_EXT = 4, 10
METRICS = {
    'psnr': {
        'type': 'calculate_psnr',
        'crop_border': 0,
        'test_y_channel': False
    },
    'ssim': {
        'type': 'calculate_ssim',
        'crop_border': 0,
        'test_y_channel': False
    }
}


def _nafnet(heads=False):
    net = dict(type='NAFNet', img_channel=3, width=8, middle_blk_num=1, enc_blk_nums=[1, 1], dec_blk_nums=[1, 1])
    if heads:
        net.update(num_heads=K, combine=True)
    return net


def _model_opt(model_type='ImageRestorationModel', heads=False, is_train=False, val=None, train=None, datasets=None):
    """In-process option dict (what parse_options produces) for a tiny NAFNet."""
    opt = {
        'name': 'fork',
        'model_type': model_type,
        'scale': 1,
        'num_gpu': 0,
        'is_train': is_train,
        'dist': False,
        'rank': 0,
        'world_size': 1,
        'network_g': _nafnet(heads),
        'path': {
            'pretrain_network_g': None
        },
        'datasets': datasets or {},
        'val': {
            'save_img': False,
            'metrics': dict(METRICS),
            **(val or {})
        }
    }
    if is_train:
        opt['train'] = {
            'optim_g': {
                'type': 'AdamW',
                'lr': 1e-3
            },
            'total_iter': 20,
            'scheduler': {
                'type': 'TrueCosineAnnealingLR',
                'T_max': 20,
                'eta_min': 1e-7
            },
            'pixel_opt': {
                'type': 'PSNRLoss',
                'loss_weight': 1,
                'reduction': 'mean'
            },
            **(train or {})
        }
    return opt


def _build(opt, state=None):
    torch.manual_seed(0)
    model = build_model(opt)
    if state is not None:
        model.net_g.load_state_dict(state)
    return model


@pytest.fixture(scope='module', autouse=True)
def one_thread():
    """Tiny networks run fastest on one thread (and do not suffer from a busy second core)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope='module')
def val_loader(pair_data):
    ds = build_dataset({
        'name': 'TinyVal',
        'type': 'Dataset_PairedImage',
        'dataroot_gt': pair_data['val'][0],
        'dataroot_lq': pair_data['val'][1],
        'io_backend': {
            'type': 'disk'
        },
        'phase': 'val',
        'scale': 1
    })
    return DataLoader(ds, batch_size=1)


# ---------------------------------------------------------------------------------------------- registration
def test_fork_model_types_are_multihead_models():
    for name, cls in (('ImageRestorationModel', ImageRestorationModel), ('ImageCleanModel', ImageCleanModel)):
        assert MODEL_REGISTRY.get(name) is cls
        assert issubclass(cls, MultiHeadImageRestorationModel)
    assert ImageRestorationModel.default_grad_clip and not ImageCleanModel.default_grad_clip
    assert MODEL_REGISTRY.get('SRModel').__module__.startswith('basicsr.')  # upstream names untouched


def test_upgrade_keeps_fork_model_types_with_one_log_line():
    for model_type in ('ImageRestorationModel', 'ImageCleanModel'):
        opt = _model_opt(model_type, heads=True, is_train=True)
        notes = []
        upgrade_options(opt, notes=notes)
        upgrade_options(opt, notes=notes)  # idempotent, e.g. again in the model's __init__
        assert opt['model_type'] == model_type and opt['network_g']['type'] == 'MultiHeadArch'
        assert sum(f'model_type {model_type} upgraded' in n for n in notes) == 1
        single = _model_opt(model_type, heads=False, is_train=True)
        notes = []
        upgrade_options(single, notes=notes)
        assert single['model_type'] == model_type and not any('model_type' in n for n in notes)


def test_nafnet_use_flip_is_read_as_use_hflip():
    opt = _model_opt(datasets={'train': {'type': 'PairedImageDataset', 'use_flip': True, 'use_rot': True}})
    notes = []
    upgrade_options(opt, notes=notes)
    upgrade_options(opt, notes=notes)
    assert opt['datasets']['train']['use_hflip'] is True
    assert sum('use_flip' in n for n in notes) == 1


def test_grad_clip_defaults_and_bad_scheduler():
    assert _build(_model_opt('ImageRestorationModel', is_train=True)).use_grad_clip is True
    assert _build(_model_opt('ImageRestorationModel', is_train=True, train={'use_grad_clip': False})).use_grad_clip \
        is False
    assert _build(_model_opt('ImageCleanModel', heads=True, is_train=True)).use_grad_clip is False
    with pytest.raises(ValueError, match='"CosineAnnealing" is not a known scheduler. Known types: .*LinearLR'):
        _build(_model_opt(is_train=True, train={'scheduler': {'type': 'CosineAnnealing'}}))
    with pytest.raises(ValueError, match='val.grids is true but no tile size'):
        _build(_model_opt(val={'grids': True}))


# ---------------------------------------------------------------------------------------------- grids tiling
def _fork_positions(size, crop):
    """The forks' grids() loop along one axis (scale 1), transcribed."""
    num = (size - 1) // crop + 1
    step = crop if num == 1 else math.ceil((size - crop) / (num - 1) - 1e-8)
    out, i, last = [], 0, False
    while i < size and not last:
        if i + crop >= size:
            i, last = size - crop, True
        out.append(i)
        i += step
    return out


def test_grid_positions_follow_the_forks():
    assert grid_positions(45, 32) == [0, 13]
    assert grid_positions(37, 16) == [0, 11, 21]
    assert grid_positions(64, 32) == [0, 32]
    for size in range(8, 70, 7):
        for crop in range(4, size + 1, 5):
            assert grid_positions(size, crop) == _fork_positions(size, crop)
    assert grid_crop_size({'crop_size_h': 32, 'crop_size_w': 20}, None, 45, 37) == (32, 20)
    assert grid_crop_size({'crop_size_h_ratio': 0.5, 'crop_size_w_ratio': 1}, None, 45, 37) == (22, 37)
    assert grid_crop_size({'crop_size': 64}, None, 45, 37) == (45, 37)  # clamped to the image
    assert grid_crop_size({}, {'gt_size': 16}, 45, 37) == (16, 16)


class _PixelwiseHeads(torch.nn.Module):
    """Three heads ``x * (k + 1)``: per pixel, so tiling must give back the whole-image result."""

    def __init__(self):
        super().__init__()
        self.sizes = []

    def forward(self, x):
        self.sizes.append(tuple(x.shape))
        return torch.stack([x * (k + 1) for k in range(3)], dim=1)


def test_grid_tiling_is_exact_for_a_pixelwise_net():
    lq = torch.rand(2, 3, 45, 37)
    tiling = GridTiling({'crop_size_h': 20, 'crop_size_w': 16}, None)
    assert len(tiling.windows(45, 37)) == 3 * 3
    net = _PixelwiseHeads()
    merged = InferenceRunner(net, tiling=tiling)(lq)
    assert net.sizes == [(9 * 2, 3, 20, 16)]  # every tile of every sample in one forward
    assert torch.allclose(merged, torch.stack([lq * (k + 1) for k in range(3)], dim=1), atol=1e-6)
    net.sizes.clear()
    InferenceRunner(net, tiling=tiling, max_minibatch=4)(lq)
    assert net.sizes == [(4, 3, 20, 16)] * 4 + [(2, 3, 20, 16)]


def _zero_output_layer(model, head_bias=True):
    """Make the net pixelwise: ending conv weight 0 (output = input + bias); distinct biases per head."""
    bare = model.get_bare_model(model.net_g)
    ending = bare.backbone.ending if hasattr(bare, 'backbone') else bare.ending
    with torch.no_grad():
        ending.weight.zero_()
        if head_bias:
            gen = torch.Generator().manual_seed(1)
            ending.bias.copy_(0.16 * torch.rand(ending.bias.numel(), generator=gen) - 0.08)


@pytest.mark.parametrize('heads', [False, True])
def test_grids_validation_equals_whole_image(val_loader, heads):
    whole = _build(_model_opt(heads=heads))
    whole.validation(val_loader, 0, None, False)
    expected = dict(whole.metric_results)
    state = whole.net_g.state_dict()
    assert ('psnr_overall' in expected) == heads and ('psnr_h9' in expected) == heads
    assert len(expected) == (2 + 2 * (2 + K_EXT) + 1 if heads else 2)
    # one tile covering the image: the same numbers for any network
    one_tile = _build(_model_opt(heads=heads, val={'grids': True, 'crop_size': 64}), state)
    one_tile.validation(val_loader, 0, None, False)
    assert one_tile.metric_results == pytest.approx(expected, abs=1e-6)
    # overlapping tiles (3 x 3 per image, merged per head) on a pixelwise net: the same numbers
    _zero_output_layer(whole)
    whole.validation(val_loader, 0, None, False)
    expected = dict(whole.metric_results)
    state = whole.net_g.state_dict()
    tiled = _build(
        _model_opt(heads=heads, val={
            'grids': True,
            'crop_size_h': 20,
            'crop_size_w': 16,
            'max_minibatch': 4
        }), state)
    tiled.validation(val_loader, 0, None, False)
    assert tiled.metric_results == pytest.approx(expected, abs=1e-6)
    if heads:
        assert len({round(v, 6) for k, v in expected.items() if k.startswith('psnr_h')}) == K_EXT


def test_max_minibatch_window_size_and_float_psnr(val_loader):
    model = _build(_model_opt(heads=True, val={'grids': True, 'crop_size': 16}))
    batch = next(iter(val_loader))
    model.feed_data(batch, is_val=True)
    model.test()
    full = model.output
    model.opt['val'].update(max_minibatch=3, window_size=8)
    model.test()
    assert model.output.shape == (1, K_EXT, 3, 37, 45)
    assert torch.allclose(model.output, full, atol=1e-5)
    model.opt['val'].update(grids=False, use_image=False)
    model.validation(val_loader, 0, None, False)
    float_psnr = model.metric_results['psnr_h3']
    expected = []
    for batch in val_loader:
        model.feed_data(batch, is_val=True)
        model.test()
        mse = (model.output[0, 3].double() - model.gt[0].double()).pow(2).mean()
        expected.append(float(10 * torch.log10(1 / mse)))
    assert float_psnr == pytest.approx(sum(expected) / len(expected), abs=1e-6)  # unclamped, unquantized
    model.validation(val_loader, 0, None, False, use_image=True)  # the forks' argument overrides val.use_image
    assert abs(model.metric_results['psnr_h3'] - float_psnr) > 1e-3


# ---------------------------------------------------------------------------------------------- progressive training
def _restormer_cut(lq, gt, current_iter, iters, batch_size, mini_batch_sizes, gt_size, gt_sizes):
    """Restormer's train.py progressive block (scale 1), transcribed."""
    groups = [sum(iters[:i + 1]) for i in range(len(iters))]
    j = [i for i, g in enumerate(groups) if current_iter <= g]
    bs_j = j[0] if j else len(groups) - 1
    mini_gt_size, mini_batch_size = gt_sizes[bs_j], mini_batch_sizes[bs_j]
    if mini_batch_size < batch_size:
        indices = random.sample(range(0, batch_size), k=mini_batch_size)
        lq, gt = lq[indices], gt[indices]
    if mini_gt_size < gt_size:
        x0 = int((gt_size - mini_gt_size) * random.random())
        y0 = int((gt_size - mini_gt_size) * random.random())
        x1, y1 = x0 + mini_gt_size, y0 + mini_gt_size
        lq, gt = lq[:, :, x0:x1, y0:y1], gt[:, :, x0:x1, y0:y1]
    return lq, gt


def test_progressive_schedule_matches_restormer():
    cfg = dict(iters=[3, 2, 4], batch_size=4, mini_batch_sizes=[4, 2, 1], gt_size=32, gt_sizes=[16, 24, 32])
    prog = ProgressiveTraining(cfg['mini_batch_sizes'], cfg['gt_sizes'], cfg['iters'], cfg['gt_size'],
                               cfg['batch_size'])
    assert [prog.stage(i) for i in range(1, 12)] == [0, 0, 0, 1, 1, 2, 2, 2, 2, 2, 2]
    gt = torch.rand(4, 3, 32, 32)
    lq = gt * 0.5
    for current_iter in range(1, 12):
        random.seed(current_iter)
        ours = prog(lq, gt, current_iter)
        random.seed(current_iter)
        ref = _restormer_cut(lq, gt, current_iter, **cfg)
        assert torch.equal(ours[0], ref[0]) and torch.equal(ours[1], ref[1])
        stage = prog.stage(current_iter)
        assert ours[1].shape == (cfg['mini_batch_sizes'][stage], 3, cfg['gt_sizes'][stage], cfg['gt_sizes'][stage])
        assert torch.equal(ours[0], ours[1] * 0.5)  # the same samples and place in lq and gt
    with pytest.raises(ValueError, match='one entry per stage'):
        ProgressiveTraining([2, 1], [16], [3, 3])
    with pytest.raises(ValueError, match='exceed gt_size'):
        ProgressiveTraining([2], [48], [3], gt_size=32)
    with pytest.raises(ValueError, match='but not'):
        ProgressiveTraining.from_options({'mini_batch_sizes': [2], 'iters': [3]})


def test_model_cuts_batches_at_the_right_iterations(caplog):
    datasets = {
        'train': {
            'gt_size': 32,
            'batch_size_per_gpu': 4,
            'mini_batch_sizes': [4, 2],
            'gt_sizes': [16, 32],
            'iters': [2, 3]
        }
    }
    model = _build(_model_opt('ImageCleanModel', heads=True, is_train=True, datasets=datasets))
    shapes = []
    caplog.set_level('INFO', logger='basicsr')
    for current_iter in range(1, 7):
        model.update_learning_rate(current_iter)
        gt = torch.rand(4, 3, 32, 32)
        model.feed_data({'lq': gt.clone(), 'gt': gt})
        model.optimize_parameters(current_iter)
        shapes.append(tuple(model.lq.shape))
        assert torch.equal(model.lq, model.gt)
    assert shapes == [(4, 3, 16, 16)] * 2 + [(2, 3, 32, 32)] * 4
    text = caplog.text
    assert 'stage 1/2 from iter 1: patch size 16, batch size 4' in text
    assert 'stage 2/2 from iter 3: patch size 32, batch size 2' in text


# ---------------------------------------------------------------------------------------------- mixup
def _mix(aug, seed, gt, lq):
    random.seed(seed)
    torch.manual_seed(seed)
    return aug(gt, lq)


def test_mixing_augs_deterministic_and_paired():
    gt = torch.rand(8, 3, 8, 8)
    lq = gt * 0.5
    aug = MixingAugment.from_options({'mixup': True, 'mixup_beta': 1.2, 'use_identity': False}, 'cpu')
    mixed_gt, mixed_lq = _mix(aug, 3, gt, lq)
    again = _mix(aug, 3, gt, lq)
    assert torch.equal(mixed_gt, again[0]) and torch.equal(mixed_lq, again[1])
    assert not torch.allclose(mixed_gt, gt)
    assert torch.allclose(mixed_lq, mixed_gt * 0.5, atol=1e-6)  # one lam and one permutation for both
    assert not torch.equal(_mix(aug, 4, gt, lq)[0], mixed_gt)
    assert MixingAugment.from_options({'mixup': False, 'mixup_beta': 1.2}, 'cpu') is None
    ident = MixingAugment(1.2, use_identity=True)
    unchanged = [torch.equal(_mix(ident, s, gt, lq)[0], gt) for s in range(20)]
    assert any(unchanged) and not all(unchanged)


def test_model_applies_mixup_in_training_only(val_loader):
    model = _build(_model_opt('ImageCleanModel', is_train=True, train={'mixing_augs': {'mixup': True}}))
    gt = torch.rand(4, 3, 16, 16)
    model.feed_data({'lq': gt * 0.5, 'gt': gt})
    random.seed(0)
    torch.manual_seed(0)
    model.optimize_parameters(1)
    assert not torch.allclose(model.gt, gt) and torch.allclose(model.lq, model.gt * 0.5, atol=1e-6)
    model.feed_data({'lq': gt * 0.5, 'gt': gt}, is_val=True)
    assert torch.equal(model.gt, gt)


# ---------------------------------------------------------------------------------------------- end to end
def _base_options(pair_data, name, heads, total_iter=10):
    return {
        'name': name,
        'scale': 1,
        'num_gpu': 0,
        'manual_seed': 42,
        'network_g': _nafnet(heads),
        'path': {
            'pretrain_network_g': None,
            'strict_load_g': True,
            'resume_state': None
        },
        'logger': {
            'print_freq': 5,
            'save_checkpoint_freq': total_iter,
            'use_tb_logger': False,
            'wandb': {
                'project': None,
                'resume_id': None
            }
        },
        'dist_params': {
            'backend': 'nccl',
            'port': 29500
        },
    }


def nafnet_fork_options(pair_data, name, heads):
    """NAFNet-width32.yml in miniature: ImageRestorationModel, PSNRLoss, AdamW, TrueCosineAnnealingLR, grids."""
    opt = _base_options(pair_data, name, heads)
    opt.update({
        'model_type': 'ImageRestorationModel',
        'datasets': tiny_datasets(pair_data, use_flip=True, use_rot=True, use_shuffle=True),
        'train': {
            'optim_g': {
                'type': 'AdamW',
                'lr': 1e-3,
                'weight_decay': 1e-3,
                'betas': [0.9, 0.9]
            },
            'scheduler': {
                'type': 'TrueCosineAnnealingLR',
                'T_max': 10,
                'eta_min': 1e-7
            },
            'total_iter': 10,
            'warmup_iter': -1,
            'pixel_opt': {
                'type': 'PSNRLoss',
                'loss_weight': 1,
                'reduction': 'mean'
            }
        },
        'val': {
            'val_freq': 10,
            'save_img': False,
            'grids': True,
            'crop_size_h': 32,
            'crop_size_w': 32,
            'max_minibatch': 2,
            'metrics': dict(METRICS)
        },
    })
    return opt


def _restormer_net(heads):
    if 'Restormer' not in ARCH_REGISTRY:
        return _nafnet(heads)
    net = dict(TINY_RESTORMER)
    if heads:
        net.update(num_heads=K, combine=True)
    return net


def restormer_fork_options(pair_data, name, heads):
    """Deblurring_Restormer.yml in miniature: ImageCleanModel, Dataset_PairedImage, progressive training, mixup."""
    opt = _base_options(pair_data, name, heads)
    opt.update({
        'model_type':
        'ImageCleanModel',
        'network_g':
        _restormer_net(heads),
        'datasets':
        tiny_datasets(
            pair_data,
            'Dataset_PairedImage',
            geometric_augs=True,
            use_shuffle=True,
            mini_batch_sizes=[2, 1],
            iters=[4, 6],
            gt_sizes=[16, 32]),
        'train': {
            'total_iter': 10,
            'warmup_iter': -1,
            'use_grad_clip': True,
            'scheduler': {
                'type': 'CosineAnnealingRestartCyclicLR',
                'periods': [4, 6],
                'restart_weights': [1, 1],
                'eta_mins': [1e-3, 1e-6]
            },
            'mixing_augs': {
                'mixup': True,
                'mixup_beta': 1.2,
                'use_identity': True
            },
            'optim_g': {
                'type': 'AdamW',
                'lr': 1e-3,
                'weight_decay': 1e-4,
                'betas': [0.9, 0.999]
            },
            'pixel_opt': {
                'type': 'L1Loss',
                'loss_weight': 1,
                'reduction': 'mean'
            }
        },
        'val': {
            'window_size': 8,
            'val_freq': 10,
            'save_img': False,
            'rgb2bgr': True,
            'use_image': True,
            'max_minibatch': 8,
            'metrics': dict(METRICS)
        },
    })
    return opt
