"""``basicsr-mh demo``: data, a single-head and a multi-head (MH-C) NAFNet trained on the CPU, and a report.

What it does, all under ``--out DIR`` (refused when ``DIR`` exists and is not empty):

1. ``DIR/data``: GoPro-style blurred/sharp pairs made from the photos bundled with scikit-image
   (:func:`basicsr_mh.data.gopro_synth.make_dataset`);
2. ``DIR/options/*.yml``: two option files made from the embedded template :data:`TEMPLATE` (a dict, so the demo
   works after ``pip install`` from any directory), identical but for ``num_heads: 4, combine: true`` and the name;
3. trains both in this process with :func:`basicsr_mh.train.train_pipeline` (same seed, same batches, same
   iterations; experiments under ``DIR/experiments``), recording every validation's ``metric_results``;
4. ``DIR/report.md`` (+ ``report.json``): the per-head table of MH-C (PSNR/SSIM per head, Eq. 7a overall, Eq. 7b
   best single head, worst) next to the single-head baseline, the validation curve ``curve.png`` and the pictures
   ``blurry.png``, ``sharp.png``, ``single_head.png``, ``best_head.png``, ``heads_heatmap.png`` (paper Fig. 3:
   normalized absolute differences accumulated over all pairs of extended heads) and ``overview.png``.

The default preset (NAFNet width 16, 1000 iterations, batch 4 of 64x64 crops, both models) takes about 5-7
minutes on 2 CPU cores; ``--quick`` (width 8, 20 iterations) takes seconds and is meant for tests.
"""
import contextlib
import copy
import cv2
import json
import logging
import numpy as np
import os
import sys
import time
import torch
import yaml

from basicsr_mh_cli.parsers import demo_parser
from .metrics import RGB_PSNR_SSIM

#: The embedded option template (BasicSR option-file layout). ``None`` values are filled per run by
#: :func:`make_options`; everything else is what both runs share.
TEMPLATE = {
    'name': None,
    'model_type': 'MultiHeadImageRestorationModel',  # the same model class (and code path) for both runs
    'scale': 1,
    'num_gpu': 0,
    'manual_seed': None,
    'datasets': {
        'train': {
            'name': 'demo-train',
            'type': 'PairedImageDataset',
            'dataroot_gt': None,
            'dataroot_lq': None,
            'filename_tmpl': '{}',
            'io_backend': {
                'type': 'disk'
            },
            'gt_size': None,
            'use_hflip': True,
            'use_rot': True,
            'use_shuffle': True,
            'num_worker_per_gpu': 0,
            'batch_size_per_gpu': None,
            'dataset_enlarge_ratio': 100,
            'prefetch_mode': None
        },
        'val': {
            'name': 'demo-val',
            'type': 'PairedImageDataset',
            'dataroot_gt': None,
            'dataroot_lq': None,
            'io_backend': {
                'type': 'disk'
            }
        },
    },
    'network_g': {
        'type': 'NAFNet',
        'img_channel': 3,
        'width': None,
        'middle_blk_num': 1,
        'enc_blk_nums': [1, 1, 1, 1],
        'dec_blk_nums': [1, 1, 1, 1]
    },
    'path': {
        'pretrain_network_g': None,
        'strict_load_g': True,
        'resume_state': None
    },
    'train': {
        'optim_g': {
            'type': 'AdamW',
            'lr': 1e-3,
            'weight_decay': 1e-3,
            'betas': [0.9, 0.9]
        },
        'scheduler': {
            'type': 'TrueCosineAnnealingLR',
            'T_max': None,
            'eta_min': 1e-6
        },
        'total_iter': None,
        'warmup_iter': -1,
        'pixel_opt': {
            'type': 'PSNRLoss',
            'loss_weight': 1,
            'reduction': 'mean'
        },  # MinHeadLoss-wrapped for MH-C
    },
    'val': {
        'val_freq': None,
        'save_img': False,
        'metrics': copy.deepcopy(RGB_PSNR_SSIM),
    },
    'logger': {
        'print_freq': None,
        'save_checkpoint_freq': None,
        'use_tb_logger': False,
        'wandb': {
            'project': None,
            'resume_id': None
        }
    },
    'dist_params': {
        'backend': 'nccl',
        'port': 29500
    },
}

#: Sizes of a run. ``default``: measured ~0.13-0.16 s per training step per model on 2 busy CPU cores.
PRESETS = {
    'default': dict(width=16, iters=1000, batch=4, patch=64, num_train=96, num_val=12, size=128, val_points=10),
    'quick': dict(width=8, iters=20, batch=2, patch=32, num_train=8, num_val=2, size=64, val_points=2),
}
NUM_HEADS, COMBINE = 4, True
RUNS = (('single', 'single-head', 1, False), ('mhc', f'MH-C (K={NUM_HEADS}, combine)', NUM_HEADS, COMBINE))


def make_options(name, data, preset, num_heads, combine, seed):
    """Option dict of one demo run from :data:`TEMPLATE`.

    Args:
        name (str): experiment name. data (dict): :func:`make_dataset`'s return value.
        preset (dict): a :data:`PRESETS` entry (``iters`` may be overridden). num_heads (int), combine (bool).
        seed (int): ``manual_seed`` (the same for both runs).
    """
    opt = copy.deepcopy(TEMPLATE)
    iters = int(preset['iters'])
    val_freq = max(1, iters // max(1, preset['val_points']))
    opt.update(name=name, manual_seed=int(seed))
    train, val = opt['datasets']['train'], opt['datasets']['val']
    train.update(
        dataroot_gt=data['train']['gt'],
        dataroot_lq=data['train']['lq'],
        gt_size=preset['patch'],
        batch_size_per_gpu=preset['batch'])
    val.update(dataroot_gt=data['val']['gt'], dataroot_lq=data['val']['lq'])
    opt['network_g']['width'] = preset['width']
    if num_heads > 1 or combine:
        opt['network_g'].update(num_heads=num_heads, combine=combine)
    opt['train'].update(total_iter=iters)
    opt['train']['scheduler']['T_max'] = iters
    opt['val']['val_freq'] = val_freq
    opt['logger'].update(print_freq=max(1, val_freq // 2), save_checkpoint_freq=iters)
    return opt


@contextlib.contextmanager
def record_validations(store, progress=None):
    """Within the block, append ``dict(iter=..., **model.metric_results)`` to ``store`` after every validation.

    Multi-head runs add ``win_h{k}``: the share of training samples head ``k`` won since the last log line.

    Patches :meth:`MultiHeadImageRestorationModel._log_validation_metric_values` (called once per validation with
    the finished results) and restores it on exit. ``progress(record)`` is called after each append.
    """
    from .models.multihead_model import MultiHeadImageRestorationModel as Model
    original = Model._log_validation_metric_values

    def hook(self, current_iter, dataset_name, tb_logger):
        record = dict(iter=int(current_iter), **{k: float(v) for k, v in self.metric_results.items()})
        if getattr(self, 'num_outputs', 1) > 1:  # share of training samples each head won since the last log line
            record.update({f'win_h{k}': rate for k, rate in enumerate(self.head_win_rates(reset=False).tolist())})
        store.append(record)
        if progress is not None:
            progress(record)
        return original(self, current_iter, dataset_name, tb_logger)

    Model._log_validation_metric_values = hook
    try:
        yield store
    finally:
        Model._log_validation_metric_values = original


def _reset_basicsr_logger():
    """Close BasicSR's root-logger handlers so the next ``train_pipeline`` writes its own log file."""
    from basicsr.utils import logger as basicsr_logger
    log = logging.getLogger('basicsr')
    for handler in list(log.handlers):
        log.removeHandler(handler)
        handler.close()
    basicsr_logger.initialized_logger.pop('basicsr', None)


def train_one(out, opt, verbose, label):
    """Write ``opt`` to ``out/options/<name>.yml`` and train it in-process; returns (model, curve, seconds)."""
    from .train import train_pipeline
    opt_dir = os.path.join(out, 'options')
    os.makedirs(opt_dir, exist_ok=True)
    opt_path = os.path.join(opt_dir, f"{opt['name']}.yml")
    with open(opt_path, 'w') as f:
        yaml.safe_dump(opt, f, sort_keys=False)
    curve = []
    total = opt['train']['total_iter']
    start = time.time()

    def progress(record):
        print(
            f"  [{label}] iter {record['iter']:>5}/{total}  PSNR {record['psnr']:.2f} dB" +
            (f"  (overall {record['psnr_overall']:.2f})" if 'psnr_overall' in record else '') +
            f'  {time.time() - start:.0f} s',
            flush=True)

    console = os.path.join(opt_dir, f"{opt['name']}.console.log")
    with open(console, 'w') as stream:
        redirect = contextlib.nullcontext() if verbose else contextlib.redirect_stderr(stream)
        try:
            with redirect, record_validations(curve, progress):
                model = train_pipeline(out, ['-opt', opt_path])
        finally:
            _reset_basicsr_logger()
    return model, curve, time.time() - start


# ---------------------------------------------------------------------------------------------------- pictures
def read_rgb(path):
    """uint8 (H, W, 3) RGB image from ``path``."""
    img = cv2.imread(path, cv2.IMREAD_COLOR)
    if img is None:
        raise FileNotFoundError(f'cannot read image {path}')
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def to_tensor(img):
    """uint8 (H, W, 3) RGB -> float (1, 3, H, W) in [0, 1]."""
    return torch.from_numpy(img.astype(np.float32) / 255.).permute(2, 0, 1).unsqueeze(0)


def to_uint8(tensor):
    """float (3, H, W) in [0, 1] RGB -> uint8 (H, W, 3) RGB (rounded as BasicSR's ``tensor2img``)."""
    return (tensor.detach().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255.).round().astype(np.uint8)


def run_heads(model, lq):
    """The model's (EMA if any) outputs on ``lq`` (1, 3, H, W): (1, K', 3, H, W)."""
    model.feed_data({'lq': lq})
    model.test()
    heads = model.heads_output().detach().cpu()
    del model.lq, model.output
    return heads


def head_difference_heatmap(heads):
    """Paper Fig. 3: ``sum_{i<j} |h_i - h_j| / max|h_i - h_j|`` normalized to [0, 255], JET colour map.

    Args:
        heads (Tensor): (K', 3, H, W) floats. Returns: uint8 (H, W, 3) RGB heatmap (zeros when K' < 2).
    """
    heads = heads.float()
    acc = torch.zeros(heads.shape[-2:], dtype=torch.float64)
    for i in range(heads.shape[0]):
        for j in range(i + 1, heads.shape[0]):
            diff = (heads[i] - heads[j]).abs().mean(dim=0).double()
            peak = float(diff.max())
            if peak > 0:
                acc += diff / peak
    peak = float(acc.max())
    gray = (acc / peak * 255.).round().to(torch.uint8).numpy() if peak > 0 else np.zeros(acc.shape, np.uint8)
    return cv2.cvtColor(cv2.applyColorMap(gray, cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)


def write_png(path, rgb):
    """Write uint8 RGB ``rgb`` as PNG (cv2 wants BGR)."""
    if not cv2.imwrite(path, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)):
        raise OSError(f'cannot write {path}')


def labelled_row(images, labels, scale=2):
    """Side-by-side montage of equally sized RGB images, upscaled ``scale`` x (nearest), with captions."""
    tiles = []
    for img, label in zip(images, labels):
        big = cv2.resize(img, (img.shape[1] * scale, img.shape[0] * scale), interpolation=cv2.INTER_NEAREST)
        band = np.full((22, big.shape[1], 3), 255, np.uint8)
        cv2.putText(band, label, (4, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
        tiles.append(np.concatenate([band, big], axis=0))
        tiles.append(np.full((tiles[-1].shape[0], 4, 3), 255, np.uint8))
    return np.concatenate(tiles[:-1], axis=1)


def line_plot(series, path, title, xlabel, ylabel, size=(720, 420)):
    """Draw ``series`` = [(label, xs, ys, (r, g, b)), ...] as a line plot PNG with cv2 (no matplotlib needed)."""
    width, height = size
    left, right, top, bottom = 70, 20, 40, 60
    canvas = np.full((height, width, 3), 255, np.uint8)
    xs = [x for _, sx, _, _ in series for x in sx]
    ys = [y for _, _, sy, _ in series for y in sy]
    if not xs:
        xs, ys = [0, 1], [0, 1]
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(ys), max(ys)
    if x1 == x0:
        x0, x1 = x0 - 1, x1 + 1
    pad = max((y1 - y0) * 0.08, 0.05)
    y0, y1 = y0 - pad, y1 + pad

    def px(x, y):
        return (int(round(left + (x - x0) / (x1 - x0) * (width - left - right))),
                int(round(height - bottom - (y - y0) / (y1 - y0) * (height - top - bottom))))

    black, grey = (0, 0, 0), (215, 215, 215)
    for k in range(6):
        yv = y0 + (y1 - y0) * k / 5
        xv = x0 + (x1 - x0) * k / 5
        cv2.line(canvas, px(x0, yv), px(x1, yv), grey, 1)
        cv2.putText(canvas, f'{yv:.2f}', (4, px(x0, yv)[1] + 4), cv2.FONT_HERSHEY_SIMPLEX, 0.4, black, 1, cv2.LINE_AA)
        cv2.putText(canvas, f'{xv:g}', (px(xv, y0)[0] - 12, height - bottom + 18), cv2.FONT_HERSHEY_SIMPLEX, 0.4, black,
                    1, cv2.LINE_AA)
    cv2.rectangle(canvas, px(x0, y1), px(x1, y0), black, 1)
    for n, (label, sx, sy, rgb) in enumerate(series):
        bgr = tuple(int(c) for c in rgb[::-1])
        points = [px(x, y) for x, y in zip(sx, sy)]
        for a, b in zip(points[:-1], points[1:]):
            cv2.line(canvas, a, b, bgr, 2, cv2.LINE_AA)
        for p in points:
            cv2.circle(canvas, p, 3, bgr, -1, cv2.LINE_AA)
        ly = top + 14 + 18 * n
        cv2.line(canvas, (left + 10, ly - 4), (left + 34, ly - 4), bgr, 2, cv2.LINE_AA)
        cv2.putText(canvas, label, (left + 40, ly), cv2.FONT_HERSHEY_SIMPLEX, 0.45, black, 1, cv2.LINE_AA)
    cv2.putText(canvas, title, (left, 24), cv2.FONT_HERSHEY_SIMPLEX, 0.55, black, 1, cv2.LINE_AA)
    cv2.putText(canvas, xlabel, (width // 2 - 30, height - 14), cv2.FONT_HERSHEY_SIMPLEX, 0.45, black, 1, cv2.LINE_AA)
    cv2.putText(canvas, ylabel, (4, top - 8), cv2.FONT_HERSHEY_SIMPLEX, 0.45, black, 1, cv2.LINE_AA)
    write_png(path, cv2.cvtColor(canvas, cv2.COLOR_BGR2RGB))


# ---------------------------------------------------------------------------------------------------- report
def _fmt(value, digits):
    return f'{value:.{digits}f}'


def report_markdown(info):
    """The text of ``report.md`` from the collected ``info`` dict (see :func:`run_demo`)."""
    from .archs.multihead_arch import head_pair_name
    single, mh = info['results']['single'], info['results']['mhc']
    best = int(mh['best_head'])
    p = info['preset']
    lines = [
        '# basicsr-mh demo report',
        '',
        f"NAFNet width {p['width']} (enc/dec blocks [1, 1, 1, 1], middle 1), {p['iters']} iterations, batch "
        f"{p['batch']} of {p['patch']}x{p['patch']} crops, AdamW 1e-3 with cosine decay, PSNRLoss, seed "
        f"{info['seed']}, CPU. Both runs use the same seed, data order and iterations; MH-C adds `num_heads: "
        f"{NUM_HEADS}, combine: true` (K' = {mh.get('num_outputs', 10)} outputs, min-head loss).",
        f"Data: `{info['data_root']}` - {p['num_train']} train / {p['num_val']} validation GoPro-style pairs of "
        f"{p['size']}x{p['size']} from scikit-image photos (`basicsr_mh.data.gopro_synth`).",
        f"Training time: single-head {info['seconds']['single']:.0f} s, MH-C {info['seconds']['mhc']:.0f} s; "
        f"whole demo {info['seconds']['total']:.0f} s ({info['threads']} CPU thread(s)).",
        '',
        '## Validation (PSNR in dB, SSIM; BasicSR metrics on uint8 RGB images)',
        '',
        '| model / output | PSNR | SSIM |',
        '| --- | ---: | ---: |',
        f"| blurry input | {_fmt(info['input']['psnr'], 2)} | {_fmt(info['input']['ssim'], 4)} |",
        f"| single-head baseline | {_fmt(single['psnr'], 2)} | {_fmt(single['ssim'], 4)} |",
        f"| MH-C overall, Eq. 7a (each image's best head) | {_fmt(mh['psnr_overall'], 2)} | "
        f"{_fmt(mh['ssim_overall'], 4)} |",
        f"| MH-C best single head, Eq. 7b ({head_pair_name(best, NUM_HEADS, COMBINE)}) | {_fmt(mh['psnr'], 2)} | "
        f"{_fmt(mh['ssim'], 4)} |",
        f"| MH-C worst (each image's worst head) | {_fmt(mh['psnr_worst'], 2)} | {_fmt(mh['ssim_worst'], 4)} |",
        '',
        '(Eq. 7b reports each metric\'s own best single head; the SSIM row uses the SSIM-best head.)',
        '',
        '### MH-C per head',
        '',
        '| head (pair) | PSNR | SSIM |',
        '| --- | ---: | ---: |',
    ]
    k = 0
    while f'psnr_h{k}' in mh:
        mark = ' **best**' if k == best else ''
        lines.append(f"| {head_pair_name(k, NUM_HEADS, COMBINE)}{mark} | {_fmt(mh[f'psnr_h{k}'], 2)} | "
                     f"{_fmt(mh[f'ssim_h{k}'], 4)} |")
        k += 1
    lines += [
        '',
        '## Validation curve',
        '',
        '![PSNR vs iteration](curve.png)',
        '',
        f"## Pictures (validation image `{info['picture']['name']}`)",
        '',
        '![overview](overview.png)',
        '',
        '| file | what |',
        '| --- | --- |',
        '| `blurry.png` | input |',
        '| `sharp.png` | ground truth |',
        f"| `single_head.png` | single-head output ({_fmt(info['picture']['single_psnr'], 2)} dB) |",
        f"| `best_head.png` | MH-C best single head {head_pair_name(best, NUM_HEADS, COMBINE)} "
        f"({_fmt(info['picture']['best_psnr'], 2)} dB; this image's best head is "
        f"{head_pair_name(info['picture']['image_best'], NUM_HEADS, COMBINE)} at "
        f"{_fmt(info['picture']['image_best_psnr'], 2)} dB) |",
        '| `heads_heatmap.png` | paper Fig. 3: normalized absolute differences between the MH-C outputs, accumulated '
        'over all pairs of extended heads (brighter: heads disagree) |',
        '',
        'This is a CPU-sized toy: the numbers show the mechanics (Eq. 7a >= Eq. 7b >= worst), not the paper\'s GoPro '
        'results.',
        '',
    ]
    return '\n'.join(lines)


def auto_threads():
    """CPU threads for training: torch's default, less the cores other processes keep busy (1-minute load).

    OpenMP threads that wait on busy cores make a step many times slower (measured: 0.15 s idle, 2-15 s with two
    threads on 2 cores shared with 3 other jobs, 0.3-1.5 s with one thread), so the demo leaves busy cores alone.
    """
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        load = 0.0
    return max(1, min(torch.get_num_threads(), (os.cpu_count() or 1) - int(round(load))))


def run_demo(out, preset_name='default', iters=None, seed=10, verbose=False, threads=None):
    """Run the whole demo into ``out`` (see the module docstring); returns the path of ``report.md``.

    ``threads``: torch CPU threads (default :func:`auto_threads`).
    """
    from .data.gopro_synth import check_out_dir, make_dataset
    from .metrics import per_head

    t_start = time.time()
    check_out_dir(out)
    threads = int(threads) if threads else auto_threads()
    torch.set_num_threads(threads)
    out = os.path.abspath(out)
    preset = dict(PRESETS[preset_name])
    if iters is not None:
        if int(iters) < 1:
            raise ValueError(f'--iters must be >= 1, got {iters}.')
        preset['iters'] = int(iters)
    os.makedirs(out, exist_ok=True)
    print(f'basicsr-mh demo ({preset_name}, {threads} CPU thread(s)): data -> {out}/data', flush=True)
    data = make_dataset(
        os.path.join(out, 'data'),
        num_train=preset['num_train'],
        num_val=preset['num_val'],
        size=preset['size'],
        seed=seed,
        progress=False,
        workers=2)
    models, curves, seconds = {}, {}, {}
    for key, label, num_heads, combine in RUNS:
        name = f"demo_NAFNet-width{preset['width']}" + ('' if num_heads == 1 else '-MH-C')
        print(f"basicsr-mh demo: training {label}, {preset['iters']} iterations ...", flush=True)
        opt = make_options(name, data, preset, num_heads, combine, seed)
        models[key], curves[key], seconds[key] = train_one(out, opt, verbose, label)
    results = {key: dict(curves[key][-1], num_outputs=int(getattr(models[key], 'num_outputs', 1))) for key in models}

    metric_opts = TEMPLATE['val']['metrics']
    val_gt, val_lq = data['val']['gt'], data['val']['lq']
    names = sorted(os.listdir(val_gt))
    sums = {'psnr': 0.0, 'ssim': 0.0}
    pics = None
    for index, fname in enumerate(names):
        gt, lq = to_tensor(read_rgb(os.path.join(val_gt, fname))), to_tensor(read_rgb(os.path.join(val_lq, fname)))
        for m, mopt in metric_opts.items():
            sums[m] += float(per_head(lq.unsqueeze(1), gt, mopt)[0, 0])
        if index == 0:
            pics = (fname, gt, lq)
    input_scores = {m: v / len(names) for m, v in sums.items()}

    fname, gt, lq = pics
    single_out = run_heads(models['single'], lq)
    mh_out = run_heads(models['mhc'], lq)
    best = int(results['mhc']['best_head'])
    single_psnr = float(per_head(single_out, gt, metric_opts['psnr'])[0, 0])
    mh_psnr = per_head(mh_out, gt, metric_opts['psnr'])[0]
    pictures = {
        'blurry': to_uint8(lq[0]),
        'sharp': to_uint8(gt[0]),
        'single_head': to_uint8(single_out[0, 0]),
        'best_head': to_uint8(mh_out[0, best]),
        'heads_heatmap': head_difference_heatmap(mh_out[0])
    }
    for key, img in pictures.items():
        write_png(os.path.join(out, f'{key}.png'), img)
    write_png(
        os.path.join(out, 'overview.png'),
        labelled_row(list(pictures.values()), ['blurry', 'sharp', 'single-head', f'MH-C h{best}', 'heads diff']))
    line_plot([('single-head', [r['iter'] for r in curves['single']], [r['psnr']
                                                                       for r in curves['single']], (31, 119, 180)),
               ('MH-C best single head (Eq. 7b)', [r['iter']
                                                   for r in curves['mhc']], [r['psnr']
                                                                             for r in curves['mhc']], (214, 39, 40)),
               ('MH-C overall (Eq. 7a)', [r['iter'] for r in curves['mhc']], [r['psnr_overall']
                                                                              for r in curves['mhc']], (255, 127, 14))],
              os.path.join(out, 'curve.png'), 'Validation PSNR', 'iteration', 'PSNR (dB)')

    seconds['total'] = time.time() - t_start
    info = {
        'preset_name': preset_name,
        'preset': preset,
        'seed': seed,
        'threads': threads,
        'data_root': os.path.relpath(data['root'], out),
        'results': results,
        'curves': curves,
        'seconds': seconds,
        'input': input_scores,
        'picture': {
            'name': fname,
            'single_psnr': single_psnr,
            'best_psnr': float(mh_psnr[best]),
            'image_best': int(torch.argmax(mh_psnr)),
            'image_best_psnr': float(mh_psnr.max())
        },
    }
    report = os.path.join(out, 'report.md')
    with open(report, 'w') as f:
        f.write(report_markdown(info))
    with open(os.path.join(out, 'report.json'), 'w') as f:
        json.dump(info, f, indent=1)
        f.write('\n')
    return report


def run(args, prog='basicsr-mh demo'):
    """``basicsr-mh demo`` with parsed arguments (:func:`basicsr_mh_cli.parsers.demo_parser`); returns the process
    exit code (1 when the output folder is refused)."""
    try:
        report = run_demo(args.out, 'quick' if args.quick else 'default', args.iters, args.seed, args.verbose,
                          args.threads)
    except FileExistsError as err:
        print(f'{prog}: {err}', file=sys.stderr)
        return 1
    print(f'basicsr-mh demo: report written to {report}', flush=True)
    return 0


def main(argv=None, prog='basicsr-mh demo'):
    """Command line ``argv`` (default ``sys.argv[1:]``); returns the exit code."""
    return run(demo_parser(prog).parse_args(argv), prog)


if __name__ == '__main__':
    sys.exit(main())
