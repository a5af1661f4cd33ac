"""Published option-file layouts of six backbones (BasicSR's EDSR Mx4, MSRResNet x4, SwinIR SRx2; NAFNet, HINet and
Restormer GoPro), sizes shrunk, with the two keys added as a user would (after the backbone's keys, or right after
``type``; SwinIR in a ``multihead:`` block because it has its own ``num_heads``): each trains to a validation whose
metrics keep the relations of Eq. 7 (best single head <= oracle; worst head <= every head)."""
import cv2
import json
import pytest
import torch
import yaml
from conftest import TINY_RESTORMER

from basicsr_mh.data.example_pairs import photo_bgr
from basicsr_mh.train import train_pipeline

pytestmark = pytest.mark.slow  # trainings
K_EXT = 10
HEAD_KEYS = {'num_heads': 4, 'combine': True}

#: model_type, scale, network_g as published (type first), sizes shrunk; val extras.
LAYOUTS = {
    'EDSR': ('SRModel', 4,
             dict(
                 type='EDSR',
                 num_in_ch=3,
                 num_out_ch=3,
                 num_feat=8,
                 num_block=1,
                 upscale=4,
                 res_scale=1,
                 img_range=255.,
                 rgb_mean=[0.4488, 0.4371, 0.4040])),
    'MSRResNet': ('SRModel', 4, dict(type='MSRResNet', num_in_ch=3, num_out_ch=3, num_feat=8, num_block=1, upscale=4)),
    'SwinIR': ('SwinIRModel', 2,
               dict(
                   type='SwinIR',
                   upscale=2,
                   in_chans=3,
                   img_size=16,
                   window_size=4,
                   img_range=1.,
                   depths=[1],
                   embed_dim=12,
                   num_heads=[2],
                   mlp_ratio=2,
                   upsampler='pixelshuffle',
                   resi_connection='1conv')),
    'NAFNet': ('ImageRestorationModel', 1,
               dict(type='NAFNet', width=8, enc_blk_nums=[1, 1], middle_blk_num=1, dec_blk_nums=[1, 1])),
    'HINet': ('ImageRestorationModel', 1, dict(type='HINet', wf=8, hin_position_left=0, hin_position_right=2)),
    'Restormer': ('ImageCleanModel', 1, TINY_RESTORMER),
}


def _with_keys(network, where):
    """network_g with our keys added ``after`` the backbone's, ``first`` (right after type) or as a ``block``."""
    items = list(network.items())
    if where == 'block':
        return dict(items + [('multihead', dict(HEAD_KEYS))])
    if where == 'first':
        return dict(items[:1] + list(HEAD_KEYS.items()) + items[1:])
    return dict(items + list(HEAD_KEYS.items()))


def _pairs(root, scale, size, names):
    """gt (size x size) and lq (size / scale, bicubic; blurred when scale is 1) folders of real photos."""
    gt_dir, lq_dir = root / 'gt', root / 'lq'
    gt_dir.mkdir(parents=True)
    lq_dir.mkdir()
    for i, name in enumerate(names):
        gt = photo_bgr(name, (size, size))
        lq = cv2.resize(gt, (size // scale, size // scale), interpolation=cv2.INTER_CUBIC) if scale > 1 else \
            cv2.blur(gt, (5, 1))
        cv2.imwrite(str(gt_dir / f'{i}.png'), gt)
        cv2.imwrite(str(lq_dir / f'{i}.png'), lq)
    return str(gt_dir), str(lq_dir)


def _options(tmp_path, name, where):
    model_type, scale, network = LAYOUTS[name]
    train = _pairs(tmp_path / 'train', scale, 64, ('astronaut', 'coffee'))
    val = _pairs(tmp_path / 'val', scale, 32, ('rocket', ))
    dataset = dict(io_backend=dict(type='disk'), filename_tmpl='{}')
    return {
        'name': f'{name}_{where}',
        'model_type': model_type,
        'scale': scale,
        'num_gpu': 0,
        'manual_seed': 0,
        'datasets': {
            'train':
            dict(
                dataset,
                name='Train',
                type='PairedImageDataset',
                dataroot_gt=train[0],
                dataroot_lq=train[1],
                gt_size=32,
                use_hflip=True,
                use_rot=True,
                num_worker_per_gpu=0,
                batch_size_per_gpu=2,
                dataset_enlarge_ratio=1,
                prefetch_mode=None),
            'val':
            dict(dataset, name='Val', type='PairedImageDataset', dataroot_gt=val[0], dataroot_lq=val[1]),
        },
        'network_g': _with_keys(network, where),
        'path': dict(pretrain_network_g=None, strict_load_g=True, resume_state=None),
        'train': {
            'optim_g': dict(type='Adam', lr=2e-4, weight_decay=0, betas=[0.9, 0.99]),
            'scheduler': dict(type='MultiStepLR', milestones=[100], gamma=0.5),
            'total_iter': 2,
            'warmup_iter': -1,
            'pixel_opt': dict(type='L1Loss', loss_weight=1.0, reduction='mean'),
        },
        'val': {
            'val_freq': 2,
            'save_img': False,
            'metrics': {
                'psnr': dict(type='calculate_psnr', crop_border=scale, test_y_channel=False)
            }
        },
        'logger': dict(print_freq=1, save_checkpoint_freq=2, use_tb_logger=False, wandb=dict(project=None)),
    }


CASES = [(name, where) for name in LAYOUTS for where in (('block', ) if name == 'SwinIR' else ('after', 'first'))]
CASES.append(('NAFNet', 'block'))  # the block is accepted for every backbone


@pytest.mark.parametrize('name,where', CASES, ids=lambda v: v)
def test_published_layout_trains_to_a_validation(name, where, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    torch.set_num_threads(1)
    opt = _options(tmp_path, name, where)
    path = tmp_path / 'opt.yml'
    path.write_text(yaml.safe_dump(opt, sort_keys=False))
    model = train_pipeline(str(tmp_path), ['-opt', str(path)])
    assert type(model).__name__ != 'SRModel' and model.num_outputs == K_EXT
    metrics = json.loads((tmp_path / 'experiments' / opt['name'] / 'metrics.json').read_text())['datasets']['Val']
    heads = [metrics[f'psnr_h{k}'] for k in range(K_EXT)]
    assert metrics['psnr'] == pytest.approx(max(heads))  # Eq. 7b: the best single head
    assert metrics['psnr_overall'] >= metrics['psnr'] - 1e-9  # Eq. 7a >= 7b
    assert metrics['psnr_worst'] <= min(heads) + 1e-9
    if name == 'SwinIR':  # SwinIR keeps its attention heads; SwinIRModel's padding is val.window_size
        backbone = model.get_bare_model(model.net_g).backbone
        assert backbone.layers[0].residual_group.blocks[0].attn.num_heads == 2
        assert model.opt['val']['window_size'] == 4
