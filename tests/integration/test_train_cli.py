"""End to end: `basicsr train -opt` on an upstream SRModel option file with `num_heads`/`combine` added."""
import glob
import os
import pytest
import re
import subprocess
import sys
import torch
from conftest import srmodel_options, write_options

pytestmark = pytest.mark.slow  # subprocess runs of training / the CLI

K, K_EXT = 4, 10


def _metric_block(log_text):
    """Parse the last 'Validation' block of a BasicSR log into {name: value}."""
    blocks = log_text.split('Validation TinyVal')
    assert len(blocks) > 1, 'no validation block in the log'
    values = {}
    for name, value in re.findall(r'# (\w+): ([-\d.inf]+)', blocks[-1]):
        values.setdefault(name, float(value))
    return values


@pytest.fixture(scope='module')
def trained_run(pair_data, tmp_path_factory):
    """Run the console script once: NAFNet width 8, K=4 combine, L1Loss, 20 iterations, validation every 10."""
    workdir = tmp_path_factory.mktemp('run')
    opt_path = write_options(workdir / 'train_sr.yml', srmodel_options(pair_data, 'mhc_cli'))
    exe = os.path.join(os.path.dirname(sys.executable), 'basicsr')
    proc = subprocess.run([exe, 'train', '-opt', opt_path], cwd=workdir, capture_output=True, text=True, timeout=600)
    return workdir, proc


def test_train_exits_zero(trained_run):
    _, proc = trained_run
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_log_has_upgrade_lines_and_eq7_metrics(trained_run):
    workdir, proc = trained_run
    logs = glob.glob(str(workdir / 'experiments' / 'mhc_cli' / 'train_mhc_cli_*.log'))
    assert len(logs) == 1
    text = open(logs[0]).read()
    assert 'model_type SRModel upgraded to MultiHeadImageRestorationModel' in text
    assert 'wrapped in MinHeadLoss' in text
    assert 'heads/win_h0' in text
    values = _metric_block(text)
    for m in ('psnr', 'ssim'):
        heads = [values[f'{m}_h{k}'] for k in range(K_EXT)]
        assert f'{m}_h{K_EXT}' not in values
        # Eq. 7b: the reported metric is the best single head's mean (4 decimals in the log)
        assert values[m] == pytest.approx(max(heads), abs=1.5e-4)
        # Eq. 7a: per-image best >= best head mean >= any head mean >= per-image worst
        assert values[f'{m}_overall'] >= values[m] - 1e-4
        assert values[f'{m}_worst'] <= min(heads) + 1e-4
    assert int(values['best_head']) == max(range(K_EXT), key=lambda k: values[f'psnr_h{k}'])


def test_files_on_disk(trained_run):
    workdir, _ = trained_run
    exp = workdir / 'experiments' / 'mhc_cli'
    for it in (10, 20, 'latest'):
        ckpt = torch.load(exp / 'models' / f'net_g_{it}.pth', map_location='cpu', weights_only=True)
        assert set(ckpt) == {'params', 'params_ema', 'multihead'}
        assert ckpt['params']['ending.weight'].shape[0] == K * 3
        assert ckpt['multihead']['num_heads'] == K and ckpt['multihead']['combine'] is True
        assert 0 <= ckpt['multihead']['best_head'] < K_EXT
    assert (exp / 'training_states' / '20.state').is_file()
    images = glob.glob(str(exp / 'visualization' / '*' / '*_20.png'))
    assert len(images) == 2
    events = glob.glob(str(workdir / 'tb_logger' / 'mhc_cli' / 'events.out.tfevents.*'))
    assert events and os.path.getsize(events[0]) > 0
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(os.path.dirname(events[0]))
    acc.Reload()
    tags = acc.Tags()['scalars']
    assert 'metrics/TinyVal/psnr_overall' in tags and 'metrics/TinyVal/ssim_h9' in tags
    assert 'heads/win_h0' in tags


def test_test_command_on_checkpoint(trained_run, pair_data):
    workdir, _ = trained_run
    opt = srmodel_options(pair_data, 'mhc_cli_test')
    opt['path']['pretrain_network_g'] = str(workdir / 'experiments' / 'mhc_cli' / 'models' / 'net_g_latest.pth')
    opt['path']['param_key_g'] = 'params_ema'
    opt['val']['save_all_heads'] = True
    del opt['datasets']['train']
    opt_path = write_options(workdir / 'test_sr.yml', opt)
    proc = subprocess.run([sys.executable, '-m', 'basicsr_mh.test', '-opt', opt_path],
                          cwd=workdir,
                          capture_output=True,
                          text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    images = glob.glob(str(workdir / 'results' / 'mhc_cli_test' / 'visualization' / 'TinyVal' / '*.png'))
    assert len(images) == 2 * K_EXT
