"""benchmarks/quality.py: tables from the validation records of runs (also of runs stopped by a time limit)."""
import importlib.util
import json
import os
import pytest
from conftest import REPO_ROOT

ROOT = REPO_ROOT


@pytest.fixture(scope='module')
def quality():
    spec = importlib.util.spec_from_file_location('quality_bench', os.path.join(ROOT, 'benchmarks', 'quality.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _record(label, k, combine, seed, it, psnr, overall=None, worst=None, elapsed=1.0):
    rec = dict(label=label, num_heads=k, combine=combine, seed=seed, elapsed=elapsed, iter=it, psnr=psnr, ssim=0.5)
    if overall is not None:
        rec.update(psnr_overall=overall, psnr_worst=worst, ssim_overall=0.6, ssim_worst=0.4)
    return rec


@pytest.fixture
def records(tmp_path):
    """Single-head reached iteration 20 with both seeds; MH-C (K = 2, combine) only 10: the tables use 10."""
    meta = {
        'preset_name': 'unit',
        'preset': dict(width=8, iters=20, batch=2, patch=16, num_train=4, num_val=2, size=32, seeds=[0, 1], ks=[1, 2]),
        'device': 'CPU',
        'jobs': 2,
        'torch': 'x',
        'input': {
            'psnr': 20.0,
            'ssim': 0.4
        }
    }
    header = {'meta': dict(meta, seconds=0.0)}
    lines = [
        header,
        _record('single-head', 1, False, 0, 10, 21.0),
        _record('single-head', 1, False, 1, 10, 23.0),
        _record('single-head', 1, False, 0, 20, 25.0, elapsed=9.0),
        _record('single-head', 1, False, 1, 20, 26.0, elapsed=9.5),
        dict(_record('K=2 +combine', 2, True, 0, 10, 22.0, 22.5, 18.0), win_h0=0.6, win_h1=0.3, win_h2=0.1),
        dict(_record('K=2 +combine', 2, True, 1, 10, 24.0, 24.5, 19.0), win_h0=0.2, win_h1=0.8, win_h2=0.0),
    ]
    path = tmp_path / 'quality_unit.records.jsonl'
    path.write_text(''.join(json.dumps(line) + '\n' for line in lines))
    return path


def test_rows_use_the_last_iteration_every_run_reached(quality, records):
    rows, meta = quality.rows_from_records(str(records))
    assert meta['iters_reached'] == 10 and meta['seconds'] == 9.5
    assert [r['label'] for r in rows] == ['single-head', 'K=2 +combine']
    single, mhc = rows
    assert single['aggregate']['psnr']['mean'] == pytest.approx(22.0)
    assert single['aggregate']['psnr']['std'] == pytest.approx(2**0.5)
    # one output: overall (7a) and worst are the single head's value
    assert single['aggregate']['psnr_overall']['values'] == [21.0, 23.0]
    assert single['aggregate']['psnr_worst']['values'] == [21.0, 23.0]
    assert mhc['num_outputs'] == 3
    assert mhc['aggregate']['psnr_overall']['mean'] == pytest.approx(23.5)
    assert mhc['aggregate']['psnr_worst']['mean'] == pytest.approx(18.5)
    assert [len(run['curve']) for run in single['runs']] == [2, 2]


def test_summarize_writes_tables_and_plot(quality, records, tmp_path):
    out = tmp_path / 'out'
    assert quality.main(['--summarize', str(records), '--out', str(out)]) == 0
    text = (out / 'quality_unit.md').read_text()
    assert 'stopped at iteration 10 (from the records)' in text
    assert ('| K=2 +combine | 3 | 23.50 ± 1.41 | 23.00 ± 1.41 | 18.50 ± 0.71 | 0.6000 ± 0.0000 | 0.5000 ± 0.0000 | '
            '0.4000 ± 0.0000 | 70% |') in text  # last column: the top head's share of wins, mean over seeds
    # gains paired by seed (same seed, same iteration)
    assert '| K=2 +combine | +1.500 ± 0.000 (+1.50, +1.50) | +1.000 ± 0.000 (+1.00, +1.00) |' in text
    # the training-length table: mean over seeds at each validation, overall / best single head
    assert '| single-head | 22.00 / 22.00 | 25.50 / 25.50 |' in text
    assert '| K=2 +combine | 23.50 / 23.00 |  |' in text
    data = json.loads((out / 'quality_unit.json').read_text())
    assert data['meta']['iters_reached'] == 10
    assert (out / 'quality_unit.png').stat().st_size > 1000
