"""Shared fixtures: tiny blurred/sharp pair folders built from scikit-image's bundled photos, and option files."""
# isort: off
import basicsr_mh  # noqa: F401  (must precede basicsr imports: installs the torchvision alias)
# isort: on
import contextlib
import copy
import os
import pytest
import sys
import types
import yaml
from pathlib import Path

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
#: The repository's root folder (option files, scripts, benchmark records).
REPO_ROOT = str(Path(__file__).resolve().parents[1])
#: Tests in ``tests/integration`` run trainings and the CLI (subprocesses): all of them are marked ``slow``; tests in
#: ``tests/unit`` are the fast loop (``pytest -m "not slow"``) and may not be marked ``slow``.
INTEGRATION_DIR = Path(__file__).resolve().parent / 'integration'
sys.path.insert(0, str(Path(__file__).resolve().parent / 'unit'))  # integration tests reuse the unit tests' helpers


def pytest_collection_modifyitems(config, items):
    """Mark every test under ``tests/integration`` ``slow``; refuse a ``slow`` test under ``tests/unit``."""
    for item in items:
        integration = INTEGRATION_DIR in Path(str(item.fspath)).resolve().parents
        if integration:
            item.add_marker(pytest.mark.slow)
        elif item.get_closest_marker('slow') is not None:
            raise pytest.UsageError(f'{item.nodeid} is marked slow: move it to tests/integration.')


# ------------------------------------------------------------------------------------------ the reference harness
#: Where the published files of each code base lie in a checkout of the paper's reference code
#: (Liu-SD/multi-output-deblur) or of the original repository; the first folder that has all requested files wins.
REFERENCE_FOLDERS = {
    'nafnet': ('NAFNet-main/basicsr/models/archs', 'basicsr/models/archs', '.'),
    'restormer':
    ('Restormer-main/basicsr_restormer/models/archs', 'basicsr_restormer/models/archs', 'basicsr/models/archs', '.'),
    'mprnet': ('MPRNet-main/Deblurring', 'Deblurring', '.'),
}
#: The package the BasicSR-style reference files import each other from (PyPI's BasicSR lacks it).
REFERENCE_PACKAGE = 'basicsr.models.archs'


def _exec_file(path, name):
    module = types.ModuleType(name)
    module.__file__ = str(path)
    exec(compile(path.read_text(), str(path), 'exec'), module.__dict__)
    return module


@contextlib.contextmanager
def load_reference(code, files, package=False, needs=()):
    """The published reference files of one code base, for tests of equality with the reference code.

    Skips the test when ``BASICSR_MH_REFERENCE`` (a checkout) is unset, lacks the files, or a module in ``needs`` is
    not installed.

    Args:
        code (str): a key of :data:`REFERENCE_FOLDERS`.
        files (Sequence[str]): file names without ``.py``, dependencies first.
        package (bool): load them as ``basicsr.models.archs.<name>`` (they import each other from there): a fake
            package and the modules sit in ``sys.modules`` for the duration of the context, then the previous
            entries are restored. Otherwise each file is executed in a module of its own.
        needs (Sequence[str]): modules the reference code imports (``einops``).

    Yields:
        dict[str, module]: the loaded modules by file name.
    """
    root = os.environ.get('BASICSR_MH_REFERENCE')
    if not root:
        pytest.skip('set BASICSR_MH_REFERENCE to a checkout of the reference code (Liu-SD/multi-output-deblur)')
    folder = next((Path(root) / sub for sub in REFERENCE_FOLDERS[code] if all(
        (Path(root) / sub / f'{name}.py').is_file() for name in files)), None)
    if folder is None:
        pytest.skip(f'no {", ".join(name + ".py" for name in files)} found under BASICSR_MH_REFERENCE={root}')
    for module in needs:
        pytest.importorskip(module, reason=f'the reference {code} code needs {module}')
    if not package:
        yield {name: _exec_file(folder / f'{name}.py', f'_reference_{name}') for name in files}
        return
    names = [REFERENCE_PACKAGE] + [f'{REFERENCE_PACKAGE}.{name}' for name in files]
    saved = {name: sys.modules[name] for name in names if name in sys.modules}
    try:
        fake = types.ModuleType(REFERENCE_PACKAGE)
        fake.__path__ = [str(folder)]
        sys.modules[REFERENCE_PACKAGE] = fake
        loaded = {}
        for name in files:
            module = types.ModuleType(f'{REFERENCE_PACKAGE}.{name}')
            module.__file__ = str(folder / f'{name}.py')
            sys.modules[module.__name__] = module
            exec(compile((folder / f'{name}.py').read_text(), module.__file__, 'exec'), module.__dict__)
            loaded[name] = module
        yield loaded
    finally:
        for name in names:
            sys.modules.pop(name, None)
        sys.modules.update(saved)


@pytest.fixture(scope='module')
def one_thread():
    """Tiny tensors: one intra-op thread is as fast and avoids OpenMP oversubscription on a busy machine (a module
    uses it with ``pytestmark = pytest.mark.usefixtures('one_thread')``)."""
    import torch
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope='session')
def reference_code():
    """:func:`load_reference`, for module fixtures: ``with reference_code('nafnet', files, package=True) as m:``."""
    return load_reference


def state_layout(model_or_state):
    """``[(key, shape), ...]`` of a module's or a state dict's entries, in order (to compare checkpoint layouts)."""
    state = model_or_state.state_dict() if hasattr(model_or_state, 'state_dict') else model_or_state
    return [(key, tuple(value.shape)) for key, value in state.items()]


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
