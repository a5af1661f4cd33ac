"""``basicsr-mh analyze``: what the heads learned, on a validation/test set with ground truth.

Writes to ``--out`` (default ``results/<name>/analysis``):

* ``heatmaps/<image>_residual.png`` (the paper's Fig. 3): ``sum_{i<j} |h_i - h_j|`` over all pairs of base heads,
  averaged over channels and normalized by its maximum, image size, colour map ``inferno``;
* ``heatmaps/<image>_diff_<i>-<j>.png`` (Fig. 4): the signed difference ``h_i - h_j`` of one pair (``--pair``, default
  the pair that differs most in that image), normalized by its largest magnitude, blue negative / red positive;
* ``heatmaps/<image>_figure.png``: input, the image's best head, ground truth, and both maps with colour bars;
* ``psnr_matrix.png`` (Fig. 6): K x K mean PSNR; cell (i, j) the combined head ``(h_i + h_j) / 2`` (with
  ``combine: false`` computed from the two heads' outputs), the diagonal the single heads;
* ``win_rates.png``: how often each extended head is an image's best (the oracle's pick, Eq. 7a);
* ``table.json`` and ``table.md``: every metric of ``val.metrics`` (default PSNR, SSIM) for the oracle (Eq. 7a:
  each image's best head), the best single head (Eq. 7b), the checkpoint's ``best_head``, the selection rules
  ``consensus``/``mean``/``sharpness`` (:mod:`basicsr_mh.tools.selection`), and the per-image worst head.
"""
import cv2
import json
import math
import numpy as np
import os
import torch
from tqdm import tqdm

from basicsr_mh.archs.multihead_layers import image_scores
from basicsr_mh.inference import InferenceRunner
from basicsr_mh.metrics import per_head
from basicsr_mh_cli.parsers import analyze_parser
from ..figures import (RESIDUAL_CMAP, SIGNED_CMAP, colorize, most_different_pair, plot_bars, plot_comparison,
                       plot_matrix, residual_map, signed_difference, to_uint8)
from ..heads import MULTIHEAD_META_KEY
from ..metrics import RGB_PSNR_SSIM
from .common import ToolError, head_name, head_pairs, load_model, read_options, run_tool
from .guards import output_file
from .infer import pick_device
from .selection import RULES, SCORED_RULES, select

DEFAULT_METRICS = RGB_PSNR_SSIM


def write_heatmaps(folder, name, base, pair=None, panels=()):
    """Fig. 3 and Fig. 4 of one image as image-size PNGs, and ``<name>_figure.png``: the ``panels`` ([(label, uint8
    (H, W, 3) RGB), ...]) beside both maps with their colour bars. Returns the three paths (None without two heads).
    """
    if base.shape[0] < 2:
        return None, None, None
    os.makedirs(folder, exist_ok=True)
    res = residual_map(base).numpy()
    res_path = output_file(folder, f'{name}_residual.png')
    cv2.imwrite(res_path, colorize(res, RESIDUAL_CMAP, 0.0, float(res.max())))
    i, j = pair if pair is not None else most_different_pair(base)
    diff = signed_difference(base, (i, j)).numpy()
    bound = max(float(np.abs(diff).max()), 1e-12)
    diff_path = output_file(folder, f'{name}_diff_{i}-{j}.png')
    cv2.imwrite(diff_path, colorize(diff, SIGNED_CMAP, -bound, bound))
    figure_path = output_file(folder, f'{name}_figure.png')
    plot_comparison(
        figure_path,
        list(panels), [('Fig. 3: sum |h_i - h_j| (all pairs)', res, RESIDUAL_CMAP, 0.0, float(res.max())),
                       (f'Fig. 4: h{i} - h{j} (mean over RGB)', diff, SIGNED_CMAP, -bound, bound)],
        title=name)
    return res_path, diff_path, figure_path


def build_eval_dataset(opt, name=None):
    """The validation/test dataset ``name`` of ``opt['datasets']`` (default: the first that is not ``train``)."""
    from basicsr.data import build_dataset
    datasets = {k: v for k, v in (opt.get('datasets') or {}).items() if isinstance(v, dict)}
    candidates = {k: v for k, v in datasets.items() if not k.startswith('train')}
    if name is not None:
        matches = {k: v for k, v in candidates.items() if name in (k, v.get('name'))}
        if not matches:
            raise ToolError(f'--dataset {name}: not among {[v.get("name", k) for k, v in candidates.items()]}.')
        candidates = matches
    if not candidates:
        raise ToolError('the option file has no validation/test dataset (datasets.val / datasets.test_1 with '
                        'dataroot_gt and dataroot_lq).')
    key, dataset_opt = next(iter(candidates.items()))
    dataset_opt = dict(dataset_opt, phase='val', scale=opt.get('scale', 1))
    dataset_opt.setdefault('name', key)
    return build_dataset(dataset_opt)


def _metric_options(opt):
    metrics = ((opt.get('val') or {}).get('metrics')) or DEFAULT_METRICS
    psnr_opt = next((m for m in metrics.values() if m.get('type') == 'calculate_psnr'), DEFAULT_METRICS['psnr'])
    return dict(metrics), psnr_opt


def _scores(images, gt, metrics):
    """(K, C, H, W) images vs (C, H, W) gt -> {metric: (K,) float64 numpy}."""
    return {
        m: per_head(images.unsqueeze(0), gt.unsqueeze(0), dict(o))[0].double().cpu().numpy()
        for m, o in metrics.items()
    }


def analyze(opt,
            out_dir,
            ckpt=None,
            param_key=None,
            max_images=None,
            dataset=None,
            device=None,
            tile=0,
            tile_overlap=32,
            pair=None,
            progress=True,
            trust=False):
    """Run the analysis; returns the table dict written to ``table.json``. ``trust``: ``--trust-checkpoint``."""
    net, _, checkpoint, key, ckpt_path = load_model(opt, ckpt, param_key, trust)
    data = build_eval_dataset(opt, dataset)
    with_scores = bool(getattr(net, 'head_scores', False))
    rules = [r for r in RULES if with_scores or r not in SCORED_RULES]
    runner = InferenceRunner.for_images(net, pick_device(device), tile, tile_overlap,
                                        (opt.get('val') or {}).get('window_size'), with_scores)
    metrics, psnr_opt = _metric_options(opt)
    first = next(iter(metrics))
    pairs = head_pairs(net)
    num_outputs = len(pairs)
    num_heads = getattr(net, 'num_heads', 1)
    base_index = [pairs.index((k, k)) for k in range(num_heads)]
    if pair is not None and not all(0 <= p < num_heads for p in pair):
        raise ToolError(f'--pair {pair[0]},{pair[1]}: base heads are 0..{num_heads - 1}.')
    best_head = int((checkpoint.get(MULTIHEAD_META_KEY) or {}).get('best_head', 0)) % num_outputs
    os.makedirs(out_dir, exist_ok=True)
    heat_dir = os.path.join(out_dir, 'heatmaps')
    count = len(data) if max_images is None else min(len(data), max_images)
    per_image, head_scores, matrix_sum = [], {m: [] for m in metrics}, np.zeros((num_heads, num_heads))
    rule_scores = {r: {m: [] for m in metrics} for r in rules}
    wins = np.zeros(num_outputs)
    calibration = {'top_is_oracle': [], 'oracle_probability': []}
    for n in tqdm(range(count), unit='img', desc='analyze', disable=not progress):
        item = data[n]
        if 'gt' not in item:
            raise ToolError('the dataset has no ground truth (gt); analyze needs dataroot_gt.')
        name = os.path.splitext(os.path.basename(item.get('lq_path', f'{n:04d}')))[0]
        logits = None
        if with_scores:
            heads, logits = runner(item['lq'].unsqueeze(0))
            heads, logits = heads[0], logits[0]
        else:
            heads = runner(item['lq'].unsqueeze(0))[0]
        gt = item['gt'][..., :heads.shape[-2], :heads.shape[-1]].float()
        heads = heads[..., :gt.shape[-2], :gt.shape[-1]]
        if logits is not None:
            logits = logits[..., :gt.shape[-2], :gt.shape[-1]]
        scores = _scores(heads, gt, metrics)
        for m in metrics:
            head_scores[m].append(scores[m])
        winner = int(np.argmax(scores[first]))
        wins[winner] += 1
        record = {'image': name, 'oracle_head': winner}
        if logits is not None:
            probabilities = torch.softmax(image_scores(logits[None])[0], dim=0)
            calibration['top_is_oracle'].append(float(int(probabilities.argmax()) == winner))
            calibration['oracle_probability'].append(float(probabilities[winner]))
        for rule in rules:
            index, image = select(heads, rule, logits)
            rs = {
                m: float(scores[m][index])
                for m in metrics
            } if index >= 0 else {
                m: float(v[0])
                for m, v in _scores(image.unsqueeze(0), gt, metrics).items()
            }
            for m in metrics:
                rule_scores[rule][m].append(rs[m])
            record[rule] = rule if index < 0 else index
        # Fig. 6: pair (i, j) is the combined head (an extended head with combine, else averaged here)
        psnr_heads = scores[first] if metrics[first] is psnr_opt else _scores(heads, gt, {'p': psnr_opt})['p']
        missing = [(i, j) for i in range(num_heads) for j in range(i) if (i, j) not in pairs]
        extra = {}
        if missing:
            stack = torch.stack([(heads[base_index[i]] + heads[base_index[j]]) * 0.5 for i, j in missing])
            extra = dict(zip(missing, _scores(stack, gt, {'p': psnr_opt})['p']))
        for i in range(num_heads):
            for j in range(i + 1):
                value = psnr_heads[pairs.index((i, j))] if (i, j) in pairs else extra[(i, j)]
                matrix_sum[i, j] += value
                matrix_sum[j, i] += value if i != j else 0
        panels = [('input', to_uint8(item['lq'][..., :gt.shape[-2], :gt.shape[-1]])),
                  (f'oracle head {head_name(net, winner)}', to_uint8(heads[winner])), ('ground truth', to_uint8(gt))]
        res_path, diff_path, figure_path = write_heatmaps(heat_dir, name, heads[base_index], pair, panels)
        if res_path:
            record.update(
                residual_heatmap=os.path.relpath(res_path, out_dir),
                pair_heatmap=os.path.relpath(diff_path, out_dir),
                figure=os.path.relpath(figure_path, out_dir))
        per_image.append(record)
    if not count:
        raise ToolError('the dataset is empty.')
    table = _summarize(net, metrics, head_scores, rule_scores, best_head, wins, matrix_sum / count, count)
    if with_scores:  # how often the top-scored head is the oracle's pick, and the mean probability of that pick
        table['score_calibration'] = {k: float(np.mean(v)) for k, v in calibration.items()}
        table['score_calibration']['chance'] = 1.0 / num_outputs
    table.update(checkpoint=os.path.abspath(ckpt_path), param_key=key, images=per_image)
    _write_outputs(out_dir, table, net)
    return table


def _summarize(net, metrics, head_scores, rule_scores, best_head, wins, matrix, count):
    rows, heads, best_single = {}, {}, {}
    for m in metrics:
        scores = np.stack(head_scores[m])  # (N, K')
        means = scores.mean(axis=0)
        best_single[m] = int(np.argmax(means))
        rows.setdefault('oracle (Eq. 7a)', {})[m] = float(scores.max(axis=1).mean())
        rows.setdefault('best single head (Eq. 7b)', {})[m] = float(means.max())
        rows.setdefault(f'checkpoint best_head {head_name(net, best_head)}', {})[m] = float(means[best_head])
        for rule in rule_scores:
            rows.setdefault(f'select {rule}', {})[m] = float(np.mean(rule_scores[rule][m]))
        rows.setdefault('worst head per image', {})[m] = float(scores.min(axis=1).mean())
        for k, v in enumerate(means):
            heads.setdefault(head_name(net, k), {})[m] = float(v)
    return {
        'num_images': count,
        'metrics': list(metrics),
        'rows': rows,
        'best_single_head': {
            m: head_name(net, k)
            for m, k in best_single.items()
        },
        'heads': heads,
        'win_rates': {
            head_name(net, k): float(w / count)
            for k, w in enumerate(wins)
        },
        'psnr_matrix': [[float(v) for v in row] for row in matrix],
        'num_heads': int(getattr(net, 'num_heads', 1)),
        'combine': bool(getattr(net, 'combine', False)),
    }


def _write_outputs(out_dir, table, net):
    with open(os.path.join(out_dir, 'table.json'), 'w') as f:
        json.dump(table, f, indent=2)
    metrics = table['metrics']
    lines = [f'| rule | {" | ".join(metrics)} |', '| --- |' + ' --- |' * len(metrics)]
    for rule, values in table['rows'].items():
        cells = ' | '.join('nan' if not math.isfinite(values[m]) else f'{values[m]:.4f}' for m in metrics)
        lines.append(f'| {rule} | {cells} |')
    lines += [
        '', f'Best single head: {", ".join(f"{m} {h}" for m, h in table["best_single_head"].items())}; '
        f'{table["num_images"]} images.', '', '| head | ' + ' | '.join(metrics) + ' | win rate |',
        '| --- |' + ' --- |' * (len(metrics) + 1)
    ]
    for head, values in table['heads'].items():
        lines.append(f'| {head} | ' + ' | '.join(f'{values[m]:.4f}'
                                                 for m in metrics) + f' | {100 * table["win_rates"][head]:.1f}% |')
    if 'score_calibration' in table:
        cal = table['score_calibration']
        lines += [
            '', f'Score calibration: the top-scored head is the oracle\'s pick for {100 * cal["top_is_oracle"]:.1f}% '
            f'of the images (chance {100 * cal["chance"]:.1f}%); mean score probability of the oracle\'s head '
            f'{cal["oracle_probability"]:.3f}.'
        ]
    with open(os.path.join(out_dir, 'table.md'), 'w') as f:
        f.write('\n'.join(lines) + '\n')
    matrix = np.array(table['psnr_matrix'])
    plot_matrix(
        os.path.join(out_dir, 'psnr_matrix.png'), matrix,
        'mean PSNR (dB) of combined heads i+j\ndiagonal: single heads')
    labels = list(table['win_rates'])
    plot_bars(
        os.path.join(out_dir, 'win_rates.png'), [lab.split(' ')[0] for lab in labels],
        [100 * table['win_rates'][lab] for lab in labels], 'per-image oracle wins', 'win rate (%)')


def _run(args):
    opt = read_options(args.opt, args.imports)
    out = args.out or os.path.join('results', str(opt.get('name', 'analysis')), 'analysis')
    pair = None
    if args.pair:
        try:
            pair = tuple(int(p) for p in args.pair.replace('+', ',').split(','))
            assert len(pair) == 2 and pair[0] != pair[1]
        except (ValueError, AssertionError):
            raise ToolError(f'--pair "{args.pair}": expected two different base heads, e.g. 1,0.') from None
    table = analyze(
        opt,
        out,
        args.ckpt,
        args.param_key,
        args.max_images,
        args.dataset,
        args.device,
        args.tile,
        args.tile_overlap,
        pair,
        progress=not args.quiet,
        trust=args.trust_checkpoint)
    with open(os.path.join(out, 'table.md')) as f:
        print(f.read())
    print(f'Wrote the analysis of {table["num_images"]} images to {out}.')
    return 0


def run(args, prog='basicsr-mh analyze'):
    """``basicsr-mh analyze`` with parsed arguments (:func:`basicsr_mh_cli.parsers.analyze_parser`); returns the exit
    code (0; 1 with a one-line error)."""
    return run_tool(prog, _run, args)


def main(argv=None, prog='basicsr-mh analyze'):
    """Command line ``argv`` (default ``sys.argv[1:]``); returns the exit code."""
    return run(analyze_parser(prog).parse_args(argv), prog)
