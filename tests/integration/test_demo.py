"""``basicsr-mh demo --quick``: report, pictures and the Eq. 7 ordering of the reported numbers."""
import cv2
import json
import numpy as np
import os
import pytest
import re
import shutil
import subprocess
import sys

pytestmark = pytest.mark.slow  # subprocess runs of training / the CLI


def _table_value(report, label):
    """(PSNR, SSIM) of the summary-table row whose first cell starts with ``label``."""
    for line in report.splitlines():
        cells = [c.strip() for c in line.strip().strip('|').split('|')]
        if len(cells) == 3 and cells[0].startswith(label):
            return float(cells[1]), float(cells[2])
    raise AssertionError(f'no row {label!r} in report.md')


@pytest.fixture(scope='module')
def demo_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp('demo')
    out = root / 'tmp'
    exe = shutil.which('basicsr-mh')
    launcher = [exe] if exe else [sys.executable, '-c', 'from basicsr_mh_cli import entry; entry()']
    cmd = launcher + ['demo', '--quick', '--out', 'tmp']
    proc = subprocess.run(cmd, cwd=str(root), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert 'report.md' in proc.stdout
    return out


def test_report_and_table(demo_dir):
    report = (demo_dir / 'report.md').read_text()
    single = _table_value(report, 'single-head baseline')
    overall = _table_value(report, 'MH-C overall, Eq. 7a')
    best = _table_value(report, 'MH-C best single head, Eq. 7b')
    worst = _table_value(report, 'MH-C worst')
    for k in range(2):  # PSNR, SSIM (2 / 4 decimals in the table)
        assert overall[k] >= best[k] >= worst[k]
    assert single[0] > 0
    heads = re.findall(r'^\| h(\d+) \((\d)\+(\d)\)', report, flags=re.M)
    assert [int(h[0]) for h in heads] == list(range(10))
    info = json.loads((demo_dir / 'report.json').read_text())
    mh = info['results']['mhc']
    assert mh['psnr_overall'] >= mh['psnr'] >= mh['psnr_worst']
    assert mh['psnr'] == pytest.approx(max(mh[f'psnr_h{k}'] for k in range(10)))
    assert len(info['curves']['single']) == len(info['curves']['mhc']) >= 2


def test_pictures(demo_dir):
    size = json.loads((demo_dir / 'report.json').read_text())['preset']['size']
    for name in ('blurry', 'sharp', 'single_head', 'best_head'):
        img = cv2.imread(str(demo_dir / f'{name}.png'), cv2.IMREAD_UNCHANGED)
        assert img is not None and img.shape == (size, size, 3), name
    for name in ('curve', 'overview', 'heads_heatmap'):  # figures with axes, titles and colour bars
        img = cv2.imread(str(demo_dir / f'{name}.png'))
        assert img is not None and min(img.shape[:2]) > 200, name
    crop = json.loads((demo_dir / 'report.json').read_text())['picture']['crop']
    top, left, window = crop['window']
    sharp, blurry = (
        cv2.imread(str(demo_dir / f'{n}.png'))[top:top + window, left:left + window].astype(float)
        for n in ('sharp', 'blurry'))
    assert crop['blurry'] == pytest.approx(10 * np.log10(255.**2 / ((sharp - blurry)**2).mean()), abs=1e-6)
    assert f"blurry {crop['blurry']:.2f}" in (demo_dir / 'report.md').read_text()
    assert os.path.isfile(demo_dir / 'options' / 'demo_NAFNet-width8-MH-C.yml')


def test_refuses_non_empty_out(demo_dir):
    before = sorted(os.listdir(demo_dir))
    from basicsr_mh.demo import main
    assert main(['--quick', '--out', str(demo_dir)]) == 1
    assert sorted(os.listdir(demo_dir)) == before
