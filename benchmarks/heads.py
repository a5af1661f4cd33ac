"""Heads that stay alive and outputs a user can deploy: head initialisation x assignment, several seeds, paired.

Configurations (NAFNet, the data and training of :mod:`benchmarks.quality`'s presets): the single-head baseline and
MH-C (K = 4, combine) with ``network_g.head_init`` in {backbone, identity} and ``train.pixel_opt.assignment`` in
{hard, relaxed (epsilon 0.05), annealed (temperature 1 -> 0 over the first half)}; ``--scores`` adds MH-C with
``head_scores: true``. Every configuration runs with every seed (same seed: same data order and initial backbone).

After training, the final network is evaluated on the validation set, per image: every head, the mean of the heads
(what ``export --head mean`` ships), and with scores the top-scored head and the per-pixel score-weighted mean.
Reported per configuration (mean ± std over seeds) and as the gain over the single-head run of the same seed
(paired): PSNR oracle (Eq. 7a), best single head (7b), worst head, the ground-truth-free outputs, and the least-winning
base head's share of the training samples in the last logged window (1/K = 25 % is an even split).

Writes ``benchmarks/results/heads_<preset>.json``, ``.md`` and ``.records.jsonl`` (one line per finished run, so a
stopped run keeps its finished runs; ``--summarize RECORDS`` rebuilds the tables). Usage:
``python benchmarks/heads.py --preset small|long|gpu [--seeds 0,1,2] [--iters N] [--jobs 2] [--scores] [--only
'LABEL;LABEL']``. Presets: ``smoke`` (120 iterations, 1 seed), ``small`` (600 iterations, 3 seeds: about 15 minutes
on 2 CPU cores), ``long`` (2000 iterations), ``gpu`` (NAFNet width 32, batch 8 of 128x128, 1500 iterations, the runs
in parallel on one GPU).
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
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import basicsr_mh  # noqa: F401,E402  (torchvision alias, before basicsr)
# isort: on
import quality  # noqa: E402
import torch  # noqa: E402

from basicsr_mh import demo  # noqa: E402

PRESETS = {
    'smoke': dict(quality.PRESETS['smoke'], iters=120, seeds=[0]),
    'small': dict(quality.PRESETS['small'], iters=600),
    'long': dict(quality.PRESETS['small'], iters=2000),
    'gpu': dict(quality.PRESETS['gpu'], iters=1500),
}
ASSIGNMENT_OPTIONS = {
    'hard': {
        'assignment': 'hard'
    },
    'relaxed': {
        'assignment': 'relaxed',
        'epsilon': 0.05
    },
    'annealed': {
        'assignment': 'annealed',
        'temperature': 1.0
    },
}


def configurations(with_scores=False):
    """``[(label, num_heads, combine, head_init, assignment, head_scores)]``."""
    out = [(f'single-head, {init}', 1, False, init, 'hard', False) for init in ('backbone', 'identity')]
    for init in ('backbone', 'identity'):
        for assignment in ASSIGNMENT_OPTIONS:
            out.append((f'MH-C, {init}, {assignment}', 4, True, init, assignment, False))
    if with_scores:
        out.append(('MH-C, identity, annealed, scores', 4, True, 'identity', 'annealed', True))
    return out


def make_options(data, preset, config, seed):
    """The option dict of one run: :func:`basicsr_mh.demo.make_options` plus the configuration's keys."""
    label, num_heads, combine, init, assignment, scores = config
    name = 'h_' + ''.join(c if c.isalnum() else '_' for c in label) + f'_s{seed}'
    opt = demo.make_options(name, data, preset, num_heads, combine, seed)
    opt['network_g']['head_init'] = init
    if scores:
        opt['network_g']['head_scores'] = True
    pixel = opt['train']['pixel_opt']
    pixel.update(ASSIGNMENT_OPTIONS[assignment])
    if assignment == 'annealed':
        pixel['anneal_iters'] = max(1, preset['iters'] // 2)
    opt['train']['dead_head_iters'] = 0  # the benchmark reports the shares itself
    opt['num_gpu'] = preset.get('num_gpu', 0)
    opt['datasets']['train']['num_worker_per_gpu'] = preset.get('workers', 0)
    opt['logger']['save_checkpoint_freq'] = 10**9
    return opt


@torch.no_grad()
def evaluate(model, opt):
    """PSNR (dB) of every ground-truth-free output on the validation set: ``{'heads': [per head], 'mean': ...,
    'scores': ..., 'scored_mean': ...}`` (means over images; the oracle and worst head per image too)."""
    from basicsr.data import build_dataset

    from basicsr_mh.metrics import RGB_PSNR_SSIM, per_head
    from basicsr_mh.tools.selection import SCORED_RULES, select
    dataset = build_dataset(dict(opt['datasets']['val'], phase='val', scale=1))
    net = getattr(model, 'net_g_ema', None) or model.net_g
    net.eval()
    psnr_opt = dict(RGB_PSNR_SSIM['psnr'])
    rows = []
    for index in range(len(dataset)):
        item = dataset[index]
        lq, gt = item['lq'].unsqueeze(0), item['gt'].unsqueeze(0)
        scores = None
        if getattr(model.get_bare_model(net), 'head_scores', False):
            heads, scores = net(lq.to(model.device), return_scores=True)
        else:
            heads = net(lq.to(model.device))
        heads = (heads if heads.dim() == 5 else heads.unsqueeze(1)).clamp(0, 1).cpu()
        outputs = [heads, heads.mean(dim=1, keepdim=True)]
        if scores is not None:
            outputs += [select(heads[0], rule, scores[0].cpu())[1][None, None] for rule in SCORED_RULES]
        values = per_head(torch.cat(outputs, dim=1), gt, psnr_opt)[0].double()
        rows.append(values)
    table = torch.stack(rows)  # (N, K' + 1 [+ 2])
    k = heads.shape[1]
    result = {
        'heads': table[:, :k].mean(dim=0).tolist(),
        'oracle': float(table[:, :k].max(dim=1).values.mean()),
        'worst': float(table[:, :k].min(dim=1).values.mean()),
        'mean': float(table[:, k].mean()),
    }
    result['best_single'] = max(result['heads'])
    if table.shape[1] > k + 1:
        result['scores'] = float(table[:, k + 1].mean())
        result['scored_mean'] = float(table[:, k + 2].mean())
    return result


def logged_base_shares(experiment_dir):
    """Base-head shares of the training samples in the last logged window: the last ``heads/base_h<k>`` values of
    the experiment's training log (a pair's win counts half for each of its heads), or None."""
    import glob
    import re
    shares = None
    for path in sorted(glob.glob(os.path.join(experiment_dir, 'train_*.log'))):
        with open(path) as f:
            for line in f:
                found = re.findall(r'heads/base_h(\d+): ([0-9.e+-]+)', line)
                if found:
                    shares = [float(v) for _, v in sorted(found, key=lambda kv: int(kv[0]))]
    return shares


def run_one(args):
    """Train and evaluate one (configuration, seed); appends the result to the records file and returns it."""
    work, data, preset, config, seed, records, threads = args
    torch.set_num_threads(threads)
    opt = make_options(data, preset, config, seed)
    model, _, seconds = demo.train_one(work, opt, verbose=False, label=f'{config[0]} seed {seed}')
    result = dict(label=config[0], seed=seed, seconds=seconds, **evaluate(model, opt))
    shares = logged_base_shares(os.path.join(work, 'experiments', opt['name'])) if config[1] > 1 else None
    if shares:
        result['base_shares'] = shares
        result['least_share'] = min(shares)
    with open(records, 'a') as f:
        f.write(json.dumps(result) + '\n')
    return result


#: What the tables report, in order: (key, header).
COLUMNS = (('oracle', 'oracle (7a)'), ('best_single', 'best single (7b)'), ('worst', 'worst head'),
           ('mean', 'mean of heads'), ('scores', 'top-scored head'), ('scored_mean', 'scored mean'))


def _cell(values, signed=False):
    if not values:
        return ''
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    fmt = '+.3f' if signed else '.2f'
    return f'{statistics.fmean(values):{fmt}} ± {std:.3f}'


def markdown(results, meta):
    """Tables: PSNR per configuration (mean ± std over seeds), gains over the single-head run of the same seed
    (each seed listed), and the least-winning base head's share."""
    labels = list(dict.fromkeys(r['label'] for r in results))
    by = {(r['label'], r['seed']): r for r in results}
    seeds = sorted({r['seed'] for r in results})
    columns = [(k, h) for k, h in COLUMNS if any(k in r for r in results)]
    p = meta['preset']
    lines = [
        f"Preset `{meta['preset_name']}`: NAFNet width {p['width']}, {p['iters']} iterations, batch {p['batch']} of "
        f"{p['patch']}x{p['patch']}, {p['num_train']} train / {p['num_val']} val generated pairs, seeds {seeds}; "
        f"blurry input PSNR {meta['input']['psnr']:.2f} dB; {sum(r['seconds'] for r in results) / 60:.0f} minutes of "
        f"training summed over the runs on {meta['device']}.", '',
        'PSNR (dB) on the validation set, mean ± std over seeds:', '',
        '| config | ' + ' | '.join(h for _, h in columns) + ' | least base head share |',
        '| --- |' + ' ---: |' * (len(columns) + 1)
    ]
    for label in labels:
        runs = [by[(label, s)] for s in seeds if (label, s) in by]
        cells = [_cell([r[k] for r in runs if k in r]) for k, _ in columns]
        shares = [r['least_share'] for r in runs if 'least_share' in r]
        share = f"{statistics.fmean(shares):.1%} (min {min(shares):.1%})" if shares else ''
        lines.append(f'| {label} | ' + ' | '.join(cells) + f' | {share} |')
    base_label = {init: f'single-head, {init}' for init in ('backbone', 'identity')}
    lines += [
        '', 'Gain over the single-head run of the same seed and the same head_init (the other one where that did not '
        'run; the single-head start makes no difference) (dB; mean ± std, then each seed):', '',
        '| config | ' + ' | '.join(h for _, h in columns) + ' |', '| --- |' + ' ---: |' * len(columns)
    ]
    for label in labels:
        if label.startswith('single-head'):
            continue
        init = 'identity' if ', identity' in label else 'backbone'
        if not any((base_label[init], s) in by for s in seeds):  # that baseline did not run: the other start's
            init = 'backbone' if init == 'identity' else 'identity'
        cells = []
        for key, _ in columns:
            gains = [
                by[(label, s)][key] - by[(base_label[init], s)]['best_single'] for s in seeds
                if (label, s) in by and (base_label[init], s) in by and key in by[(label, s)]
            ]
            cells.append(_cell(gains, signed=True) + (f" ({', '.join(f'{g:+.2f}' for g in gains)})" if gains else ''))
        lines.append(f'| {label} | ' + ' | '.join(cells) + ' |')
    if seeds and all((base_label[i], s) in by for i in base_label for s in seeds):
        gains = [
            by[(base_label['identity'], s)]['best_single'] - by[(base_label['backbone'], s)]['best_single']
            for s in seeds
        ]
        lines += [
            '', f"Single-head, identity minus backbone start: {_cell(gains, signed=True)} dB "
            f"({', '.join(f'{g:+.2f}' for g in gains)})."
        ]
    return '\n'.join(lines) + '\n'


def write_results(results, meta, out):
    """Write ``heads_<preset>.json`` and ``.md`` under ``out``; print the Markdown."""
    quality.write_json_md(
        os.path.join(out, f"heads_{meta['preset_name']}"), {
            'meta': meta,
            'results': results
        }, markdown(results, meta))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--preset', choices=sorted(PRESETS), default='smoke')
    parser.add_argument('--seeds', default=None)
    parser.add_argument('--iters', type=int, default=None)
    parser.add_argument(
        '--jobs',
        type=int,
        default=None,
        help='runs at a time, each in its own process (1 thread); '
        'default: the preset\'s (gpu: 9), else 2')
    parser.add_argument('--scores', action='store_true', help='add MH-C with head_scores: true')
    parser.add_argument('--only', default=None, help='semicolon-separated labels to run (default: all)')
    parser.add_argument('--records', default=None, help='records file (default: heads_<preset>.records.jsonl)')
    parser.add_argument('--summarize', default=None, metavar='RECORDS')
    parser.add_argument('--out', default=os.path.join(os.path.dirname(os.path.abspath(__file__)), 'results'))
    args = parser.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    if args.summarize:
        with open(args.summarize) as f:
            lines = [json.loads(line) for line in f]
        write_results([x for x in lines if 'meta' not in x], next(x['meta'] for x in lines if 'meta' in x), args.out)
        return 0
    preset = dict(PRESETS[args.preset])
    args.jobs = args.jobs or preset.get('jobs', 2)
    if preset.get('num_gpu') and not torch.cuda.is_available():
        raise SystemExit(f'--preset {args.preset} needs a CUDA device.')
    if args.seeds:
        preset['seeds'] = [int(s) for s in args.seeds.split(',')]
    if args.iters:
        preset['iters'] = args.iters
    work = tempfile.mkdtemp(prefix='basicsr_mh_heads_')
    start = time.time()
    data = quality.make_preset_data(work, preset)
    meta = {
        'preset_name': args.preset,
        'preset': preset,
        'device': (torch.cuda.get_device_name() if preset.get('num_gpu') else 'CPU') +
        f', {args.jobs} run(s) at a time, 1 CPU thread each',
        'torch': torch.__version__,
        'input': quality.input_scores(data)
    }
    records = args.records or os.path.join(args.out, f'heads_{args.preset}.records.jsonl')
    with open(records, 'a') as f:
        f.write(json.dumps({'meta': meta}) + '\n')
    configs = configurations(args.scores)
    if args.only:
        wanted = {w.strip() for w in args.only.split(';')}
        configs = [c for c in configs if c[0] in wanted]
    plan = [(work, data, preset, config, seed, records, 1) for seed in preset['seeds'] for config in configs]
    try:
        results = quality.map_jobs(run_one, plan, args.jobs)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    meta['seconds'] = time.time() - start
    write_results(results, meta, args.out)
    return 0


if __name__ == '__main__':
    sys.exit(main())
