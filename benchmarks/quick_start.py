"""The README's quick start, measured as a user runs it: data, then ``basicsr train`` on the shipped option file.

For each seed (``--force_yml manual_seed=S``) in a fresh folder: ``python -m basicsr_mh.data.example_pairs --out
datasets/example`` and ``basicsr train -opt options/train/Example/NAFNet-width16-MH-C.yml`` as subprocesses, timed
(wall clock of the training command, so it includes start-up, validations and checkpoints). Reported per seed and as
mean ± std: the blurry input's PSNR on the validation images, the best single head (Eq. 7b, what ``psnr`` logs), the
oracle (Eq. 7a), their gains over the input, and the training time. ``--single`` adds the single-head twin
(``NAFNet-width16.yml``, a plain BasicSR file: random initialisation, no identity start) for the same seeds.

Writes ``benchmarks/results/quick_start.json`` and ``.md``. Usage: ``python benchmarks/quick_start.py [--seeds
10,11,12] [--single]``; about 3 minutes per run on 2 CPU cores. The runs are sequential (timings are the point);
other jobs on the machine slow them, so the time is reported with the machine's load average.
"""
import argparse
import cv2
import json
import numpy as np
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import quality  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, 'benchmarks', 'results')
FILES = {'MH-C': 'NAFNet-width16-MH-C.yml', 'single-head': 'NAFNet-width16.yml'}


def input_psnr(folder):
    """Mean PSNR (dB, RGB, uint8) of ``folder/lq/*`` against ``folder/gt/*``, as BasicSR's calculate_psnr."""
    values = []
    for name in sorted(os.listdir(os.path.join(folder, 'gt'))):
        gt, lq = (cv2.imread(os.path.join(folder, sub, name)).astype(np.float64) for sub in ('gt', 'lq'))
        values.append(10 * np.log10(255.**2 / ((gt - lq)**2).mean()))
    return float(np.mean(values))


def run_one(label, seed, basicsr):
    """One fresh folder, data and training; returns the record."""
    work = tempfile.mkdtemp(prefix='quick_start_')
    try:
        shutil.copytree(os.path.join(ROOT, 'options'), os.path.join(work, 'options'))
        subprocess.run([sys.executable, '-m', 'basicsr_mh.data.example_pairs', '--out', 'datasets/example'],
                       cwd=work,
                       check=True,
                       capture_output=True)
        opt = os.path.join('options', 'train', 'Example', FILES[label])
        load = os.getloadavg()[0]
        start = time.time()
        result = subprocess.run(
            basicsr + ['train', '-opt', opt, '--force_yml', f'manual_seed={seed}'],
            cwd=work,
            capture_output=True,
            text=True)
        seconds = time.time() - start
        if result.returncode:
            raise RuntimeError(result.stderr[-3000:])
        name = 'Example_' + FILES[label][:-4]
        with open(os.path.join(work, 'experiments', name, 'metrics.json')) as f:
            metrics = json.load(f)['datasets']['ExampleVal']
        blurry = input_psnr(os.path.join(work, 'datasets', 'example', 'val'))
        return dict(
            label=label,
            seed=seed,
            seconds=round(seconds, 1),
            load_before=round(load, 2),
            input=blurry,
            psnr=metrics['psnr'],
            psnr_overall=metrics.get('psnr_overall', metrics['psnr']),
            gain=metrics['psnr'] - blurry,
            gain_overall=metrics.get('psnr_overall', metrics['psnr']) - blurry)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _stat(values, digits=2):
    mean = statistics.mean(values)
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f'{mean:.{digits}f} ± {spread:.{digits}f}'


def markdown(records):
    lines = [
        '# Quick start, as the README runs it', '',
        'Fresh folder per run: `python -m basicsr_mh.data.example_pairs --out datasets/example`, then `basicsr train '
        '-opt options/train/Example/<file>` with `--force_yml manual_seed=<seed>` (2 CPU cores; time = the training '
        'command, wall clock). PSNR in dB on the 4 validation crops.', '',
        '| run | seed | input | best single head (7b) | oracle (7a) | gain 7b | time (s) | load before |',
        '| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |'
    ]
    for r in records:
        lines.append(f"| {r['label']} | {r['seed']} | {r['input']:.2f} | {r['psnr']:.2f} | {r['psnr_overall']:.2f} | "
                     f"{r['gain']:+.2f} | {r['seconds']:.0f} | {r['load_before']:.1f} |")
    lines += ['', '| run | seeds | gain 7b (mean ± std) | gain 7a | time (s) |', '| --- | ---: | ---: | ---: | ---: |']
    for label in dict.fromkeys(r['label'] for r in records):
        rows = [r for r in records if r['label'] == label]
        lines.append(f"| {label} | {len(rows)} | {_stat([r['gain'] for r in rows])} | "
                     f"{_stat([r['gain_overall'] for r in rows])} | {_stat([r['seconds'] for r in rows], 0)} |")
    return '\n'.join(lines) + '\n'


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--seeds', default='10,11,12', help='comma-separated manual_seed values (default 10,11,12)')
    parser.add_argument('--single', action='store_true', help='also the single-head twin')
    args = parser.parse_args(argv)
    exe = shutil.which('basicsr')
    basicsr = [exe] if exe else [sys.executable, '-c', 'from basicsr_mh_cli import entry; entry()']
    labels = ['MH-C'] + (['single-head'] if args.single else [])
    records = []
    for seed in (int(s) for s in args.seeds.split(',')):
        for label in labels:
            records.append(run_one(label, seed, basicsr))
            print(json.dumps(records[-1]), flush=True)
    os.makedirs(RESULTS, exist_ok=True)
    quality.write_json_md(os.path.join(RESULTS, 'quick_start'), {'records': records}, markdown(records))
    return 0


if __name__ == '__main__':
    sys.exit(main())
