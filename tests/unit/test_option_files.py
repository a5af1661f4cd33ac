"""The shipped option files: they parse, MH-C files differ from their twins only where they must, the published
hyper-parameters are there, every network builds, and the CPU-sized variants train a few iterations.

Backbones, model types, datasets and schedulers that are not registered yet are skipped with the missing name.
"""
import glob
import os.path as osp
import re
from conftest import REPO_ROOT

# isort: off
import basicsr_mh  # noqa: F401  (before basicsr: installs the torchvision alias, fills the registries)
# isort: on
import pytest
import torch
import yaml
from basicsr.archs import build_network
from basicsr.utils.options import ordered_yaml
from basicsr.utils.registry import ARCH_REGISTRY, DATASET_REGISTRY, LOSS_REGISTRY, MODEL_REGISTRY

from basicsr_mh.options import upgrade_options

ROOT = REPO_ROOT
OPTIONS = osp.join(ROOT, 'options')
MODELS = ('NAFNet-width32', 'NAFNet-width64', 'HINet', 'Restormer', 'MPRNet')
PAPER_DIRS = ('train/GoPro', 'test/GoPro', 'test/HIDE')
ALL_DIRS = PAPER_DIRS + ('train/CPU', )
ALL_FILES = sorted(glob.glob(osp.join(OPTIONS, '**', '*.yml'), recursive=True))
K, K_EXT = 4, 10

# Parameter counts of the published backbones (their reference implementations, counted once).
PUBLISHED_PARAMS = {
    'NAFNet-width32': 17111907,
    'NAFNet-width64': 67888835,
    'HINet': 88668806,
    'Restormer': 26126644,
    'MPRNet': 20127073,
}
TRAIN_NAMES = {
    'NAFNet-width32': 'NAFNet-GoPro-width32',
    'NAFNet-width64': 'NAFNet-GoPro-width64',
    'HINet': 'GoPro-HINet',
    'Restormer': 'Deblurring_Restormer',
    'MPRNet': 'Deblurring_MPRNet',
}


@pytest.fixture(autouse=True)
def one_torch_thread():
    """One intra-op thread: on a small, busy machine two spinning threads make these tiny networks 10-40x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def rel(path):
    return osp.relpath(path, OPTIONS)


def load(path):
    with open(path) as f:
        return yaml.load(f, Loader=ordered_yaml()[0])


def flatten(tree, prefix=''):
    """{'a': {'b': 1}} -> {'a.b': 1} (lists stay values)."""
    out = {}
    for key, value in tree.items():
        name = f'{prefix}{key}'
        if isinstance(value, dict) and value:
            out.update(flatten(value, name + '.'))
        else:
            out[name] = value
    return out


def diff_keys(a, b):
    fa, fb = flatten(a), flatten(b)
    return {k for k in set(fa) | set(fb) if fa.get(k, '<absent>') != fb.get(k, '<absent>')}


def model_of(path):
    stem = osp.basename(path)[:-4]
    return stem[:-len('-MH-C')] if stem.endswith('-MH-C') else stem


def twin_pairs():
    pairs = []
    for path in ALL_FILES:
        if path.endswith('-MH-C.yml') and osp.isfile(path[:-len('-MH-C.yml')] + '.yml'):
            pairs.append((path[:-len('-MH-C.yml')] + '.yml', path))
    return pairs


def scheduler_known(name):
    """Whether ``train.scheduler.type`` ``name`` is available (basicsr-mh's list, else BasicSR's module)."""
    try:
        from basicsr_mh.models.lr_scheduler import known_scheduler_types
        return name in known_scheduler_types()
    except ImportError:
        from basicsr.models import lr_scheduler
        return hasattr(lr_scheduler, name)


def missing_names(opt, phases=('train', 'val', 'test')):
    """Registered-name requirements of an option dict that are not met yet (model, network, datasets, loss, sched)."""
    missing = []
    net = opt['network_g']
    arch = net['backbone']['type'] if net['type'] == 'MultiHeadArch' else net['type']
    if arch not in ARCH_REGISTRY:
        missing.append(f'arch {arch}')
    if opt.get('model_type') not in MODEL_REGISTRY:
        missing.append(f'model {opt.get("model_type")}')
    for phase, dataset in opt['datasets'].items():
        if phase.split('_')[0] in phases and dataset['type'] not in DATASET_REGISTRY:
            missing.append(f'dataset {dataset["type"]}')
    train = opt.get('train') or {}
    if 'pixel_opt' in train and train['pixel_opt']['type'] not in LOSS_REGISTRY:
        missing.append(f'loss {train["pixel_opt"]["type"]}')
    if 'scheduler' in train and not scheduler_known(train['scheduler']['type']):
        missing.append(f'scheduler {train["scheduler"]["type"]}')
    return missing


def count_params(net_opt):
    """Parameter count of a network built from ``net_opt``: on the meta device (no memory, no init), or on the CPU
    for a backbone that runs a forward pass while it is built (which the meta device cannot always do)."""
    try:
        with torch.device('meta'):
            net = build_network(dict(net_opt))
    except Exception:  # noqa: BLE001  (e.g. *Local backbones calibrate with a forward pass)
        net = build_network(dict(net_opt))
    return sum(p.numel() for p in net.parameters())


# ----------------------------------------------------------------------------------------------------- the files
def test_every_family_has_its_files():
    for folder in ALL_DIRS:
        for model in MODELS:
            for suffix in ('', '-MH-C'):
                assert osp.isfile(osp.join(OPTIONS, folder, f'{model}{suffix}.yml')), f'{folder}/{model}{suffix}.yml'


@pytest.mark.parametrize('path', ALL_FILES, ids=rel)
def test_parses_with_basicsr_loader(path):
    opt = load(path)
    assert isinstance(opt, dict), f'{rel(path)} is not a YAML mapping'
    if 'network_g' not in opt:
        return  # not a train/test option file (e.g. a demo configuration)
    for key in ('name', 'datasets', 'path'):
        assert key in opt, f'{rel(path)} has no `{key}`'
    assert opt['network_g'].get('type'), rel(path)
    for phase, dataset in opt['datasets'].items():
        for key in ('dataroot_gt', 'dataroot_lq'):
            assert not osp.isabs(dataset[key]), f'{rel(path)}: datasets.{phase}.{key} must be relative'


@pytest.mark.parametrize('path', [p for p in ALL_FILES if rel(osp.dirname(p)) in ALL_DIRS], ids=rel)
def test_header_and_width(path):
    with open(path) as f:
        text = f.read()
    assert text.startswith('#'), f'{rel(path)}: the header comment (what, how to run, the paper\'s number) is missing'
    assert re.search(r'^# Run: ', text, re.M) and re.search(r'^# Paper', text, re.M), rel(path)
    too_long = [i + 1 for i, line in enumerate(text.split('\n')) if len(line) > 120]
    assert not too_long, f'{rel(path)}: lines over 120 columns: {too_long}'


def test_experiment_names_are_unique():
    names = {}
    for path in ALL_FILES:
        name = load(path).get('name')
        if name is None:
            continue
        assert name not in names, f'{rel(path)} and {names[name]} share the name {name}'
        names[name] = rel(path)


@pytest.mark.parametrize('single,multi', twin_pairs(), ids=lambda p: rel(p))
def test_mhc_file_differs_only_in_name_and_heads(single, multi):
    a, b = load(single), load(multi)
    allowed = {'name', 'network_g.num_heads', 'network_g.combine'}
    if '/test/' in single:
        allowed.add('path.pretrain_network_g')  # the MH-C test loads the MH-C training's weights
    changed = diff_keys(a, b)
    assert changed <= allowed, f'{rel(multi)} also differs in {sorted(changed - allowed)}'
    assert 'network_g.num_heads' in changed and 'network_g.combine' in changed
    assert b['network_g']['num_heads'] == K and b['network_g']['combine'] is True
    assert 'num_heads' not in a['network_g'] and 'combine' not in a['network_g']
    if a['name'].endswith('-test'):
        assert b['name'] == a['name'][:-len('-test')] + '-MH-C-test'
    else:
        assert b['name'] == a['name'] + '-MH-C'


@pytest.mark.parametrize('folder', ('test/GoPro', 'test/HIDE'))
@pytest.mark.parametrize('model', MODELS)
@pytest.mark.parametrize('suffix', ('', '-MH-C'))
def test_test_file_matches_its_training(folder, model, suffix):
    test = load(osp.join(OPTIONS, folder, f'{model}{suffix}.yml'))
    train = load(osp.join(OPTIONS, 'train/GoPro', f'{model}{suffix}.yml'))
    assert test['path']['pretrain_network_g'] == f'experiments/{train["name"]}/models/net_g_latest.pth'
    assert train['name'] == TRAIN_NAMES[model] + suffix
    assert test['model_type'] == train['model_type']
    # the same network; the published test files swap the TLC variant (NAFNetLocal <-> NAFNet, HINetLocal -> HINet)
    tnet, pnet = dict(test['network_g']), dict(train['network_g'])
    tnet.pop('train_size', None)
    assert tnet.pop('type').replace('Local', '') == pnet.pop('type').replace('Local', '')
    assert tnet == pnet
    (phase, dataset), = test['datasets'].items()
    assert phase == 'test'
    where = 'GoPro' if folder.endswith('GoPro') else 'HIDE'
    for key in ('dataroot_gt', 'dataroot_lq'):
        assert dataset[key].startswith(f'./datasets/{where}/test/'), dataset[key]
    assert dataset['type'] == ('Dataset_PairedImage' if model == 'Restormer' else 'PairedImageDataset')
    lmdb = model.startswith('NAFNet') or model == 'HINet'  # the NAFNet/HINet test files read lmdb, as published
    assert dataset['io_backend']['type'] == ('lmdb' if lmdb else 'disk')
    assert dataset['dataroot_gt'].endswith('target.lmdb' if lmdb else 'target')
    metrics = test['val']['metrics']
    assert set(metrics) == {'psnr', 'ssim'}
    assert metrics['psnr']['type'] == 'calculate_psnr' and metrics['ssim']['type'] == 'calculate_ssim'
    for metric in metrics.values():
        assert metric['crop_border'] == 0 and metric['test_y_channel'] is False


def _train(model):
    return load(osp.join(OPTIONS, 'train/GoPro', f'{model}.yml'))


def test_published_nafnet_hyper_parameters():
    for model, width, iters, gpus, seed in (('NAFNet-width32', 32, 200000, 4, 42), ('NAFNet-width64', 64, 400000, 8,
                                                                                    10)):
        opt = _train(model)
        assert opt['model_type'] == 'ImageRestorationModel' and opt['num_gpu'] == gpus and opt['manual_seed'] == seed
        assert opt['network_g'] == {
            'type': 'NAFNetLocal',
            'width': width,
            'enc_blk_nums': [1, 1, 1, 28],
            'middle_blk_num': 1,
            'dec_blk_nums': [1, 1, 1, 1]
        }
        train = opt['train']
        assert train['optim_g'] == {'type': 'AdamW', 'lr': 1e-3, 'weight_decay': 1e-3, 'betas': [0.9, 0.9]}
        assert train['scheduler'] == {'type': 'TrueCosineAnnealingLR', 'T_max': iters, 'eta_min': 1e-7}
        assert train['total_iter'] == iters and train['warmup_iter'] == -1
        assert train['pixel_opt'] == {'type': 'PSNRLoss', 'loss_weight': 1, 'reduction': 'mean'}
        data = opt['datasets']['train']
        assert data['type'] == 'PairedImageDataset' and data['io_backend']['type'] == 'lmdb'
        assert data['dataroot_gt'] == './datasets/GoPro/train/sharp_crops.lmdb'
        assert data['dataroot_lq'] == './datasets/GoPro/train/blur_crops.lmdb'
        assert (data['gt_size'], data['batch_size_per_gpu'], data['use_hflip'], data['use_rot']) == (256, 8, True, True)
        assert opt['val']['val_freq'] == 2e4


def test_published_hinet_hyper_parameters():
    opt = _train('HINet')
    assert opt['model_type'] == 'ImageRestorationModel' and opt['num_gpu'] == 8
    assert opt['network_g'] == {'type': 'HINetLocal', 'wf': 64, 'hin_position_left': 3, 'hin_position_right': 4}
    train = opt['train']
    assert train['optim_g'] == {'type': 'Adam', 'lr': 2e-4, 'weight_decay': 0, 'betas': [0.9, 0.99]}
    assert train['scheduler'] == {'type': 'TrueCosineAnnealingLR', 'T_max': 400000, 'eta_min': 1e-7}
    assert train['total_iter'] == 400000
    assert train['pixel_opt'] == {'type': 'PSNRLoss', 'loss_weight': 0.5, 'reduction': 'mean'}
    data = opt['datasets']['train']
    assert (data['gt_size'], data['batch_size_per_gpu'], data['io_backend']['type']) == (256, 8, 'lmdb')


def test_published_restormer_hyper_parameters():
    opt = _train('Restormer')
    assert opt['model_type'] == 'ImageCleanModel' and opt['manual_seed'] == 100
    net = opt['network_g']
    assert (net['type'], net['dim'], net['num_blocks'], net['num_refinement_blocks'],
            net['heads']) == ('Restormer', 48, [4, 6, 6, 8], 4, [1, 2, 4, 8])
    assert (net['ffn_expansion_factor'], net['bias'], net['LayerNorm_type']) == (2.66, False, 'WithBias')
    data = opt['datasets']['train']
    assert data['type'] == 'Dataset_PairedImage' and data['geometric_augs'] is True
    assert data['mini_batch_sizes'] == [8, 5, 4, 2, 1, 1]
    assert data['iters'] == [92000, 64000, 48000, 36000, 36000, 24000]
    assert data['gt_sizes'] == [128, 160, 192, 256, 320, 384] and data['gt_size'] == 384
    assert sum(data['iters']) == opt['train']['total_iter'] == 300000
    train = opt['train']
    assert train['scheduler'] == {
        'type': 'CosineAnnealingRestartCyclicLR',
        'periods': [92000, 208000],
        'restart_weights': [1, 1],
        'eta_mins': [0.0003, 0.000001]
    }
    assert train['optim_g'] == {'type': 'AdamW', 'lr': 3e-4, 'weight_decay': 1e-4, 'betas': [0.9, 0.999]}
    assert train['use_grad_clip'] is True and train['mixing_augs']['mixup'] is False
    assert train['pixel_opt'] == {'type': 'L1Loss', 'loss_weight': 1, 'reduction': 'mean'}
    assert opt['val']['window_size'] == 8 and opt['datasets']['val']['type'] == 'Dataset_PairedImage'


def test_published_mprnet_hyper_parameters():
    opt = _train('MPRNet')
    assert opt['model_type'] == 'ImageRestorationModel'
    assert opt['network_g'] == {
        'type': 'MPRNet',
        'in_c': 3,
        'out_c': 3,
        'n_feat': 96,
        'scale_unetfeats': 48,
        'scale_orsnetfeats': 32,
        'num_cab': 8,
        'kernel_size': 3,
        'reduction': 4,
        'bias': False
    }
    data = opt['datasets']['train']
    assert data['type'] == 'PairedImageDataset' and data['gt_size'] == 256
    assert opt['num_gpu'] * data['batch_size_per_gpu'] == 16
    train = opt['train']
    assert train['optim_g']['type'] == 'Adam' and train['optim_g']['lr'] == 2e-4
    assert train['optim_g']['betas'] == [0.9, 0.999]
    assert train['scheduler']['eta_min'] == 1e-6 and train['scheduler']['periods'] == [train['total_iter']]
    epoch = -(-2103 // 16)  # MPRNet's loader keeps the last partial batch
    assert train['total_iter'] == 3000 * epoch and train['warmup_iter'] == 3 * epoch
    assert opt['val']['val_freq'] == 20 * epoch
    assert train['pixel_opt']['type'] == 'CharbonnierLoss' and train['pixel_opt']['eps'] == 1e-6
    assert train['use_grad_clip'] is False
    with open(osp.join(OPTIONS, 'train/GoPro/MPRNet.yml')) as f:
        assert 'loss is NOT included' in f.read()  # the edge loss, said in the header


# CPU variants: what may differ from the full-size file (paths, sizes, iteration counts, num_gpu, logging cadence)
CPU_MAY_DIFFER = re.compile(
    r'^(name|num_gpu|datasets\.\w+\.(name|dataroot_gt|dataroot_lq|io_backend\.type|gt_size|gt_sizes|mini_batch_sizes'
    r'|iters|batch_size_per_gpu|num_worker_per_gpu|dataset_enlarge_ratio)'
    r'|network_g\.(width|enc_blk_nums|middle_blk_num|dec_blk_nums|train_size|wf|dim|num_blocks|num_refinement_blocks'
    r'|n_feat|scale_unetfeats|scale_orsnetfeats|num_cab)'
    r'|train\.(total_iter|warmup_iter|scheduler\.(T_max|periods))'
    r'|val\.(val_freq|grids|crop_size_h|crop_size_w|max_minibatch)|logger\.(print_freq|save_checkpoint_freq))$')


@pytest.mark.parametrize('path', sorted(glob.glob(osp.join(OPTIONS, 'train/CPU/*.yml'))), ids=rel)
def test_cpu_variant_differs_only_in_paths_sizes_and_iterations(path):
    cpu, full = load(path), load(osp.join(OPTIONS, 'train/GoPro', osp.basename(path)))
    changed = diff_keys(cpu, full)
    odd = sorted(k for k in changed if not CPU_MAY_DIFFER.match(k))
    assert not odd, f'{rel(path)} differs from the full-size file in {odd}'
    assert cpu['num_gpu'] == 0 and cpu['train']['total_iter'] <= 40
    for phase, dataset in cpu['datasets'].items():
        assert dataset['dataroot_gt'].startswith('./datasets/example/')
        assert dataset['dataroot_gt'].endswith('/gt') and dataset['dataroot_lq'].endswith('/lq')
        assert dataset['io_backend']['type'] == 'disk'
    train_data = cpu['datasets']['train']
    assert 32 <= train_data['gt_size'] <= 64 and 2 <= train_data['batch_size_per_gpu'] <= 4
    assert max(train_data.get('gt_sizes', [0])) <= train_data['gt_size']
    if 'iters' in train_data:
        assert sum(train_data['iters']) == cpu['train']['total_iter']


# ----------------------------------------------------------------------------------------------------- networks
@pytest.mark.parametrize('path', ALL_FILES, ids=rel)
def test_network_builds(path):
    """upgrade_options + build_network: published parameter counts; MH-C files give MultiHeadArch(K=4, combine)."""
    opt = load(path)
    if 'network_g' not in opt:
        pytest.skip('no network_g: not a train/test option file')
    opt['is_train'] = '/train/' in path
    missing = [m for m in missing_names(opt) if m.startswith('arch')]
    if missing:
        pytest.skip(f'not registered yet: {", ".join(missing)}')
    notes = []
    upgrade_options(opt, notes=notes)
    net = opt['network_g']
    if path.endswith('-MH-C.yml'):
        assert net['type'] == 'MultiHeadArch' and net['num_heads'] == K and net['combine'] is True
        backbone = net['backbone']
    else:
        assert net['type'] != 'MultiHeadArch'
        backbone = net
    count = count_params(backbone)
    if any(f'/{folder}/' in path for folder in PAPER_DIRS):
        assert count == PUBLISHED_PARAMS[model_of(path)], f'{rel(path)}: {count} parameters'
    else:
        assert count > 0


MULTIHEAD_BUILDS = [(folder, model) for folder in ('train/CPU', 'train/GoPro') for model in MODELS]
# The reference multi-head models (Liu-SD/multi-output-deblur: MHNAFNet, MHHINet, MHRestormer, MHMPRNet with
# n_heads 4, combinate_heads true) have exactly these counts, so their checkpoints load with strict=True.
REFERENCE_MH_PARAMS = {
    'NAFNet-width32': 17114508,
    'NAFNet-width64': 67894028,
    'HINet': 88684376,
    'Restormer': 26134420,
    'MPRNet': 20140897,
}


@pytest.mark.parametrize('folder,model', MULTIHEAD_BUILDS, ids=lambda v: v)
def test_multihead_network_builds(folder, model):
    """The training MH-C networks built for real (the heads' build-time probe needs numbers; the test files'
    networks, the same but for TLC, are checked on the meta device above): the backbone's parameter names, only head
    layers (and, in SAM-style stages, the layer that reads their image) widened by K in one channel dimension, the
    reference multi-head models' parameter counts, K' = 10 outputs per stage."""
    opt = load(osp.join(OPTIONS, folder, f'{model}-MH-C.yml'))
    missing = [m for m in missing_names(opt) if m.startswith('arch')]
    if missing:
        pytest.skip(f'not registered yet: {", ".join(missing)}')
    upgrade_options(opt, notes=[])
    net = build_network(dict(opt['network_g']))
    base = build_network(dict(opt['network_g']['backbone']))
    mh_shapes = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    base_shapes = {k: tuple(v.shape) for k, v in base.state_dict().items()}
    assert set(mh_shapes) == set(base_shapes)
    changed = {k for k in base_shapes if mh_shapes[k] != base_shapes[k]}
    assert changed, 'no layer grew'
    for key in changed:
        grown = [i for i, (a, b) in enumerate(zip(base_shapes[key], mh_shapes[key])) if a != b]
        assert len(grown) == 1 and mh_shapes[key][grown[0]] == K * base_shapes[key][grown[0]], key
    assert any(key.startswith(tuple(f'{name}.' for name in net.head_layer_names)) for key in changed)
    if folder == 'train/GoPro':
        assert sum(p.numel() for p in net.parameters()) == REFERENCE_MH_PARAMS[model]
    size = 32 if folder == 'train/CPU' else 64
    with torch.no_grad():
        out = net.eval()(torch.rand(1, 3, size, size))
    for stage in (out if isinstance(out, (list, tuple)) else [out]):
        assert stage.shape == (1, K_EXT, 3, size, size)


# ----------------------------------------------------------------------------------------------------- CPU training
