"""Quality of multi-head training on the generated GoPro-style data: the paper's Fig. 5 ablation, several seeds.

Configurations: the single-head baseline (K = 1), K = 2..5 heads without combine (K' = K) and with combine
(K' = K(K+1)/2), all NAFNet with the same width, data, iterations and optimizer (the embedded option template of
:mod:`basicsr_mh.demo`; one data set made once by :func:`basicsr_mh.data.gopro_synth.make_dataset` with its default
generator settings, seed 0, never tuned for the method). Each configuration is trained with every seed in
``--seeds`` (same seed: same initial backbone draw and the same batches for every configuration), in-process with
:func:`basicsr_mh.train.train_pipeline`; the last validation gives PSNR/SSIM overall (Eq. 7a, each image's best head),
best single head (Eq. 7b) and worst head. Reported: mean and sample standard deviation over seeds.

Presets: ``smoke`` (~5 minutes on 2 CPU cores: width 8, 300 iterations, 2 seeds; shows that it runs, too short to rank),
``small`` (about an hour on 2 CPU cores: width 16, 600 iterations, 3 seeds, K = 1..5 with and without combine),
``gpu`` (one GPU, about 6 minutes: NAFNet width 32, batch 8 of 128x128, 1500 iterations, 3 seeds, single-head vs
K = 4 vs MH-C, the 9 runs in parallel processes; on an H200 with 16 CPU cores each run made 5-9 iterations/s),
``full`` (GPU: NAFNet-width32 of the paper, batch 8 of 256x256, 20000 iterations, 3 seeds, K = 1..5; many hours).

Every validation of every run is appended to ``quality_<preset>.records.jsonl`` as it happens; ``--summarize
RECORDS`` writes the tables from such a file, using the last iteration that every run reached (for a run stopped by
a time limit). Besides mean ± std per configuration, the tables give each configuration's gain over the single-head
run with the same seed (paired) next to the paper's margins, and the PSNR at every validation (training length).

Writes ``benchmarks/results/quality_<preset>.json``, ``.md``, ``.png`` (matplotlib with the Agg backend when it
is installed, else a cv2 drawing) and ``.records.jsonl``. Usage: ``python benchmarks/quality.py --preset smoke
[--seeds 0,1] [--ks 1,4] [--iters N] [--lr X] [--jobs N] [--keep]``; ``--summarize RECORDS``.
"""
import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time

# isort: off
import basicsr_mh  # noqa: F401  (torchvision alias, before basicsr)
# isort: on
import torch

from basicsr_mh import demo, figures

PRESETS = {
    'smoke':
    dict(
        width=8,
        iters=300,
        batch=4,
        patch=32,
        num_train=24,
        num_val=6,
        size=64,
        val_points=1,
        seeds=[0, 1],
        ks=[1, 2, 3, 4, 5],
        num_gpu=0),
    'small':
    dict(
        width=16,
        iters=600,
        batch=4,
        patch=64,
        num_train=96,
        num_val=12,
        size=128,
        val_points=3,
        seeds=[0, 1, 2],
        ks=[1, 2, 3, 4, 5],
        num_gpu=0),
    'gpu':
    dict(
        width=32,
        iters=1500,
        batch=8,
        patch=128,
        num_train=400,
        num_val=40,
        size=256,
        val_points=3,
        seeds=[0, 1, 2],
        ks=[1, 4],
        num_gpu=1,
        workers=2,
        jobs=9),
    'full':
    dict(
        width=32,
        iters=20000,
        batch=8,
        patch=256,
        num_train=800,
        num_val=100,
        size=(360, 640),
        val_points=4,
        seeds=[0, 1, 2],
        ks=[1, 2, 3, 4, 5],
        num_gpu=1,
        enc_blk_nums=[1, 1, 1, 28],
        workers=4),
}
METRIC_KEYS = ('psnr_overall', 'psnr', 'psnr_worst', 'ssim_overall', 'ssim', 'ssim_worst')


def configurations(ks):
    """``[(label, K, combine)]``: K = 1 baseline, then K = 2.. without and with combine."""
    out = [('single-head', 1, False)] if 1 in ks else []
    for combine in (False, True):
        out += [(f"K={k}{' +combine' if combine else ''}", k, combine) for k in ks if k > 1]
    return out


def run_one(work, data, preset, label, num_heads, combine, seed, on_validation=None):
    """Train one configuration with one seed; returns the final validation results (dict of floats)."""
    name = f"q_{label.replace('=', '').replace(' +', '_')}_s{seed}"
    opt = demo.make_options(name, data, preset, num_heads, combine, seed)
    opt['num_gpu'] = preset['num_gpu']
    if preset.get('enc_blk_nums'):
        opt['network_g']['enc_blk_nums'] = list(preset['enc_blk_nums'])
    opt['datasets']['train']['num_worker_per_gpu'] = preset.get('workers', 0)
    if preset.get('lr'):
        opt['train']['optim_g']['lr'] = preset['lr']
    _, curve, seconds = demo.train_one(
        work, opt, verbose=False, label=f'{label} seed {seed}', on_validation=on_validation)
    final = dict(curve[-1])
    final['curve'] = [dict(c) for c in curve]
    fill_single_head(final, num_heads, combine)
    final['seconds'] = seconds
    final['seed'] = seed
    final['num_outputs'] = num_heads * (num_heads + 1) // 2 if combine else num_heads
    return final


def fill_single_head(record, num_heads, combine):
    """One output (K = 1, no combine): Eq. 7a, 7b and the worst head are the same number; fill them in place."""
    if num_heads == 1 and not combine:
        for m in ('psnr', 'ssim'):
            record.setdefault(f'{m}_overall', record[m])
            record.setdefault(f'{m}_worst', record[m])
    return record


def _job(args):
    """One (configuration, seed) run, in a worker process or inline; appends each validation to ``records``."""
    work, data, preset, label, num_heads, combine, seed, records, threads = args
    torch.set_num_threads(threads)
    start = time.time()

    def write(record):
        line = dict(label=label, num_heads=num_heads, combine=combine, seed=seed, elapsed=time.time() - start, **record)
        with open(records, 'a') as f:
            f.write(json.dumps(line) + '\n')

    return run_one(work, data, preset, label, num_heads, combine, seed, on_validation=write)


def run_all(work, data, preset, records, jobs, threads):
    """Every configuration with every seed, ``jobs`` at a time (spawned processes when > 1): rows for the tables."""
    plan = [(label, k, combine, seed) for label, k, combine in configurations(preset['ks']) for seed in preset['seeds']]
    args = [(work, data, preset, label, k, combine, seed, records, threads) for label, k, combine, seed in plan]
    results = map_jobs(_job, args, jobs)
    rows = []
    for label, k, combine in configurations(preset['ks']):
        runs = [r for (lab, _, _, _), r in zip(plan, results) if lab == label]
        rows.append({
            'label': label,
            'num_heads': k,
            'combine': combine,
            'num_outputs': runs[0]['num_outputs'],
            'runs': runs,
            'aggregate': aggregate(runs)
        })
    return rows


def map_jobs(func, args, jobs):
    """``[func(a) for a in args]``, ``jobs`` at a time in spawned processes when ``jobs`` > 1."""
    if jobs <= 1:
        return [func(a) for a in args]
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor
    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context('spawn')) as pool:
        return list(pool.map(func, args))


def rows_from_records(path):
    """Rows (as :func:`run_all` returns) and meta from a records file, e.g. of a run stopped early.

    Each run's curve is what it validated; the tables use every run's record at the last iteration that all runs
    reached (``meta['iters_reached']``).
    """
    meta, runs = None, {}
    with open(path) as f:
        for line in f:
            item = json.loads(line)
            if 'meta' in item:
                meta = item['meta']
                continue
            key = (item['label'], item['seed'])
            runs.setdefault(key, {'head': item, 'curve': []})['curve'].append(item)
    if meta is None or not runs:
        raise SystemExit(f'{path}: no meta line or no validation records in it.')
    reached = min(max(r['iter'] for r in run['curve']) for run in runs.values())
    rows = []
    for label, k, combine in configurations(meta['preset']['ks']):
        chosen = []
        for seed in meta['preset']['seeds']:
            run = runs.get((label, seed))
            if run is None:
                continue
            final = fill_single_head(dict(next(r for r in run['curve'] if r['iter'] == reached)), k, combine)
            final['curve'] = run['curve']
            final['num_outputs'] = k * (k + 1) // 2 if combine else k
            chosen.append(final)
        if chosen:
            rows.append({
                'label': label,
                'num_heads': k,
                'combine': combine,
                'num_outputs': chosen[0]['num_outputs'],
                'runs': chosen,
                'aggregate': aggregate(chosen)
            })
    meta['iters_reached'] = reached
    meta['seconds'] = max(r['elapsed'] for run in runs.values() for r in run['curve'])
    return rows, meta


def aggregate(runs):
    """Mean and sample std over seeds of :data:`METRIC_KEYS`: ``{key: {'mean': m, 'std': s, 'values': [...]}}``."""
    out = {}
    for key in METRIC_KEYS:
        values = [r[key] for r in runs]
        out[key] = {
            'mean': statistics.fmean(values),
            'std': statistics.stdev(values) if len(values) > 1 else 0.0,
            'values': values
        }
    return out


def input_scores(data):
    """Mean PSNR/SSIM of the blurry validation inputs against their labels (the identity's score)."""
    from basicsr_mh.metrics import per_head
    val_gt, val_lq = data['val']
    names = sorted(os.listdir(val_gt))
    sums = {m: 0.0 for m in demo.TEMPLATE['val']['metrics']}
    for fname in names:
        gt = demo.to_tensor(demo.read_rgb(os.path.join(val_gt, fname)))
        lq = demo.to_tensor(demo.read_rgb(os.path.join(val_lq, fname)))
        for m, mopt in demo.TEMPLATE['val']['metrics'].items():
            sums[m] += float(per_head(lq.unsqueeze(1), gt, mopt)[0, 0])
    return {m: v / max(len(names), 1) for m, v in sums.items()}


def markdown(rows, meta):
    """Markdown table: per configuration, mean ± std of PSNR/SSIM overall, best single head and worst."""
    p = meta['preset']
    lines = [
        f"Preset `{meta['preset_name']}`: NAFNet width {p['width']}, {p['iters']} iterations, batch {p['batch']} of "
        f"{p['patch']}x{p['patch']}, {p['num_train']} train / {p['num_val']} val generated pairs of size {p['size']}, "
        f"seeds {p['seeds']}, learning rate {p.get('lr') or demo.TEMPLATE['train']['optim_g']['lr']:g}" +
        (f", stopped at iteration {meta['iters_reached']} (from the records)" if meta.get('iters_reached') else '') +
        f"; mean ± std over seeds; {meta['seconds']:.0f} s on {meta['device']}. Blurry input: "
        f"PSNR {meta['input']['psnr']:.2f}, SSIM {meta['input']['ssim']:.4f}.",
        '',
    ]
    wins = any(top_win_rate(row) for row in rows)  # the share of wins is recorded since the records have it
    lines += [
        "| config | K' | PSNR overall (7a) | PSNR best single (7b) | PSNR worst | SSIM overall (7a) | "
        'SSIM best single (7b) | SSIM worst |' + (" top head's wins |" if wins else ''),
        '| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |' + (' ---: |' if wins else ''),
    ]
    for row in rows:
        agg = row['aggregate']
        digits = {k: 2 if k.startswith('psnr') else 4 for k in METRIC_KEYS}
        cells = [f"{agg[k]['mean']:.{digits[k]}f} ± {agg[k]['std']:.{digits[k]}f}" for k in METRIC_KEYS]
        cells += [top_win_rate(row)] if wins else []
        lines.append(f"| {row['label']} | {row['num_outputs']} | " + ' | '.join(cells) + ' |')
    lines += gain_table(rows)
    lines += curve_table(rows)
    return '\n'.join(lines) + '\n'


def top_win_rate(row):
    """Mean over seeds of the largest head's share of training samples at the last validation ('' if unknown)."""
    tops = [
        max(v for k, v in run.items() if k.startswith('win_h')) for run in row['runs'] if any(
            k.startswith('win_h') for k in run)
    ]
    return f'{statistics.fmean(tops):.0%}' if tops else ''


#: The paper's gains of NAFNet-width64 MH-C over its single-head baseline on GoPro (dB): overall (7a), best head (7b).
PAPER_GAINS = (0.11, 0.04)


def paired_gains(rows, key):
    """Per configuration, the PSNR gain over the single-head run with the same seed: ``{label: [gain per seed]}``."""
    base = next((r for r in rows if r['num_heads'] == 1 and not r['combine']), None)
    if base is None:
        return {}
    base_by_seed = {run.get('seed'): run['psnr'] for run in base['runs']}
    return {
        row['label']:
        [run[key] - base_by_seed[run.get('seed')] for run in row['runs'] if run.get('seed') in base_by_seed]
        for row in rows if row is not base
    }


def gain_table(rows):
    """Markdown lines: gain over the single-head baseline, paired by seed (mean ± std), against the paper's."""
    overall, single = paired_gains(rows, 'psnr_overall'), paired_gains(rows, 'psnr')
    if not overall or not any(overall.values()):
        return []

    def cell(values):
        if not values:
            return ''
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        return f"{statistics.fmean(values):+.3f} ± {std:.3f} ({', '.join(f'{v:+.2f}' for v in values)})"

    lines = [
        '', f'PSNR gain over the single-head run with the same seed (dB; mean ± std over seeds, then each seed); '
        f'the paper: +{PAPER_GAINS[0]} overall, +{PAPER_GAINS[1]} best single head:', '',
        '| config | gain overall (7a) | gain best single head (7b) |', '| --- | ---: | ---: |'
    ]
    for label in overall:
        lines.append(f'| {label} | {cell(overall[label])} | {cell(single[label])} |')
    return lines


def curve_table(rows):
    """Markdown lines: mean over seeds of PSNR overall / best single head at every validation (training length)."""
    iters = sorted({c['iter'] for row in rows for run in row['runs'] for c in run.get('curve', [])})
    if len(iters) < 2:
        return []
    lines = [
        '', 'PSNR during training, mean over seeds, overall (7a) / best single head (7b), at iteration:', '',
        '| config | ' + ' | '.join(str(i) for i in iters) + ' |', '| --- |' + ' ---: |' * len(iters)
    ]
    for row in rows:
        cells = []
        for it in iters:
            points = [
                fill_single_head(dict(c), row['num_heads'], row['combine']) for run in row['runs']
                for c in run.get('curve', []) if c['iter'] == it
            ]
            cells.append(f"{statistics.fmean(p['psnr_overall'] for p in points):.2f} / "
                         f"{statistics.fmean(p['psnr'] for p in points):.2f}" if points else '')
        lines.append(f"| {row['label']} | " + ' | '.join(cells) + ' |')
    return lines


def plot(rows, path, title):
    """PSNR overall and best single head vs K, without and with combine (error bars: std over seeds)."""
    base = next((r for r in rows if r['num_heads'] == 1), None)
    series = []
    for combine, colours in ((False, ('#1f77b4', '#9ecae1')), (True, ('#d62728', '#fc9272'))):
        sel = sorted((r for r in rows if r['combine'] == combine and r['num_heads'] > 1), key=lambda r: r['num_heads'])
        if base is not None:
            sel = [base] + sel
        tag = 'combine' if combine else 'no combine'
        for key, colour, what in (('psnr_overall', colours[0], 'overall (7a)'), ('psnr', colours[1],
                                                                                 'best single head (7b)')):
            series.append((f'{what}, {tag}', [r['num_heads'] for r in sel], [r['aggregate'][key]['mean'] for r in sel],
                           [r['aggregate'][key]['std'] for r in sel], colour))
    plt = figures.pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    for label, xs, ys, errs, colour in series:
        ax.errorbar(
            xs,
            ys,
            yerr=errs,
            label=label,
            color=colour,
            marker='o',
            capsize=3,
            linestyle='-' if 'overall' in label else '--')
    ax.set_xlabel('K (heads; K = 1 is the single-head baseline)')
    ax.set_ylabel('PSNR (dB)')
    ax.set_xticks(sorted({x for _, xs, _, _, _ in series for x in xs}))
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return 'matplotlib'


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--preset', choices=sorted(PRESETS), default='smoke')
    parser.add_argument('--seeds', default=None, help='comma-separated training seeds (default: the preset\'s)')
    parser.add_argument('--iters', type=int, default=None, help='override the preset\'s iterations')
    parser.add_argument(
        '--ks', default=None, help='comma-separated K values (1 = the single-head baseline; '
        'default: the preset\'s)')
    parser.add_argument('--lr', type=float, default=None, help='override the learning rate (default 1e-3)')
    parser.add_argument(
        '--jobs',
        type=int,
        default=None,
        help='runs at a time, each in its own process (default: '
        'the preset\'s, 1 on the CPU presets)')
    parser.add_argument(
        '--threads',
        type=int,
        default=None,
        help='CPU threads per run (default: the idle cores '
        'with --jobs 1, else 1)')
    parser.add_argument(
        '--work',
        default=None,
        help='folder for data and experiments (default: a temp folder, '
        'removed at the end unless --keep)')
    parser.add_argument('--keep', action='store_true', help='keep the work folder')
    parser.add_argument(
        '--summarize',
        default=None,
        metavar='RECORDS',
        help='only write the tables and the plot from a records file (e.g. of a run stopped early)')
    parser.add_argument('--out', default=os.path.join(os.path.dirname(os.path.abspath(__file__)), 'results'))
    return parser.parse_args(argv)


def write_results(rows, meta, out):
    """Write ``quality_<preset>.json``, ``.md`` and ``.png`` under ``out``; print the Markdown."""
    os.makedirs(out, exist_ok=True)
    stem = os.path.join(out, f"quality_{meta['preset_name']}")
    meta['plot'] = plot(rows, stem + '.png', f"Fig. 5 ablation ({meta['preset_name']}): PSNR vs heads")
    write_json_md(stem, {'meta': meta, 'rows': rows}, markdown(rows, meta))


def write_json_md(stem, payload, text):
    """Write ``payload`` to ``<stem>.json`` and the Markdown ``text`` to ``<stem>.md``; print the Markdown."""
    with open(stem + '.json', 'w') as f:
        json.dump(payload, f, indent=1)
        f.write('\n')
    with open(stem + '.md', 'w') as f:
        f.write(text)
    print(text)


def make_preset_data(work, preset):
    """The generated GoPro-style pairs of a preset under ``work/data`` (generator seed 0, default settings), as
    ``{'train': (gt_dir, lq_dir), 'val': (gt_dir, lq_dir)}`` (what :func:`basicsr_mh.demo.make_options` takes)."""
    from basicsr_mh.data.gopro_synth import make_dataset
    paths = make_dataset(
        os.path.join(work, 'data'),
        num_train=preset['num_train'],
        num_val=preset['num_val'],
        size=preset['size'],
        seed=0,
        progress=False,
        workers=max(2, min(16,
                           os.cpu_count() or 2)))
    return {split: (paths[split]['gt'], paths[split]['lq']) for split in ('train', 'val')}


def main(argv=None):
    """Run the ablation (or summarize a records file); returns 0."""
    args = parse_args(argv)
    if args.summarize:
        rows, meta = rows_from_records(args.summarize)
        write_results(rows, meta, args.out)
        return 0
    preset = dict(PRESETS[args.preset])
    if args.seeds:
        preset['seeds'] = [int(s) for s in args.seeds.split(',')]
    if args.ks:
        preset['ks'] = [int(k) for k in args.ks.split(',')]
    if args.iters:
        preset['iters'] = args.iters
    if args.lr:
        preset['lr'] = args.lr
    if preset['num_gpu'] and not torch.cuda.is_available():
        raise SystemExit(f'--preset {args.preset} needs a CUDA device.')
    jobs = args.jobs or preset.get('jobs', 1)
    threads = args.threads or (demo.auto_threads() if jobs == 1 else 1)
    torch.set_num_threads(threads)
    work = args.work or tempfile.mkdtemp(prefix='basicsr_mh_quality_')
    os.makedirs(work, exist_ok=True)
    os.makedirs(args.out, exist_ok=True)
    start = time.time()
    data = make_preset_data(work, preset)
    print(f'data: {time.time() - start:.0f} s', flush=True)
    device = torch.cuda.get_device_name() if preset['num_gpu'] else f'CPU ({threads} thread(s) per run)'
    meta = {
        'preset_name': args.preset,
        'preset': preset,
        'device': device,
        'jobs': jobs,
        'torch': torch.__version__,
        'input': input_scores(data)
    }
    records = os.path.join(args.out, f'quality_{args.preset}.records.jsonl')
    with open(records, 'w') as f:
        f.write(json.dumps({'meta': dict(meta, seconds=0.0)}) + '\n')
    try:
        rows = run_all(work, data, preset, records, jobs, threads)
    finally:
        if not args.keep and not args.work:
            shutil.rmtree(work, ignore_errors=True)
    meta['seconds'] = time.time() - start
    write_results(rows, meta, args.out)
    return 0


if __name__ == '__main__':
    sys.exit(main())
