"""scripts/prepare_gopro.py and scripts/prepare_hide.py on tiny fake GoPro / HIDE trees (real photos, 96x80).

Checks names and counts, NAFNet's crop grid, the lmdb (BasicSR's FileClient, meta_info.txt, PairedImageDataset), that
a second run refuses to overwrite (non-zero exit, the path in the message), that interrupted runs resume to the same
bytes, and that the shipped test option files run on what the scripts write.
"""
import filecmp
import importlib.util
import os
import os.path as osp
import re
import shutil
import subprocess
import sys
from conftest import REPO_ROOT

# isort: off
import basicsr_mh  # noqa: F401  (before basicsr: installs the torchvision alias)
# isort: on
import cv2
import numpy as np
import pytest
import torch
import yaml
from basicsr.archs import build_network
from basicsr.data.paired_image_dataset import PairedImageDataset
from basicsr.utils import FileClient, imfrombytes
from basicsr.utils.options import ordered_yaml
from basicsr.utils.registry import ARCH_REGISTRY, DATASET_REGISTRY, MODEL_REGISTRY

from basicsr_mh.data.example_pairs import TRAIN_PHOTOS, VAL_PHOTOS, motion_blur, photo_bgr
from basicsr_mh.options import upgrade_options

pytestmark = pytest.mark.slow  # subprocess runs of training / the CLI

ROOT = REPO_ROOT
GOPRO = osp.join(ROOT, 'scripts', 'prepare_gopro.py')
HIDE = osp.join(ROOT, 'scripts', 'prepare_hide.py')
W, H = 96, 80
CROP, STEP, VAL_CROP = 48, 32, 32  # 96x80 frames: rows [0, 32], columns [0, 32, 48] -> 6 crops a frame
GOPRO_ARGS = ['--crop-size', str(CROP), '--step', str(STEP), '--val-crop-size', str(VAL_CROP)]
PHOTOS = TRAIN_PHOTOS + VAL_PHOTOS
HIDE_NAMES = {
    'test-close-ups': ['1fromGOPR0950.MP4.png', '12fromGOPR1044.MP4.png'],
    'test-long-shot': ['7fromGOPR1096.MP4.png']
}


@pytest.fixture(autouse=True)
def one_torch_thread():
    """One intra-op thread: on a small, busy machine two spinning threads make these tiny networks 10-40x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def run(script, *args, cwd=None):
    env = dict(os.environ, OMP_NUM_THREADS='1')
    return subprocess.run([sys.executable, script, *args],
                          cwd=cwd,
                          capture_output=True,
                          text=True,
                          timeout=600,
                          env=env)


def snapshot(root):
    """{relative path: bytes} of every file under ``root`` except lmdb's lock file and the state folder."""
    files = {}
    for folder, _, names in os.walk(root):
        for name in names:
            path = osp.join(folder, name)
            relpath = osp.relpath(path, root)
            if name == 'lock.mdb' or relpath.startswith('.prepare'):
                continue
            with open(path, 'rb') as f:
                files[relpath] = f.read()
    return files


def lmdb_images(path):
    """{key: decoded image} of a BasicSR lmdb, read through meta_info.txt and BasicSR's FileClient."""
    with open(osp.join(path, 'meta_info.txt')) as f:
        lines = [line.rstrip('\n') for line in f]
    client = FileClient('lmdb', db_paths=[path], client_keys=['default'])
    images = {}
    for line in lines:
        match = re.fullmatch(r'(\S+)\.png \((\d+),(\d+),(\d+)\) 1', line)
        assert match, f'{path}/meta_info.txt: bad line {line!r}'
        key = match.group(1)
        img = imfrombytes(client.get(key, 'default'), float32=False)
        assert img.shape == tuple(int(v) for v in match.groups()[1:]), key
        images[key] = img
    return images


@pytest.fixture(scope='module')
def gopro_src(tmp_path_factory):
    """GOPRO_Large with 2 train and 2 test scenes of 2 frames each: blur, blur_gamma, sharp (96x80 photos)."""
    root = tmp_path_factory.mktemp('gopro_src') / 'GOPRO_Large'
    rng = np.random.default_rng(0)
    index = 0
    scenes_of = {'train': ['GOPR0372_07_00', 'GOPR0374_11_01'], 'test': ['GOPR0384_11_00', 'GOPR0396_11_00']}
    for split, scenes in scenes_of.items():
        for scene in scenes:
            for frame in ('000047.png', '000048.png'):
                sharp = photo_bgr(PHOTOS[index % len(PHOTOS)], (W, H))
                index += 1
                blur = motion_blur(sharp, int(rng.integers(3, 8)), float(rng.uniform(0, 180)))
                for kind, img in (('sharp', sharp), ('blur', blur), ('blur_gamma', 255 - blur)):
                    os.makedirs(root / split / scene / kind, exist_ok=True)
                    cv2.imwrite(str(root / split / scene / kind / frame), img)
    return str(root)


@pytest.fixture(scope='module')
def gopro_done(gopro_src, tmp_path_factory):
    """One complete run (2 worker processes); returns (dst, process, snapshot)."""
    dst = str(tmp_path_factory.mktemp('gopro_out') / 'GoPro')
    proc = run(GOPRO, '--src', gopro_src, '--dst', dst, '--workers', '2', *GOPRO_ARGS)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return dst, proc, snapshot(dst)


def test_gopro_layout_names_and_counts(gopro_src, gopro_done):
    dst, proc, _ = gopro_done
    names = {
        'train': [
            'GOPR0372_07_00_000047.png', 'GOPR0372_07_00_000048.png', 'GOPR0374_11_01_000047.png',
            'GOPR0374_11_01_000048.png'
        ],
        'test': [
            'GOPR0384_11_00_000047.png', 'GOPR0384_11_00_000048.png', 'GOPR0396_11_00_000047.png',
            'GOPR0396_11_00_000048.png'
        ],
    }
    for split, expected in names.items():
        for kind, source in (('input', 'blur'), ('target', 'sharp')):
            assert sorted(os.listdir(osp.join(dst, split, kind))) == expected
            for name in expected:  # byte copies of the published files
                scene, frame = name.rsplit('_', 1)
                assert filecmp.cmp(
                    osp.join(dst, split, kind, name), osp.join(gopro_src, split, scene, source, frame), shallow=False)
    crops = sorted(f'{n[:-4]}_s{i:03d}.png' for n in names['train'] for i in range(1, 7))
    for folder in ('blur_crops', 'sharp_crops'):
        assert sorted(os.listdir(osp.join(dst, 'train', folder))) == crops
    for folder in ('input_crops', 'target_crops'):
        assert sorted(os.listdir(osp.join(dst, 'val', folder))) == names['test']
    assert 'train_crops 24' in proc.stdout and 'train_pairs 4' in proc.stdout
    assert osp.isfile(osp.join(dst, '.prepare_gopro', 'COMPLETE'))
    assert not [n for _, _, files in os.walk(dst) for n in files if '.tmp-' in n]


def test_gopro_crops_follow_nafnet_grid(gopro_done):
    dst = gopro_done[0]
    full = cv2.imread(osp.join(dst, 'train', 'target', 'GOPR0374_11_01_000048.png'))
    index = 0
    for x in (0, 32):  # rows: 0, 32 (80 - 48 - 32 = 0 left over: no extra crop)
        for y in (0, 32, 48):  # columns: 0, 32, then 96 - 48 = 48 for the 16 pixels left over (thresh_size 0)
            index += 1
            crop = cv2.imread(osp.join(dst, 'train', 'sharp_crops', f'GOPR0374_11_01_000048_s{index:03d}.png'))
            np.testing.assert_array_equal(crop, full[x:x + CROP, y:y + CROP])
    test = cv2.imread(osp.join(dst, 'test', 'input', 'GOPR0384_11_00_000047.png'))
    val = cv2.imread(osp.join(dst, 'val', 'input_crops', 'GOPR0384_11_00_000047.png'))
    i, j = (H - VAL_CROP) // 2, (W - VAL_CROP) // 2
    np.testing.assert_array_equal(val, test[i:i + VAL_CROP, j:j + VAL_CROP])


def test_gopro_crop_positions_on_real_frames():
    """On GoPro's 720x1280 frames NAFNet's grid (512, step 256) gives 8 crops, as Restormer's script does."""
    spec = importlib.util.spec_from_file_location('prepare_gopro_under_test', GOPRO)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # import-safe: main() does not run
    assert module.crop_positions(720, 512, 256, 0) == [0, 208]
    assert module.crop_positions(1280, 512, 256, 0) == [0, 256, 512, 768]
    assert module.lmdb_key('10fromGOPR0950.MP4.png') == '10fromGOPR0950_MP4'


def test_gopro_lmdb_readable_by_basicsr(gopro_done):
    dst = gopro_done[0]
    for folder in ('train/blur_crops', 'train/sharp_crops', 'test/input', 'test/target'):
        lmdb_dir = folder + '.lmdb'
        images = lmdb_images(osp.join(dst, lmdb_dir))
        names = sorted(os.listdir(osp.join(dst, folder)))
        assert sorted(images) == [n[:-4] for n in names]
        for name in names:
            np.testing.assert_array_equal(images[name[:-4]], cv2.imread(osp.join(dst, folder, name)))
        with open(osp.join(dst, lmdb_dir, 'meta_info.txt')) as f:
            assert [line.split(' ')[0] for line in f] == names  # sorted, as make_lmdb_from_imgs writes it
    # the option files' datasets: NAFNet/HINet train on the crop lmdb, validate on the test lmdb
    train = PairedImageDataset({
        'dataroot_gt': osp.join(dst, 'train/sharp_crops.lmdb'),
        'dataroot_lq': osp.join(dst, 'train/blur_crops.lmdb'),
        'io_backend': {
            'type': 'lmdb'
        },
        'filename_tmpl': '{}',
        'phase': 'train',
        'scale': 1,
        'gt_size': 32,
        'use_hflip': True,
        'use_rot': True
    })
    assert len(train) == 24 and tuple(train[0]['gt'].shape) == (3, 32, 32)
    test = PairedImageDataset({
        'dataroot_gt': osp.join(dst, 'test/target.lmdb'),
        'dataroot_lq': osp.join(dst, 'test/input.lmdb'),
        'io_backend': {
            'type': 'lmdb'
        },
        'phase': 'val',
        'scale': 1
    })
    assert len(test) == 4 and tuple(test[0]['lq'].shape) == (3, H, W)


def test_gopro_second_run_refuses(gopro_src, gopro_done):
    dst, _, before = gopro_done
    proc = run(GOPRO, '--src', gopro_src, '--dst', dst, *GOPRO_ARGS)
    assert proc.returncode != 0
    assert osp.join(dst, '.prepare_gopro', 'COMPLETE') in proc.stderr and 'refusing to overwrite' in proc.stderr
    assert snapshot(dst) == before


def test_gopro_refuses_outputs_it_did_not_write(gopro_src, tmp_path):
    dst = tmp_path / 'GoPro'
    os.makedirs(dst / 'train' / 'target')
    (dst / 'train' / 'target' / 'mine.png').write_bytes(b'not yours')
    proc = run(GOPRO, '--src', gopro_src, '--dst', str(dst), '--no-lmdb', *GOPRO_ARGS)
    assert proc.returncode != 0
    assert str(dst / 'train' / 'target') in proc.stderr
    assert sorted(os.listdir(dst)) == ['train'] and (dst / 'train' / 'target' / 'mine.png').read_bytes() == b'not yours'


def test_gopro_interrupted_run_resumes(gopro_src, gopro_done, tmp_path):
    """Stopped twice (in the crops, then in an lmdb), resumed: the same bytes as the uninterrupted run."""
    dst = str(tmp_path / 'GoPro')
    first = run(GOPRO, '--src', gopro_src, '--dst', dst, '--stop-after', '10', '--workers', '0', *GOPRO_ARGS)
    assert first.returncode == 3 and 'run the same command again' in first.stderr
    assert not osp.exists(osp.join(dst, '.prepare_gopro', 'COMPLETE'))
    assert not osp.exists(osp.join(dst, 'train', 'blur_crops.lmdb'))
    second = run(GOPRO, '--src', gopro_src, '--dst', dst, '--stop-after', '25', '--workers', '2', *GOPRO_ARGS)
    assert second.returncode == 3 and 'Resuming' in second.stdout
    assert osp.isdir(osp.join(dst, 'train', 'blur_crops.lmdb'))
    assert not osp.exists(osp.join(dst, 'train', 'blur_crops.lmdb', 'meta_info.txt'))
    other = run(GOPRO, '--src', gopro_src, '--dst', dst, '--crop-size', '40')  # other options: refused
    assert other.returncode != 0 and osp.join(dst, '.prepare_gopro', 'state.json') in other.stderr
    last = run(GOPRO, '--src', gopro_src, '--dst', dst, *GOPRO_ARGS)
    assert last.returncode == 0, last.stderr[-3000:]
    assert snapshot(dst).keys() == gopro_done[2].keys()
    for relpath, data in snapshot(dst).items():
        if not relpath.endswith('data.mdb'):  # lmdb pages depend on the write order; compared decoded below
            assert data == gopro_done[2][relpath], relpath
    for lmdb_dir in ('train/blur_crops.lmdb', 'test/target.lmdb'):
        ours, ref = lmdb_images(osp.join(dst, lmdb_dir)), lmdb_images(osp.join(gopro_done[0], lmdb_dir))
        assert ours.keys() == ref.keys() and all(np.array_equal(ours[k], ref[k]) for k in ref)


def test_gopro_resumes_after_marker_and_outputs_deleted(gopro_src, gopro_done, tmp_path):
    dst = str(tmp_path / 'GoPro')
    shutil.copytree(gopro_done[0], dst)
    os.remove(osp.join(dst, '.prepare_gopro', 'COMPLETE'))
    os.remove(osp.join(dst, 'train', 'input', 'GOPR0372_07_00_000048.png'))
    os.remove(osp.join(dst, 'train', 'sharp_crops', 'GOPR0374_11_01_000047_s004.png'))
    os.remove(osp.join(dst, 'val', 'target_crops', 'GOPR0396_11_00_000048.png'))
    shutil.rmtree(osp.join(dst, 'test', 'input.lmdb'))
    proc = run(GOPRO, '--src', gopro_src, '--dst', dst, *GOPRO_ARGS)
    assert proc.returncode == 0, proc.stderr[-3000:]
    after = snapshot(dst)
    assert after.keys() == gopro_done[2].keys()
    for relpath, data in after.items():
        if not relpath.startswith('test/input.lmdb/data.mdb'):
            assert data == gopro_done[2][relpath], relpath
    assert osp.isfile(osp.join(dst, '.prepare_gopro', 'COMPLETE'))


def test_gopro_bad_source_is_named(gopro_src, tmp_path):
    src = tmp_path / 'GOPRO_Large'
    shutil.copytree(gopro_src, src)
    shutil.rmtree(src / 'test' / 'GOPR0396_11_00' / 'sharp')
    proc = run(GOPRO, '--src', str(src), '--dst', str(tmp_path / 'out'))
    assert proc.returncode == 1 and str(src / 'test' / 'GOPR0396_11_00' / 'sharp') in proc.stderr
    assert not osp.exists(tmp_path / 'out')


def test_gopro_blur_gamma_and_no_lmdb(gopro_src, tmp_path):
    dst = tmp_path / 'GoPro'
    proc = run(GOPRO, '--src', gopro_src, '--dst', str(dst), '--blur-kind', 'blur_gamma', '--no-lmdb',
               '--val-crop-size', '0', '--crop-size', '80', '--step', '80')
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(os.listdir(dst)) == ['.prepare_gopro', 'test', 'train']
    assert sorted(os.listdir(dst / 'train')) == ['blur_crops', 'input', 'sharp_crops', 'target']
    assert len(os.listdir(dst / 'train' / 'blur_crops')) == 4 * 2  # 80x96 frames: columns 0 and 16
    name = 'GOPR0372_07_00_000047.png'
    source = osp.join(gopro_src, 'train', 'GOPR0372_07_00', 'blur_gamma', '000047.png')
    assert filecmp.cmp(dst / 'train' / 'input' / name, source, shallow=False)


# ----------------------------------------------------------------------------------------------------- HIDE
@pytest.fixture(scope='module')
def hide_src(tmp_path_factory):
    """HIDE_dataset: test/{test-close-ups,test-long-shot}, GT with the same names (and one training image), test.txt."""
    root = tmp_path_factory.mktemp('hide_src') / 'HIDE_dataset'
    rng = np.random.default_rng(1)
    index = 0
    listed = []
    for group, names in HIDE_NAMES.items():
        os.makedirs(root / 'test' / group)
        for name in names:
            sharp = photo_bgr(PHOTOS[index], (W, H))
            index += 1
            os.makedirs(root / 'GT', exist_ok=True)
            cv2.imwrite(str(root / 'GT' / name), sharp)
            cv2.imwrite(str(root / 'test' / group / name), motion_blur(sharp, int(rng.integers(3, 8)), 30.0))
            listed.append(f'{group}/{name}')
    os.makedirs(root / 'train')
    cv2.imwrite(str(root / 'GT' / '99fromGOPR0001.MP4.png'), photo_bgr(PHOTOS[-1], (W, H)))
    cv2.imwrite(str(root / 'train' / '99fromGOPR0001.MP4.png'), photo_bgr(PHOTOS[-1], (W, H)))
    (root / 'test.txt').write_text('\n'.join(listed) + '\n')
    return str(root)


@pytest.fixture(scope='module')
def hide_done(hide_src, tmp_path_factory):
    dst = str(tmp_path_factory.mktemp('hide_out') / 'HIDE')
    proc = run(HIDE, '--src', hide_src, '--dst', dst)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return dst, proc, snapshot(dst)


def test_hide_layout_and_lmdb(hide_src, hide_done):
    dst, proc, _ = hide_done
    names = sorted(n for group in HIDE_NAMES.values() for n in group)
    assert 'warning' not in proc.stderr
    for kind in ('input', 'target'):
        assert sorted(os.listdir(osp.join(dst, 'test', kind))) == names
    for group, group_names in HIDE_NAMES.items():
        for name in group_names:
            assert filecmp.cmp(osp.join(dst, 'test', 'input', name), osp.join(hide_src, 'test', group, name), False)
            assert filecmp.cmp(osp.join(dst, 'test', 'target', name), osp.join(hide_src, 'GT', name), False)
    for kind in ('input', 'target'):
        images = lmdb_images(osp.join(dst, 'test', f'{kind}.lmdb'))
        assert sorted(images) == sorted(n[:-4].replace('.', '_') for n in names)  # no dot in a key
        np.testing.assert_array_equal(images['7fromGOPR1096_MP4'],
                                      cv2.imread(osp.join(dst, 'test', kind, '7fromGOPR1096.MP4.png')))
    dataset = PairedImageDataset({
        'dataroot_gt': osp.join(dst, 'test/target.lmdb'),
        'dataroot_lq': osp.join(dst, 'test/input.lmdb'),
        'io_backend': {
            'type': 'lmdb'
        },
        'phase': 'val',
        'scale': 1
    })
    assert len(dataset) == 3 and tuple(dataset[2]['gt'].shape) == (3, H, W)
    folder = PairedImageDataset({
        'dataroot_gt': osp.join(dst, 'test/target'),
        'dataroot_lq': osp.join(dst, 'test/input'),
        'io_backend': {
            'type': 'disk'
        },
        'filename_tmpl': '{}',
        'phase': 'val',
        'scale': 1
    })
    assert len(folder) == 3


def test_hide_second_run_refuses(hide_src, hide_done):
    dst, _, before = hide_done
    proc = run(HIDE, '--src', hide_src, '--dst', dst)
    assert proc.returncode != 0 and osp.join(dst, '.prepare_hide', 'COMPLETE') in proc.stderr
    assert snapshot(dst) == before


def test_hide_interrupted_run_resumes(hide_src, hide_done, tmp_path):
    dst = str(tmp_path / 'HIDE')
    first = run(HIDE, '--src', hide_src, '--dst', dst, '--stop-after', '4')  # 3 copies, 1 lmdb image
    assert first.returncode == 3 and not osp.exists(osp.join(dst, '.prepare_hide', 'COMPLETE'))
    assert not osp.exists(osp.join(dst, 'test', 'input.lmdb', 'meta_info.txt'))
    last = run(HIDE, '--src', hide_src, '--dst', dst)
    assert last.returncode == 0, last.stderr[-3000:]
    after = snapshot(dst)
    assert after.keys() == hide_done[2].keys()
    assert all(after[k] == hide_done[2][k] for k in after if not k.endswith('data.mdb'))
    ours, ref = lmdb_images(osp.join(dst, 'test/input.lmdb')), lmdb_images(osp.join(hide_done[0], 'test/input.lmdb'))
    assert ours.keys() == ref.keys() and all(np.array_equal(ours[k], ref[k]) for k in ref)


def test_hide_missing_gt_is_named(hide_src, tmp_path):
    src = tmp_path / 'HIDE_dataset'
    shutil.copytree(hide_src, src)
    os.remove(src / 'GT' / '12fromGOPR1044.MP4.png')
    proc = run(HIDE, '--src', str(src), '--dst', str(tmp_path / 'out'))
    assert proc.returncode == 1 and str(src / 'GT' / '12fromGOPR1044.MP4.png') in proc.stderr
    assert not osp.exists(tmp_path / 'out')


def test_scripts_are_import_safe():
    for path in (GOPRO, HIDE):
        spec = importlib.util.spec_from_file_location(f'under_test_{osp.basename(path)[:-3]}', path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        assert callable(module.main) and callable(module.build_parser)


# ----------------------------------------------------------------------------------------------------- end to end
E2E = [('GoPro', 'NAFNet-width32-MH-C'), ('GoPro', 'HINet'), ('GoPro', 'MPRNet-MH-C'), ('HIDE', 'Restormer-MH-C')]


def _load_yaml(path):
    with open(path) as f:
        return yaml.load(f, Loader=ordered_yaml()[0])


@pytest.mark.parametrize('dataset,stem', E2E, ids=lambda v: v)
def test_prepared_data_feeds_the_test_option_files(dataset, stem, gopro_done, hide_done, tmp_path):
    """`basicsr test -opt options/test/<dataset>/<stem>.yml` as shipped, run where datasets/GoPro and datasets/HIDE
    are this module's prepared outputs, with only the network's sizes taken from the CPU file (random weights),
    num_gpu 0 and, for HINet, 32x32 tiles instead of 256x256."""
    opt = _load_yaml(osp.join(ROOT, 'options', 'test', dataset, f'{stem}.yml'))
    cpu_net = _load_yaml(osp.join(ROOT, 'options', 'train', 'CPU', f'{stem}.yml'))['network_g']
    missing = [n for n in (opt['network_g']['type'], ) if n not in ARCH_REGISTRY]
    missing += [n for n in (opt['model_type'], ) if n not in MODEL_REGISTRY]
    missing += [d['type'] for d in opt['datasets'].values() if d['type'] not in DATASET_REGISTRY]
    if missing:
        pytest.skip(f'not registered yet: {", ".join(missing)}')
    for key, value in cpu_net.items():
        if key not in ('type', 'train_size'):
            opt['network_g'][key] = value
    opt['num_gpu'] = 0
    if opt['val'].get('grids'):
        opt['val'].update(crop_size_h=32, crop_size_w=32)
    net_opt = upgrade_options({'network_g': dict(opt['network_g']), 'is_train': False}, notes=[])['network_g']
    torch.manual_seed(0)
    net = build_network(net_opt)
    os.makedirs(tmp_path / 'datasets')
    os.symlink(gopro_done[0], tmp_path / 'datasets' / 'GoPro')
    os.symlink(hide_done[0], tmp_path / 'datasets' / 'HIDE')
    checkpoint = tmp_path / opt['path']['pretrain_network_g']
    os.makedirs(checkpoint.parent)
    torch.save({'params': net.state_dict()}, checkpoint)
    opt_path = tmp_path / 'test.yml'
    with open(opt_path, 'w') as f:
        yaml.dump(opt, f, Dumper=ordered_yaml()[1])
    exe = osp.join(osp.dirname(sys.executable), 'basicsr')
    proc = subprocess.run([exe, 'test', '-opt', str(opt_path)],
                          cwd=tmp_path,
                          capture_output=True,
                          text=True,
                          timeout=900,
                          env=dict(os.environ, OMP_NUM_THREADS='1', BASICSR_MH_TRACEBACK='1'))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    logs = list((tmp_path / 'results' / opt['name']).glob('test_*.log'))
    assert len(logs) == 1
    text = logs[0].read_text()
    count = 4 if dataset == 'GoPro' else 3
    assert f'Number of test images in {opt["datasets"]["test"]["name"]}: {count}' in text
    assert re.search(r'# psnr: [-\d.]+', text) and re.search(r'# ssim: [-\d.]+', text)
    assert ('# psnr_overall: ' in text) == stem.endswith('-MH-C')
