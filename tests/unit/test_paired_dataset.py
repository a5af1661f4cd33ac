"""Dataset_PairedImage (Restormer): aligned pairs under geometric augmentations, padding, lmdb, meta info, templates."""
import cv2
import numpy as np
import os
import pytest
import random
import torch
from basicsr.data import build_dataset
from basicsr.utils.registry import DATASET_REGISTRY

from basicsr_mh.data.paired_image_dataset import Dataset_PairedImage, geometric_transform


def _write_pairs(root, sizes, same=True, lq_suffix=''):
    """gt/ and lq/ folders of random BGR images (lq = gt when ``same``); returns (gt_dir, lq_dir, images)."""
    rng = np.random.default_rng(0)
    gt_dir, lq_dir = os.path.join(root, 'gt'), os.path.join(root, 'lq')
    os.makedirs(gt_dir, exist_ok=True)
    os.makedirs(lq_dir, exist_ok=True)
    images = {}
    for n, (h, w) in enumerate(sizes):
        gt = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        lq = gt if same else rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        cv2.imwrite(os.path.join(gt_dir, f'im{n}.png'), gt)
        cv2.imwrite(os.path.join(lq_dir, f'im{n}{lq_suffix}.png'), lq)
        images[f'im{n}'] = (gt, lq)
    return gt_dir, lq_dir, images


def _opt(gt_dir, lq_dir, phase='train', **extra):
    opt = {
        'name': 'T',
        'type': 'Dataset_PairedImage',
        'dataroot_gt': gt_dir,
        'dataroot_lq': lq_dir,
        'io_backend': {
            'type': 'disk'
        },
        'filename_tmpl': '{}',
        'phase': phase,
        'scale': 1
    }
    opt.update(extra)
    return opt


def _to_bgr_uint8(t):
    return (t.numpy().transpose(1, 2, 0)[:, :, ::-1] * 255).round().astype(np.uint8)


def test_registered_and_needs_gt_size_for_training(tmp_path):
    assert DATASET_REGISTRY.get('Dataset_PairedImage') is Dataset_PairedImage
    gt_dir, lq_dir, _ = _write_pairs(str(tmp_path), [(8, 8)])
    with pytest.raises(ValueError, match='datasets.train.gt_size is missing'):
        build_dataset(_opt(gt_dir, lq_dir))


def test_geometric_transform_matches_restormer_modes():
    img = np.arange(2 * 3 * 1).reshape(2, 3, 1)
    expected = [
        img,
        np.flipud(img),
        np.rot90(img),
        np.flipud(np.rot90(img)),
        np.rot90(img, k=2),
        np.flipud(np.rot90(img, k=2)),
        np.rot90(img, k=3),
        np.flipud(np.rot90(img, k=3))
    ]
    for mode, exp in enumerate(expected):
        assert np.array_equal(geometric_transform(img, mode), exp)
    outputs = [geometric_transform(img, m) for m in range(8)]
    assert len({out.tobytes() + bytes(out.shape) for out in outputs}) == 8


def test_geometric_augs_keep_pairs_aligned(tmp_path):
    """lq = gt on disk: every augmented crop must still have lq == gt; all 8 transforms occur."""
    gt_dir, lq_dir, images = _write_pairs(str(tmp_path), [(24, 24), (40, 52)])
    full = build_dataset(_opt(gt_dir, lq_dir, gt_size=24, geometric_augs=True))
    src = images['im0'][0]
    seen = set()
    for seed in range(40):
        random.seed(seed)
        for index in range(len(full)):
            item = full[index]
            assert item['lq'].shape == item['gt'].shape == (3, 24, 24)
            assert torch.equal(item['lq'], item['gt'])
        random.seed(seed)
        out = _to_bgr_uint8(full[0]['gt'])  # 24 x 24 image, crop = whole: the output is a transform of it
        modes = [m for m in range(8) if np.array_equal(out, geometric_transform(src, m))]
        assert len(modes) == 1
        seen.add(modes[0])
    assert seen == set(range(8))


def test_without_augs_crop_is_a_crop_of_the_pair(tmp_path):
    gt_dir, lq_dir, images = _write_pairs(str(tmp_path), [(40, 52)], same=False)
    ds = build_dataset(_opt(gt_dir, lq_dir, gt_size=16))
    gt_src, lq_src = images['im0']
    for seed in range(5):
        random.seed(seed)
        item = ds[0]
        gt, lq = _to_bgr_uint8(item['gt']), _to_bgr_uint8(item['lq'])
        hits = [(i, j) for i in range(40 - 15) for j in range(52 - 15)
                if np.array_equal(gt, gt_src[i:i + 16, j:j + 16])]
        assert len(hits) == 1
        i, j = hits[0]
        assert np.array_equal(lq, lq_src[i:i + 16, j:j + 16])  # same place in lq


def test_small_pairs_are_reflect_padded(tmp_path):
    gt_dir, lq_dir, images = _write_pairs(str(tmp_path), [(20, 30)])
    item = build_dataset(_opt(gt_dir, lq_dir, gt_size=32))[0]
    gt = _to_bgr_uint8(item['gt'])
    assert gt.shape == (32, 32, 3) and torch.equal(item['lq'], item['gt'])
    src = images['im0'][0]
    assert np.array_equal(gt[:20, :30], src)
    assert np.array_equal(gt[20:, :30], src[::-1][:12])  # cv2.BORDER_REFLECT: edge row repeated, then mirrored
    assert np.array_equal(gt[:20, 30:], src[:, ::-1][:, :2])


def test_validation_phase_full_images_and_template(tmp_path):
    gt_dir, lq_dir, images = _write_pairs(str(tmp_path), [(21, 17), (30, 40)], same=False, lq_suffix='_blur')
    ds = build_dataset(_opt(gt_dir, lq_dir, phase='val', filename_tmpl='{}_blur', geometric_augs=True))
    assert len(ds) == 2
    item = ds[0]
    assert item['lq_path'].endswith('im0_blur.png') and item['gt_path'].endswith('im0.png')
    assert np.array_equal(_to_bgr_uint8(item['gt']), images['im0'][0])
    assert np.array_equal(_to_bgr_uint8(item['lq']), images['im0'][1])


def test_meta_info_file_and_lmdb(tmp_path):
    gt_dir, lq_dir, images = _write_pairs(str(tmp_path / 'disk'), [(24, 24), (24, 24), (24, 24)], same=False)
    meta = tmp_path / 'meta.txt'
    meta.write_text('im2.png\n')
    ds = build_dataset(_opt(gt_dir, lq_dir, phase='val', meta_info_file=str(meta)))
    assert len(ds) == 1 and ds[0]['gt_path'].endswith('im2.png')

    pytest.importorskip('lmdb')
    from basicsr.utils.lmdb_util import make_lmdb_from_imgs
    roots = {}
    for key, folder in (('gt', gt_dir), ('lq', lq_dir)):
        names = sorted(os.listdir(folder))
        roots[key] = str(tmp_path / f'{key}.lmdb')
        make_lmdb_from_imgs(folder, roots[key], names, [os.path.splitext(n)[0] for n in names])
    ds = build_dataset(_opt(roots['gt'], roots['lq'], gt_size=24, geometric_augs=True, io_backend={'type': 'lmdb'}))
    assert len(ds) == 3
    random.seed(3)
    item = ds[1]
    assert item['gt_path'] == 'im1' and item['gt'].shape == (3, 24, 24)
    gt_src, lq_src = images['im1']
    modes = [m for m in range(8) if np.array_equal(_to_bgr_uint8(item['gt']), geometric_transform(gt_src, m))]
    assert len(modes) == 1
    assert np.array_equal(_to_bgr_uint8(item['lq']), geometric_transform(lq_src, modes[0]))
