"""GoPro-style pair generator: the procedure (linear-light mean through the CRF, middle-frame label), determinism,
the photo split, BasicSR readability (folder and lmdb) and the command line."""
# isort: off
import basicsr_mh  # noqa: F401  (must precede basicsr imports)
# isort: on
import cv2
import json
import numpy as np
import os
import pytest

from basicsr_mh.data.camera_trajectory import CameraTrajectory, MotionParams, TrajectoryConfig, sample_trajectory
from basicsr_mh.data.crf import SRGBCRF, GammaCRF
from basicsr_mh.data.gopro_synth import (PHOTO_SOURCES, TRAIN_PHOTOS, VAL_PHOTOS, SynthConfig, blur_burst, load_photo,
                                         main, make_dataset, pair_rng, render_burst, synthesize_pair, to_uint8)

STILL = TrajectoryConfig(speed_min=0, speed_max=0, accel_max=0, rot_speed_std=0, jitter_std=0, rot_jitter_std=0)


def _files(root):
    out = {}
    for dirpath, _, names in os.walk(root):
        for name in names:
            path = os.path.join(dirpath, name)
            with open(path, 'rb') as f:
                out[os.path.relpath(path, root)] = f.read()
    return out


def _grad_energy(img):
    g = img.astype(np.float64).mean(axis=2)
    return float((np.diff(g, axis=0)**2).mean() + (np.diff(g, axis=1)**2).mean())


def test_crf_round_trip():
    x = np.linspace(0, 1, 257, dtype=np.float32)
    for crf in (GammaCRF(2.2), SRGBCRF()):
        assert crf(x).dtype == np.float32
        np.testing.assert_allclose(crf(crf.inverse(x)), x, atol=1e-6)
    lut = GammaCRF(2.2).inverse_lut()
    np.testing.assert_allclose(lut, (np.arange(256) / 255.0)**2.2, rtol=1e-6)
    assert np.array_equal(to_uint8(GammaCRF(2.2)(lut)), np.arange(256))


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    kw = dict(num_train=5, num_val=3, size=40, progress=False)
    a = _files(make_dataset(str(tmp_path / 'a'), seed=3, workers=1, **kw)['root'])
    b = _files(make_dataset(str(tmp_path / 'b'), seed=3, workers=2, **kw)['root'])
    c = _files(make_dataset(str(tmp_path / 'c'), seed=4, workers=1, **kw)['root'])
    assert len(a) == 2 * (5 + 3) + 2 and a == b  # PNGs, meta.json and README.txt, whatever the worker count
    assert sorted(a) == sorted(c)  # same ids (the photo cycle does not depend on the seed) ...
    lq = [k for k in a if '/lq/' in k]
    assert all(a[k] != c[k] for k in lq)  # ... but other blurs


def test_train_val_photos_disjoint(tmp_path):
    assert not set(TRAIN_PHOTOS) & set(VAL_PHOTOS)
    assert set(TRAIN_PHOTOS) | set(VAL_PHOTOS) <= set(PHOTO_SOURCES)
    # one scene, two views: both on the same side
    assert {'motorcycle_left', 'motorcycle_right'} <= set(TRAIN_PHOTOS)
    for name in VAL_PHOTOS + TRAIN_PHOTOS:
        photo = load_photo(name)
        assert photo.dtype == np.uint8 and photo.ndim == 3 and photo.shape[2] == 3 and min(photo.shape[:2]) >= 300
    paths = make_dataset(str(tmp_path / 'd'), num_train=len(TRAIN_PHOTOS), num_val=4, size=32, progress=False)
    meta = json.load(open(paths['meta']))
    used = {split: {r['photo'] for r in meta['pairs'] if r['split'] == split} for split in ('train', 'val')}
    assert used['train'] == set(TRAIN_PHOTOS) and used['val'] <= set(VAL_PHOTOS) and not used['train'] & used['val']
    for split in ('train', 'val'):
        names = sorted(os.listdir(paths[split]['gt']))
        assert names == sorted(os.listdir(paths[split]['lq']))
        assert all(n.split('_', 1)[1].rsplit('_', 1)[0] in used[split] for n in names)


@pytest.mark.parametrize('num_frames', [7, 8])
def test_blurred_is_crf_of_linear_mean_and_label_is_middle_frame(num_frames):
    photo = load_photo('astronaut')
    cfg = SynthConfig(size=48, frames_min=num_frames, frames_max=num_frames)
    blurred, sharp, info = synthesize_pair(photo, pair_rng(0, 'train', num_frames), cfg, return_burst=True)
    traj = info['trajectory']
    assert traj.num_frames == num_frames and info['label_frame'] == num_frames // 2  # GoPro's pick for even N
    assert traj.times[info['label_index']] == num_frames // 2 == traj.times[traj.frame_indices[num_frames // 2]]

    burst = render_burst(photo, traj, 48, origin=info['origin'], crf=GammaCRF(2.2))  # re-render
    assert burst.shape == (num_frames * traj.subframes, 48, 48, 3) and burst.dtype == np.float32
    np.testing.assert_array_equal(burst, info['burst'])
    # recompute GoPro's formula by hand: CRF(mean(CRF^-1(frames))), CRF = gamma 2.2, uint8 rounding
    expected = np.floor(np.clip(burst.astype(np.float64).mean(axis=0), 0, 1)**(1 / 2.2) * 255 + 0.5)
    diff = np.abs(blurred.astype(np.float64) - expected)
    assert diff.max() <= 1 and (diff == 0).mean() > 0.999
    assert np.array_equal(blurred, to_uint8(blur_burst(burst)))

    # the label is the middle frame, an exact crop of the photo; the other frames differ from it
    x, y = info['origin']
    crop = photo[y:y + 48, x:x + 48]
    assert np.array_equal(sharp, to_uint8(burst[info['label_index']]**(1 / 2.2)))
    assert np.array_equal(sharp, crop)
    np.testing.assert_allclose(burst[info['label_index']], (crop / 255.0)**2.2, atol=1e-6)
    assert not np.array_equal(sharp, to_uint8(burst[traj.frame_indices[0]]**(1 / 2.2)))
    assert not np.array_equal(blurred, sharp)
    assert 7 <= info['num_frames'] <= 13 and info['blur_extent_px'] > 0


def test_static_camera_gives_no_blur():
    photo = load_photo('coffee')
    for seed in range(3):
        cfg = SynthConfig(size=40, trajectory=STILL)
        blurred, sharp, info = synthesize_pair(photo, pair_rng(seed, 'val', 0), cfg)
        assert info['blur_extent_px'] == 0 and info['subframes'] == 1
        assert np.abs(blurred.astype(int) - sharp.astype(int)).max() <= 1
    traj = CameraTrajectory.from_params(MotionParams.static(9), subframes=5)
    burst = render_burst(photo, traj, 32)
    assert np.abs(to_uint8(blur_burst(burst)).astype(int) - to_uint8(burst[traj.label_index]**(1 / 2.2))).max() <= 1


def test_blur_grows_with_speed():
    photo = load_photo('astronaut')
    origin = (200, 150)
    energies = []
    for speed in (0.0, 0.5, 1.5, 3.0):
        params = MotionParams.linear(11, (speed * 0.8, speed * 0.6))
        traj = CameraTrajectory.from_params(params, subframes=7)
        burst = render_burst(photo, traj, 64, origin=origin)
        stats = traj.stats((64, 64))
        assert stats['blur_extent_px'] == pytest.approx(speed * (11 - 1 / 7), abs=1e-3)
        energies.append(_grad_energy(to_uint8(blur_burst(burst))))
        sharp_energy = _grad_energy(to_uint8(burst[traj.label_index]**(1 / 2.2)))
    assert energies[0] == pytest.approx(sharp_energy, rel=1e-3)
    assert all(a > b for a, b in zip(energies, energies[1:])), energies
    assert energies[-1] < 0.5 * sharp_energy


def test_random_trajectories_vary_and_respect_config():
    cfg = TrajectoryConfig()
    rng = np.random.default_rng(0)
    offsets, extents = [], []
    for _ in range(30):
        traj = sample_trajectory(rng, int(rng.integers(7, 14)), (64, 64), cfg)
        assert traj.subframes % 2 == 1 and np.all(traj.shifts[traj.label_index] == 0)
        step = np.linalg.norm(np.diff(traj.shifts, axis=0), axis=1).max()
        assert step <= cfg.max_subframe_step + 0.05  # auto sub-frames keep the blur smooth
        s = traj.stats((64, 64))
        offsets.append(s['label_offset_px'])
        extents.append(s['blur_extent_px'])
        assert cfg.speed_min <= s['speed_px_per_frame'] <= cfg.speed_max
    assert np.std(offsets) > 0.05 and min(extents) > 1 and max(extents) < 60  # the label position is random


@pytest.mark.parametrize('lmdb', [False, True])
def test_readable_by_basicsr_paired_dataset(tmp_path, lmdb):
    from basicsr.data import build_dataset
    paths = make_dataset(str(tmp_path / 'data'), num_train=4, num_val=2, size=36, lmdb=lmdb, progress=False)
    if lmdb:
        meta = open(os.path.join(paths['train']['gt'], 'meta_info.txt')).read().split('\n')
        assert meta[0].endswith('.png (36,36,3) 1') and len([m for m in meta if m]) == 4
    for split, num in (('train', 4), ('val', 2)):
        opt = {
            'name': split,
            'type': 'PairedImageDataset',
            'phase': 'val',
            'scale': 1,
            'filename_tmpl': '{}',
            'dataroot_gt': paths[split]['gt'],
            'dataroot_lq': paths[split]['lq'],
            'io_backend': {
                'type': 'lmdb' if lmdb else 'disk'
            }
        }
        dataset = build_dataset(opt)
        assert len(dataset) == num
        item = dataset[0]
        assert tuple(item['lq'].shape) == tuple(item['gt'].shape) == (3, 36, 36)
        assert float(item['gt'].min()) >= 0 and float(item['gt'].max()) <= 1
        if not lmdb:  # BasicSR reads what we wrote: RGB tensors equal to our PNGs
            gt = cv2.imread(item['gt_path'])[..., ::-1].transpose(2, 0, 1) / 255.0
            np.testing.assert_allclose(item['gt'].numpy(), gt, atol=1e-6)


def test_refuses_non_empty_out(tmp_path, capsys):
    out = tmp_path / 'mine'
    out.mkdir()
    (out / 'precious.txt').write_text('user data')
    with pytest.raises(FileExistsError, match='mine'):
        make_dataset(str(out), num_train=2, num_val=1, size=32, progress=False)
    assert main(['--out', str(out), '--num-train', '2', '--num-val', '1', '--quiet']) == 2
    err = capsys.readouterr().err
    assert str(out) in err and 'not empty' in err
    assert os.listdir(out) == ['precious.txt'] and (out / 'precious.txt').read_text() == 'user data'
    assert sorted(os.listdir(tmp_path)) == ['mine']  # no half-written staging folder left behind
    empty = tmp_path / 'empty'
    empty.mkdir()  # an existing empty folder is fine
    make_dataset(str(empty), num_train=1, num_val=1, size=32, progress=False)
    assert sorted(os.listdir(empty)) == ['README.txt', 'meta.json', 'train', 'val']


def test_main_writes_and_reports(tmp_path, capsys):
    out = str(tmp_path / 'nested' / 'synth')
    argv = ['--out', out, '--num-train', '3', '--num-val', '2', '--size', '32', '--seed', '5', '--quiet']
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert out in printed and os.path.join(out, 'train', 'gt') in printed
    meta = json.load(open(os.path.join(out, 'meta.json')))
    assert meta['params']['seed'] == 5 and meta['params']['size'] == [32, 32] and len(meta['pairs']) == 5
    assert meta['crf'] == {'type': 'gamma', 'gamma': 2.2}
    assert all(7 <= p['num_frames'] <= 13 for p in meta['pairs'])
    img = cv2.imread(os.path.join(out, 'val', 'lq', meta['pairs'][-1]['id'] + '.png'), cv2.IMREAD_UNCHANGED)
    assert img.shape == (32, 32, 3) and img.dtype == np.uint8
    assert 'Train photos' in open(os.path.join(out, 'README.txt')).read()
    with pytest.raises(SystemExit):
        main(['--frames-min', 'x'])
    assert main(['--out', str(tmp_path / 'bad'), '--frames-min', '9', '--frames-max', '8', '--quiet']) == 2
    assert not os.path.exists(tmp_path / 'bad')
