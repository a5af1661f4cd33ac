"""Every CPU variant of the published option files trains with `basicsr train` (subprocesses)."""
import glob
import os
import os.path as osp
import re
import subprocess
import sys

# isort: off
import basicsr_mh  # noqa: F401  (before basicsr: installs the torchvision alias, fills the registries)
# isort: on
import pytest
import yaml
from basicsr.utils.options import ordered_yaml
from test_option_files import K_EXT, OPTIONS, load, missing_names, rel


def _cpu_run_options(path, pair_data, iters=3):
    """The CPU file with the data pointed at the test pairs and a few iterations (nothing else changed)."""
    opt = load(path)
    for phase, dataset in opt['datasets'].items():
        dataset['dataroot_gt'], dataset['dataroot_lq'] = pair_data['train' if phase == 'train' else 'val']
    opt['train']['total_iter'] = iters
    opt['val']['val_freq'] = iters
    opt['logger'].update(print_freq=1, save_checkpoint_freq=iters, use_tb_logger=False)
    return opt


@pytest.mark.slow
@pytest.mark.parametrize('path', sorted(glob.glob(osp.join(OPTIONS, 'train/CPU/*.yml'))), ids=rel)
def test_cpu_variant_trains(path, pair_data, tmp_path):
    """`basicsr train -opt` on the CPU file: 3 iterations, one validation, a checkpoint; MH-C logs every head."""
    opt = _cpu_run_options(path, pair_data)
    missing = missing_names(opt)
    if missing:
        pytest.skip(f'not registered yet: {", ".join(missing)}')
    opt_path = str(tmp_path / 'options.yml')
    with open(opt_path, 'w') as f:
        yaml.dump(opt, f, Dumper=ordered_yaml()[1])
    exe = osp.join(osp.dirname(sys.executable), 'basicsr')
    proc = subprocess.run([exe, 'train', '-opt', opt_path],
                          cwd=tmp_path,
                          capture_output=True,
                          text=True,
                          timeout=900,
                          env=dict(os.environ, BASICSR_MH_TRACEBACK='1', OMP_NUM_THREADS='1', MKL_NUM_THREADS='1'))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    exp = tmp_path / 'experiments' / opt['name']
    assert (exp / 'models' / 'net_g_latest.pth').is_file()
    logs = glob.glob(str(exp / f'train_{opt["name"]}_*.log'))
    assert len(logs) == 1
    text = open(logs[0]).read()
    validation = text.split('Validation ')[-1]
    assert re.search(r'# psnr: [-\d.]+', validation), validation[-2000:]
    if path.endswith('-MH-C.yml'):
        assert f'# psnr_h{K_EXT - 1}: ' in validation and '# psnr_overall: ' in validation
    else:
        assert '# psnr_h0: ' not in validation
