"""The forks' option files trained and validated by `basicsr train` (subprocesses)."""
import glob
import math
import os
import pytest
import re
import subprocess
import sys
from conftest import write_options
from test_fork_models import K_EXT, nafnet_fork_options, restormer_fork_options

RUNS = {
    'nafnet_single': (nafnet_fork_options, False),
    'nafnet_mhc': (nafnet_fork_options, True),
    'restormer_mhc': (restormer_fork_options, True),
}


@pytest.fixture(scope='module')
def fork_runs(pair_data, tmp_path_factory):
    """`basicsr train -opt` on each fork-style file, run side by side; {key: (log text, completed process)}."""
    workdir = tmp_path_factory.mktemp('fork_runs')
    exe = os.path.join(os.path.dirname(sys.executable), 'basicsr')
    env = dict(os.environ, OMP_NUM_THREADS='1')  # three runs side by side on few cores
    procs = {}
    for key, (make, heads) in RUNS.items():
        path = write_options(workdir / f'{key}.yml', make(pair_data, key, heads))
        procs[key] = subprocess.Popen([exe, 'train', '-opt', path],
                                      cwd=workdir,
                                      stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE,
                                      text=True,
                                      env=env)
    results = {}
    for key, proc in procs.items():
        _, stderr = proc.communicate(timeout=600)
        logs = glob.glob(str(workdir / 'experiments' / key / f'train_{key}_*.log'))
        results[key] = (open(logs[0]).read() if logs else '', proc.returncode, stderr)
    return results


def _last_metrics(text):
    blocks = text.split('Validation TinyVal')
    assert len(blocks) > 1, 'no validation block in the log'
    values = {}
    for name, value in re.findall(r'# (\w+): ([-\d.inf]+)', blocks[-1]):
        values.setdefault(name, float(value))
    return values


@pytest.mark.slow
@pytest.mark.parametrize('key', list(RUNS))
def test_fork_file_trains_and_validates(fork_runs, key):
    text, returncode, stderr = fork_runs[key]
    assert returncode == 0, stderr[-3000:]
    values = _last_metrics(text)
    heads = RUNS[key][1]
    if not heads:
        assert set(values) == {'psnr', 'ssim'}  # the home repo's single-head metrics
        assert 'upgraded' not in text
        return
    model_type = 'ImageRestorationModel' if key.startswith('nafnet') else 'ImageCleanModel'
    assert text.count(f'model_type {model_type} upgraded to its multi-head form') == 1
    for m in ('psnr', 'ssim'):
        per_head = [values[f'{m}_h{k}'] for k in range(K_EXT)]
        assert f'{m}_h{K_EXT}' not in values
        assert values[m] == pytest.approx(max(per_head), abs=1.5e-4)  # Eq. 7b
        assert values[f'{m}_overall'] >= values[m] - 1e-4  # Eq. 7a
        assert values[f'{m}_worst'] <= min(per_head) + 1e-4
    assert 0 <= values['best_head'] < K_EXT


@pytest.mark.slow
def test_nafnet_file_details(fork_runs):
    text = fork_runs['nafnet_single'][0]
    assert 'use_flip (NAFNet/HINet\'s name) read as BasicSR\'s use_hflip' in text
    # TrueCosineAnnealingLR: iteration 5 trains with lr(4) = eta + (lr0 - eta)(1 + cos(4 pi / 10)) / 2
    lr5 = 1e-7 + (1e-3 - 1e-7) * (1 + math.cos(math.pi * 4 / 10)) / 2
    assert re.search(r'iter:\s+5, lr:\(' + re.escape(f'{lr5:.3e}'), text)


@pytest.mark.slow
def test_restormer_file_details(fork_runs):
    text = fork_runs['restormer_mhc'][0]
    assert 'stage 1/2 from iter 1: patch size 16, batch size 2 per GPU' in text
    assert 'stage 2/2 from iter 5: patch size 32, batch size 1 per GPU' in text
    assert 'Mixing augmentation: mixup' in text
    assert re.search(r'iter:\s+5, lr:\(1\.000e-03', text)  # first cycle: constant at its floor eta_mins[0]
