"""The README's quick-start option file, shortened to 500 iterations: every base head keeps winning and the model
ends above its input."""
import json
import os
import pytest
import torch
from conftest import REPO_ROOT
from test_heads_alive import PSNR

from basicsr_mh.metrics import per_head
from basicsr_mh.train import train_pipeline


@pytest.mark.slow
def test_quick_start_with_defaults_keeps_every_base_head_winning(tmp_path, monkeypatch):
    """The README's quick start (example pairs, default head_init and assignment), shortened to 500 of its 2500
    iterations (the whole run is measured by benchmarks/quick_start.py): in the last logged window every base head
    wins at least 5 % of the samples, and the model ends above its blurry input."""
    import re
    import shutil
    import yaml

    from basicsr_mh.data.example_pairs import make_example_dataset
    monkeypatch.chdir(tmp_path)
    make_example_dataset(str(tmp_path / 'datasets' / 'example'))
    root = REPO_ROOT
    shutil.copytree(os.path.join(root, 'options'), tmp_path / 'options')
    opt_path = tmp_path / 'options' / 'train' / 'Example' / 'NAFNet-width16-MH-C.yml'
    opt = yaml.safe_load(opt_path.read_text())
    assert 'head_init' not in opt['network_g'] and 'assignment' not in opt['train']['pixel_opt']  # the defaults
    iters = 500
    torch.set_num_threads(1)
    train_pipeline(
        str(tmp_path), [
            '-opt',
            str(opt_path), '--force_yml', f'train:total_iter={iters}', f'train:scheduler:periods=[{iters}]',
            f'val:val_freq={iters}', f'logger:save_checkpoint_freq={iters}'
        ])
    log = next((tmp_path / 'experiments' / opt['name']).glob('train_*.log')).read_text()
    windows = [line for line in log.splitlines() if 'heads/base_h' in line]
    assert re.search(rf'iter:\s+{iters},', windows[-1])  # the last window of the run
    shares = [float(v) for v in re.findall(r'heads/base_h\d+: ([0-9.e+-]+)', windows[-1])]
    assert len(shares) == 4 and min(shares) >= 0.05, shares
    metrics = json.loads((tmp_path / 'experiments' / opt['name'] / 'metrics.json').read_text())
    blurry = _input_psnr(tmp_path / 'datasets' / 'example' / 'val')
    assert metrics['datasets']['ExampleVal']['psnr'] > blurry


def _input_psnr(folder):
    import cv2
    values = []
    for name in sorted(os.listdir(folder / 'gt')):
        gt, lq = (
            torch.from_numpy(cv2.imread(str(folder / sub / name))[..., ::-1].copy()).permute(2, 0, 1)[None] / 255.
            for sub in ('gt', 'lq'))
        values.append(float(per_head(lq.unsqueeze(1), gt, PSNR)[0, 0]))
    return sum(values) / len(values)
