"""A BasicSR-based repository of a user's own: a package with a registered backbone of its own and a model class
subclassing SRModel, trained with ``num_heads: 4, combine: true`` (a) through a Real-ESRGAN-style ``train.py``
that imports basicsr_mh and calls BasicSR's own ``train_pipeline``, (b) through ``basicsr train --import``. Both reach
a validation with per-head metrics that keep the relations of Eq. 7. Also: the vendored-basicsr explanation."""
import os
import pytest
import re
import subprocess
import sys
import yaml
from conftest import srmodel_options

pytestmark = pytest.mark.slow  # subprocess trainings

ARCH = '''
import torch.nn as nn
from basicsr.utils.registry import ARCH_REGISTRY


@ARCH_REGISTRY.register()
class TinyDeblurNet(nn.Module):
    """Not one of basicsr-mh's backbones: conv body, an additive output conv, a global residual."""

    def __init__(self, channels=3, features=8):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(channels, features, 3, padding=1), nn.ReLU(inplace=True),
                                  nn.Conv2d(features, features, 3, padding=1), nn.ReLU(inplace=True))
        self.tail = nn.Conv2d(features, channels, 3, padding=1)

    def forward(self, x):
        return x + self.tail(self.body(x))
'''
MODEL = '''
from basicsr.models.sr_model import SRModel
from basicsr.utils.registry import MODEL_REGISTRY


@MODEL_REGISTRY.register()
class MyDeblurModel(SRModel):
    """A user's model: SRModel plus a helper of its own (it trains as SRModel)."""

    def describe(self):
        return 'my model'
'''
TRAIN_PY = '''
# A Real-ESRGAN-style train.py, as the README documents it.
import os.path as osp

import basicsr_mh  # noqa: F401  (first: BasicSR then accepts num_heads / combine)
import myproject.archs  # noqa: F401  (registers TinyDeblurNet)
import myproject.models  # noqa: F401  (registers MyDeblurModel)
from basicsr.train import train_pipeline

if __name__ == '__main__':
    train_pipeline(osp.abspath(osp.join(__file__, osp.pardir)))
'''


@pytest.fixture
def repo(tmp_path, pair_data):
    """A throwaway repository: myproject/{archs,models}.py, train.py, options/train.yml (4 heads, combined)."""
    package = tmp_path / 'myproject'
    package.mkdir()
    (package / '__init__.py').write_text('')
    (package / 'archs.py').write_text(ARCH)
    (package / 'models.py').write_text(MODEL)
    (tmp_path / 'train.py').write_text(TRAIN_PY)
    opt = srmodel_options(pair_data, 'MyRepo_MH-C', num_heads=None, total_iter=4, val_freq=4)
    opt['model_type'] = 'MyDeblurModel'
    opt['network_g'] = {'type': 'TinyDeblurNet', 'features': 8, 'num_heads': 4, 'combine': True}
    opt['logger']['use_tb_logger'] = False
    (tmp_path / 'options').mkdir()
    (tmp_path / 'options' / 'train.yml').write_text(yaml.safe_dump(opt, sort_keys=False))
    return tmp_path


def _run(args, cwd, **env):
    run_env = dict(os.environ, OMP_NUM_THREADS='1', **env)
    return subprocess.run(args, cwd=cwd, env=run_env, capture_output=True, text=True, timeout=600)


def _check_validation(log):
    """The last validation in a training log: 10 heads, Eq. 7b (best single = max over heads), 7a >= 7b."""
    values = {k: float(v) for k, v in re.findall(r'# (psnr\w*): ([0-9.]+)', log)}
    heads = [values[f'psnr_h{k}'] for k in range(10)]
    assert values['psnr'] == pytest.approx(max(heads), abs=1e-4)
    assert values['psnr_overall'] >= values['psnr'] - 1e-4 and values['psnr_worst'] <= min(heads) + 1e-4


def _log(repo, name='MyRepo_MH-C'):
    logs = list((repo / 'experiments' / name).glob('train_*.log'))
    assert len(logs) == 1, logs
    return logs[0].read_text()


def test_realesrgan_style_train_py_with_basicsr_pipeline(repo):
    result = _run([sys.executable, 'train.py', '-opt', 'options/train.yml'], repo)
    assert result.returncode == 0, result.stderr[-3000:]
    log = _log(repo)
    assert 'TinyDeblurNet gets 4 heads combined into 10 outputs' in log
    assert 'model_type MyDeblurModel upgraded to MultiHeadImageRestorationModel' in log
    _check_validation(log)
    assert (repo / 'experiments' / 'MyRepo_MH-C' / 'models' / 'net_g_latest.pth').is_file()


def test_basicsr_cli_with_import_flag(repo):
    exe = os.path.join(os.path.dirname(sys.executable), 'basicsr')
    launcher = [exe] if os.path.exists(exe) else [sys.executable, '-c', 'from basicsr_mh_cli import entry; entry()']
    missing = _run(launcher + ['train', '-opt', 'options/train.yml'], repo)  # without --import: named and explained
    assert missing.returncode == 1 and 'TinyDeblurNet" is not a registered architecture' in missing.stderr
    assert '--import' in missing.stderr and not (repo / 'experiments').exists()
    result = _run(
        launcher +
        ['train', '-opt', 'options/train.yml', '--import', 'myproject.archs', '--import', 'myproject.models'], repo)
    assert result.returncode == 0, result.stderr[-3000:]
    _check_validation(_log(repo))


def test_imports_list_in_the_option_file_and_a_missing_module(repo):
    opt = yaml.safe_load((repo / 'options' / 'train.yml').read_text())
    opt['imports'] = ['myproject.archs', 'myproject.models']
    (repo / 'options' / 'with_imports.yml').write_text(yaml.safe_dump(opt, sort_keys=False))
    result = _run([sys.executable, '-m', 'basicsr_mh.train', '-opt', 'options/with_imports.yml'], repo)
    assert result.returncode == 0, result.stderr[-3000:]
    _check_validation(_log(repo))
    bad = _run([
        sys.executable, '-c', 'from basicsr_mh_cli import entry; entry()', 'train', '-opt', 'options/train.yml',
        '--import', 'myproject.nothere'
    ], repo)
    assert bad.returncode == 1 and '--import myproject.nothere' in bad.stderr and 'Fix:' in bad.stderr


def test_vendored_basicsr_is_explained(tmp_path):
    """The NAFNet/HINet/Restormer repositories' own basicsr (no registries) first on the path: one explanation."""
    (tmp_path / 'basicsr' / 'models' / 'archs').mkdir(parents=True)
    (tmp_path / 'basicsr' / '__init__.py').write_text('')
    (tmp_path / 'basicsr' / 'version.py').write_text("__version__ = '1.2.0+386ca20'\n")
    result = _run([sys.executable, '-c', 'import basicsr_mh'], tmp_path, PYTHONPATH=str(tmp_path))
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert 'VendoredBasicSRError' in last and str(tmp_path / 'basicsr') in last
    assert 'NAFNet, HINet and Restormer' in last and 'separate environment' in last
