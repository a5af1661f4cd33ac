"""``basicsr-mh demo``: data, a single-head and a multi-head (MH-C) NAFNet trained on the CPU, and a report.

What it does, all under ``--out DIR`` (refused when ``DIR`` exists and is not empty):

1. ``DIR/data``: blurred/sharp crops of the photos bundled with scikit-image, each with its own motion blur
   (:func:`basicsr_mh.data.example_pairs.make_example_dataset`, the quick start's data);
2. ``DIR/options/*.yml``: two option files made from the embedded template :data:`TEMPLATE` (the quick start's
   network and recipe, as a dict so the demo works after ``pip install`` from any directory), identical but for
   ``num_heads: 4, combine: true`` and the name; both start at the input (``head_init: identity``);
3. trains both in this process with :func:`basicsr_mh.train.train_pipeline` (same seed, same batches, same
   iterations; experiments under ``DIR/experiments``), recording every validation's ``metric_results``;
4. ``DIR/report.md`` (+ ``report.json``): the blurry input, the single-head baseline and MH-C (per head, Eq. 7a
   overall, Eq. 7b best single head, worst), ``curve.png`` (validation PSNR with the input's as a dashed line) and
   the pictures (:func:`write_pictures`): the crop with the strongest blur, blurry / single-head / MH-C / sharp with
   per-crop PSNR, beside the paper's Fig. 3 and Fig. 4 with colour bars.

The default preset (NAFNet width 16, 2500 iterations, batch 4 of 48x48 crops, both models) takes about 5 minutes
on 2 quiet CPU cores; ``--quick`` (width 8, 20 iterations) takes seconds and is meant for tests.
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
from . import figures
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
    'network_g': {  # the quick start's network (options/train/Example/NAFNet-width16-MH-C.yml)
        'type': 'NAFNet',
        'img_channel': 3,
        'width': None,
        'middle_blk_num': 1,
        'enc_blk_nums': [1, 1, 1],
        'dec_blk_nums': [1, 1, 1],
        'head_init': 'identity',  # both runs start at the input (the multi-head default; set for one head too)
    },
    'path': {
        'pretrain_network_g': None,
        'strict_load_g': True,
        'resume_state': None
    },
    'train': {  # the quick start's recipe
        'ema_decay': 0.99,
        'optim_g': {
            'type': 'Adam',
            'lr': 2e-3,
            'weight_decay': 0,
            'betas': [0.9, 0.9]
        },
        'scheduler': {
            'type': 'CosineAnnealingRestartLR',
            'periods': None,
            'restart_weights': [1],
            'eta_min': 1e-7
        },
        'total_iter': None,
        'warmup_iter': -1,
        'pixel_opt': {
            'type': 'L1Loss',
            'loss_weight': 1.0,
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

#: Sizes of a run. ``default``: the quick start's (about 0.055 s per training step on 2 quiet CPU cores).
PRESETS = {
    'default':
    dict(width=16, iters=2500, batch=4, patch=48, num_train=96, num_val=4, crop=96, size=128, val_points=6, window=64),
    'quick':
    dict(width=8, iters=20, batch=2, patch=32, num_train=8, num_val=2, crop=48, size=48, val_points=2, window=32),
}
NUM_HEADS, COMBINE = 4, True
RUNS = (('single', 'single-head', 1, False), ('mhc', f'MH-C (K={NUM_HEADS}, combine)', NUM_HEADS, COMBINE))


def make_options(name, data, preset, num_heads, combine, seed):
    """Option dict of one demo run from :data:`TEMPLATE`.

    Args:
        name (str): experiment name. data (dict): ``{'train': (gt_dir, lq_dir), 'val': (gt_dir, lq_dir)}``
            (:func:`basicsr_mh.data.example_pairs.make_example_dataset`, or the folders of any pair dataset).
        preset (dict): a :data:`PRESETS` entry (``iters`` may be overridden). num_heads (int), combine (bool).
        seed (int): ``manual_seed`` (the same for both runs).
    """
    opt = copy.deepcopy(TEMPLATE)
    iters = int(preset['iters'])
    val_freq = max(1, iters // max(1, preset['val_points']))
    opt.update(name=name, manual_seed=int(seed))
    train, val = opt['datasets']['train'], opt['datasets']['val']
    train.update(
        dataroot_gt=data['train'][0],
        dataroot_lq=data['train'][1],
        gt_size=preset['patch'],
        batch_size_per_gpu=preset['batch'])
    val.update(dataroot_gt=data['val'][0], dataroot_lq=data['val'][1])
    opt['network_g']['width'] = preset['width']
    if num_heads > 1 or combine:
        opt['network_g'].update(num_heads=num_heads, combine=combine)
    opt['train'].update(total_iter=iters)
    opt['train']['scheduler']['periods'] = [iters]
    opt['val']['val_freq'] = val_freq
    opt['logger'].update(print_freq=max(1, val_freq // 2), save_checkpoint_freq=iters)
    return opt


def _reset_basicsr_logger():
    """Close BasicSR's root-logger handlers so the next ``train_pipeline`` writes its own log file."""
    from basicsr.utils import logger as basicsr_logger
    log = logging.getLogger('basicsr')
    for handler in list(log.handlers):
        log.removeHandler(handler)
        handler.close()
    basicsr_logger.initialized_logger.pop('basicsr', None)


def train_one(out, opt, verbose, label, on_validation=None):
    """Write ``opt`` to ``out/options/<name>.yml`` and train it in-process; returns (model, curve, seconds): the
    curve is every validation's record (:func:`basicsr_mh.train.validate_all`), also passed to ``on_validation``."""
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
        curve.append(record)
        if on_validation is not None:
            on_validation(record)
        print(
            f"  [{label}] iter {record['iter']:>5}/{total}  PSNR {record['psnr']:.2f} dB" +
            (f"  (overall {record['psnr_overall']:.2f})" if 'psnr_overall' in record else '') +
            f'  {time.time() - start:.0f} s',
            flush=True)

    console = os.path.join(opt_dir, f"{opt['name']}.console.log")
    with open(console, 'w') as stream:
        redirect = contextlib.nullcontext() if verbose else contextlib.redirect_stderr(stream)
        try:
            with redirect:
                model = train_pipeline(out, ['-opt', opt_path], on_validation=progress)
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


def run_heads(model, lq):
    """The model's (EMA if any) outputs on ``lq`` (1, 3, H, W): (1, K', 3, H, W)."""
    model.feed_data({'lq': lq})
    model.test()
    heads = model.heads_output().detach().cpu()
    del model.lq, model.output
    return heads


def write_png(path, rgb):
    """Write uint8 RGB ``rgb`` as PNG (cv2 wants BGR)."""
    if not cv2.imwrite(path, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)):
        raise OSError(f'cannot write {path}')


def write_pictures(out, name, gt, lq, single, heads, best, window):
    """The demo's pictures of one validation image; returns the per-crop PSNRs.

    Full images: ``blurry.png``, ``sharp.png``, ``single_head.png``, ``best_head.png`` (MH-C head ``best``);
    ``heads_heatmap.png``: paper Fig. 3 over the base heads with a colour bar; ``overview.png``: the ``window`` x
    ``window`` crop where the blur is strongest, zoomed, blurry / single-head / MH-C / sharp with each crop's PSNR,
    beside Fig. 3 and Fig. 4 (signed difference of the two base heads that differ most) with colour bars.

    Args:
        gt, lq (Tensor): (3, H, W) in [0, 1]. single (Tensor): (3, H, W). heads (Tensor): (K', 3, H, W).
        best (int): the MH-C head shown (the checkpoint's best single head).
    """
    from .heads import extended_head_pairs, head_pair_name
    from .metrics import per_head
    psnr_opt = TEMPLATE['val']['metrics']['psnr']
    base = heads[[extended_head_pairs(NUM_HEADS, COMBINE).index((k, k)) for k in range(NUM_HEADS)]]
    images = {'blurry': lq, 'sharp': gt, 'single_head': single, 'best_head': heads[best]}
    for key, img in images.items():
        write_png(os.path.join(out, f'{key}.png'), figures.to_uint8(img))
    residual = figures.residual_map(base).numpy()
    figures.plot_comparison(
        os.path.join(out, 'heads_heatmap.png'), [],
        [('Fig. 3: sum over base-head pairs of |h_i - h_j|', residual, figures.RESIDUAL_CMAP, 0, residual.max())],
        title=f'{name}: where the MH-C heads disagree')
    top, left = figures.strongest_blur_window(gt, lq, window)
    cut = (Ellipsis, slice(top, top + window), slice(left, left + window))
    crop_psnr = {
        key: float(per_head(img[cut][None, None], gt[cut][None], psnr_opt)[0, 0])
        for key, img in images.items() if key != 'sharp'
    }
    pair = figures.most_different_pair(base[cut])
    diff = figures.signed_difference(base[cut], pair).numpy()
    bound = max(float(np.abs(diff).max()), 1e-12)
    crop_residual = residual[top:top + window, left:left + window]
    head = head_pair_name(best, NUM_HEADS, COMBINE)
    figures.plot_comparison(
        os.path.join(out, 'overview.png'),
        [(f"blurry {crop_psnr['blurry']:.2f} dB", figures.to_uint8(lq[cut])),
         (f"single-head {crop_psnr['single_head']:.2f} dB", figures.to_uint8(single[cut])),
         (f"MH-C {head} {crop_psnr['best_head']:.2f} dB", figures.to_uint8(heads[best][cut])),
         ('sharp', figures.to_uint8(gt[cut]))],
        [('Fig. 3: sum |h_i - h_j|', crop_residual, figures.RESIDUAL_CMAP, 0, crop_residual.max()),
         (f'Fig. 4: h{pair[0]} - h{pair[1]}', diff, figures.SIGNED_CMAP, -bound, bound)],
        title=f'{name}, the {window}x{window} crop with the strongest blur (rows {top}-{top + window - 1}, '
        f'columns {left}-{left + window - 1}); PSNR of the crop')
    return dict(crop_psnr, window=[top, left, window])


# ---------------------------------------------------------------------------------------------------- report
def _fmt(value, digits):
    return f'{value:.{digits}f}'


def report_markdown(info):
    """The text of ``report.md`` from the collected ``info`` dict (see :func:`run_demo`)."""
    from .heads import head_pair_name
    single, mh = info['results']['single'], info['results']['mhc']
    best = int(mh['best_head'])
    p = info['preset']
    lines = [
        '# basicsr-mh demo report',
        '',
        f"NAFNet width {p['width']} (enc/dec blocks [1, 1, 1], middle 1; the quick start's network and recipe), "
        f"{p['iters']} iterations, batch {p['batch']} of {p['patch']}x{p['patch']} crops, Adam 2e-3 with cosine "
        f"decay, L1 loss, EMA 0.99, seed {info['seed']}, CPU. Both runs start at the input (`head_init: identity`) "
        f"and use the same seed, data order and iterations; MH-C adds `num_heads: {NUM_HEADS}, combine: true` "
        f"(K' = {mh.get('num_outputs', 10)} outputs, min-head loss, annealed assignment).",
        f"Data: `{info['data_root']}` - {p['num_train']} training crops of {p['crop']}x{p['crop']} from 16 "
        f"scikit-image photos and {p['num_val']} validation crops of {p['size']}x{p['size']} from two others "
        "(astronaut, coffee), each blurred by its own straight motion kernel of 5-13 px "
        "(`basicsr_mh.data.example_pairs`).",
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
        f"## Pictures (validation image `{info['picture']['name']}`, the one with the strongest blur)",
        '',
        '![overview](overview.png)',
        '',
        f"`overview.png`: the {info['picture']['crop']['window'][2]}x{info['picture']['crop']['window'][2]} crop "
        'where the blur is strongest, zoomed; the PSNR of each crop is in its title (blurry '
        f"{_fmt(info['picture']['crop']['blurry'], 2)}, single-head {_fmt(info['picture']['crop']['single_head'], 2)}, "
        f"MH-C {_fmt(info['picture']['crop']['best_head'], 2)} dB). Right: paper Fig. 3 (summed absolute "
        'differences over all pairs of base heads; bright: the heads disagree, typically at edges) and Fig. 4 (the '
        'signed difference of the two base heads that differ most), each with its colour bar.',
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
        '| `heads_heatmap.png` | paper Fig. 3 on the whole image, with its colour bar |',
        '| `curve.png` | validation PSNR during training; the dashed line is the blurry input |',
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

    ``threads``: torch CPU threads for the demo (default :func:`auto_threads`); the previous setting is restored.
    """
    from .data.example_pairs import make_example_dataset
    from .data.gopro_synth import check_out_dir
    from .metrics import per_head

    t_start = time.time()
    check_out_dir(out)
    preset = dict(PRESETS[preset_name])
    if iters is not None:
        if int(iters) < 1:
            raise ValueError(f'--iters must be >= 1, got {iters}.')
        preset['iters'] = int(iters)
    threads = int(threads) if threads else auto_threads()
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        out = os.path.abspath(out)
        os.makedirs(out, exist_ok=True)
        print(f'basicsr-mh demo ({preset_name}, {threads} CPU thread(s)): data -> {out}/data', flush=True)
        data = make_example_dataset(
            os.path.join(out, 'data'), preset['num_train'], preset['num_val'], preset['crop'], preset['size'], seed)
        models, curves, seconds = {}, {}, {}
        for key, label, num_heads, combine in RUNS:
            name = f"demo_NAFNet-width{preset['width']}" + ('' if num_heads == 1 else '-MH-C')
            print(f"basicsr-mh demo: training {label}, {preset['iters']} iterations ...", flush=True)
            opt = make_options(name, data, preset, num_heads, combine, seed)
            models[key], curves[key], seconds[key] = train_one(out, opt, verbose, label)
        results = {
            key: dict(curves[key][-1], num_outputs=int(getattr(models[key], 'num_outputs', 1)))
            for key in models
        }

        metric_opts = TEMPLATE['val']['metrics']
        val_gt, val_lq = data['val']
        names = sorted(os.listdir(val_gt))
        sums = {m: 0.0 for m in metric_opts}
        strongest = (-1.0, None)
        for fname in names:
            gt, lq = to_tensor(read_rgb(os.path.join(val_gt, fname))), to_tensor(read_rgb(os.path.join(val_lq, fname)))
            for m, mopt in metric_opts.items():
                sums[m] += float(per_head(lq.unsqueeze(1), gt, mopt)[0, 0])
            blur = float((gt - lq).abs().mean())
            if blur > strongest[0]:
                strongest = (blur, (fname, gt, lq))
        input_scores = {m: v / len(names) for m, v in sums.items()}

        fname, gt, lq = strongest[1]
        single_out = run_heads(models['single'], lq)[0, 0]
        mh_out = run_heads(models['mhc'], lq)[0]
        best = int(results['mhc']['best_head'])
        mh_psnr = per_head(mh_out[None], gt, metric_opts['psnr'])[0]
        crops = write_pictures(out, fname, gt[0], lq[0], single_out, mh_out, best, preset['window'])
        figures.plot_curves(
            os.path.join(out, 'curve.png'),
            [('single-head', [r['iter'] for r in curves['single']], [r['psnr'] for r in curves['single']]),
             ('MH-C best single head (Eq. 7b)', [r['iter'] for r in curves['mhc']], [r['psnr'] for r in curves['mhc']]),
             ('MH-C overall (Eq. 7a)', [r['iter'] for r in curves['mhc']], [r['psnr_overall'] for r in curves['mhc']])],
            'Validation PSNR',
            'iteration',
            'PSNR (dB)',
            levels=[('blurry input', input_scores['psnr'])])
    finally:
        torch.set_num_threads(previous_threads)

    seconds['total'] = time.time() - t_start
    info = {
        'preset_name': preset_name,
        'preset': preset,
        'seed': seed,
        'threads': threads,
        'data_root': os.path.relpath(os.path.dirname(os.path.dirname(data['train'][0])), out),
        'results': results,
        'curves': curves,
        'seconds': seconds,
        'input': input_scores,
        'picture': {
            'name': fname,
            'single_psnr': float(per_head(single_out[None, None], gt, metric_opts['psnr'])[0, 0]),
            'best_psnr': float(mh_psnr[best]),
            'image_best': int(torch.argmax(mh_psnr)),
            'image_best_psnr': float(mh_psnr.max()),
            'crop': crops,
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
