"""Speed of per-head PSNR + SSIM (:mod:`basicsr_mh.metrics`) against BasicSR's numpy metrics.

A 1280x720 RGB ground truth is built from ``skimage.data`` photos (astronaut | coffee side by side, resized with
cv2); ten heads are degraded copies of it (noise, blur, shifts). Timed, as the median of interleaved repeats:

* BasicSR: numpy ``calculate_psnr`` + ``calculate_ssim`` on the uint8 images of ONE head (``tensor2img`` excluded);
* ours: ``per_head`` for PSNR + ``per_head`` for SSIM on the float tensors, for all 10 heads and for 1 head
  (quantization included), and ``per_head_many`` computing both in one pass for all 10 heads.

Both metric configurations are measured: RGB without crop, and the usual SR/deblur one (crop_border 4, Y channel).
Results go to ``benchmarks/results/metrics_speed.json`` and ``.md``; the Markdown table is printed.

Usage: ``python benchmarks/metrics_speed.py [--device cpu|cuda] [--repeats 7] [--heads 10]``
"""
import argparse
import json
import os
import platform
import statistics
import time

# isort: off
import basicsr_mh  # noqa: F401  (torchvision alias, before basicsr)
# isort: on
import cv2
import numpy as np
import torch
from basicsr.metrics import calculate_psnr, calculate_ssim
from basicsr.utils import tensor2img

from basicsr_mh.metrics import per_head, per_head_many

CONFIGS = {
    'rgb': dict(crop_border=0, test_y_channel=False),
    'y_crop4': dict(crop_border=4, test_y_channel=True),
}


def build_images(num_heads, seed=0):
    """Return ``pred`` (1, K, 3, 720, 1280) and ``gt`` (1, 3, 720, 1280) float32 RGB tensors in [0, 1]."""
    from skimage import data

    left = cv2.resize(data.astronaut(), (640, 720), interpolation=cv2.INTER_AREA)
    right = cv2.resize(data.coffee(), (640, 720), interpolation=cv2.INTER_AREA)
    gt_u8 = np.ascontiguousarray(np.concatenate([left, right], axis=1))  # (720, 1280, 3) RGB
    rng = np.random.default_rng(seed)
    gt = torch.from_numpy(gt_u8.astype(np.float32) / 255.).permute(2, 0, 1).contiguous()
    heads = []
    for k in range(num_heads):
        kind = k % 3
        if kind == 0:  # noise
            x = gt + torch.from_numpy(rng.normal(0, 0.01 + 0.01 * k, gt.shape).astype(np.float32))
        elif kind == 1:  # blur
            blurred = cv2.GaussianBlur(gt_u8, (0, 0), 0.6 + 0.3 * k).astype(np.float32) / 255.
            x = torch.from_numpy(blurred).permute(2, 0, 1)
        else:  # shift + brightness
            x = torch.roll(gt, shifts=(k // 3, -(k // 2)), dims=(1, 2)) * 1.02 - 0.01
        heads.append(x)
    return torch.stack(heads)[None].contiguous(), gt[None].contiguous()


def _sync(device):
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def _timed(fn, device):
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


def _busy_cpu_seconds():
    """CPU seconds all processes of the machine spent busy so far (Linux ``/proc/stat``), or None."""
    try:
        with open('/proc/stat') as f:
            fields = [int(x) for x in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf('SC_CLK_TCK')


def _own_cpu_seconds():
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def _wait_for_quiet(seconds=1.0, poll=0.25, max_wait=120.0):
    """Wait (up to ``max_wait``) until other processes kept the CPUs nearly idle for ``seconds``."""
    if _busy_cpu_seconds() is None:
        return
    quiet_since, deadline = time.perf_counter(), time.perf_counter() + max_wait
    while time.perf_counter() < deadline:
        busy, own = _busy_cpu_seconds(), _own_cpu_seconds()
        time.sleep(poll)
        others = (_busy_cpu_seconds() - busy) - (_own_cpu_seconds() - own)
        if others > 0.05 * poll:
            quiet_since = time.perf_counter()
        elif time.perf_counter() - quiet_since >= seconds:
            return


def _timed_clean(fn, device, max_other_share, attempts):
    """Time ``fn``; redo it while other processes used more than ``max_other_share`` of one core during the run.

    The machine this was written for has 2 cores and is shared: a concurrent job slows multi-threaded torch far
    more than single-threaded numpy, so each sample waits for a quiet moment and contended samples are redone.
    Returns (seconds, other processes' CPU seconds during the kept run, tries).
    """
    for tries in range(1, attempts + 1):
        _wait_for_quiet()
        busy, own = _busy_cpu_seconds(), _own_cpu_seconds()
        elapsed = _timed(fn, device)
        if busy is None:
            return elapsed, float('nan'), tries
        others = max(0.0, (_busy_cpu_seconds() - busy) - (_own_cpu_seconds() - own))
        if others <= max_other_share * elapsed or tries == attempts:
            return elapsed, others, tries


def _cpu_model():
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith('model name'):
                    return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--device', default='cpu', choices=['cpu', 'cuda'])
    parser.add_argument('--repeats', type=int, default=7, help='interleaved repeats (median reported), >= 5')
    parser.add_argument('--heads', type=int, default=10)
    parser.add_argument('--out', default=os.path.join(os.path.dirname(os.path.abspath(__file__)), 'results'))
    parser.add_argument(
        '--max-other-share',
        type=float,
        default=0.1,
        help='redo a sample when other processes used more than this share of one core meanwhile')
    parser.add_argument('--attempts', type=int, default=30, help='tries per sample before accepting a contended one')
    args = parser.parse_args()
    device = torch.device(args.device)
    repeats = max(5, args.repeats)

    pred_cpu, gt_cpu = build_images(args.heads)
    pred, gt = pred_cpu.to(device), gt_cpu.to(device)
    img, img2 = tensor2img(pred_cpu[0, 0]), tensor2img(gt_cpu[0])

    timers = {}
    for name, cfg in CONFIGS.items():
        psnr_opt = dict(type='calculate_psnr', **cfg)
        ssim_opt = dict(type='calculate_ssim', **cfg)
        timers[f'{name}/basicsr_numpy_1head'] = (lambda cfg=cfg:
                                                 (calculate_psnr(img, img2, **cfg), calculate_ssim(img, img2, **cfg)))
        timers[f'{name}/ours_{args.heads}heads'] = (lambda p=psnr_opt, s=ssim_opt:
                                                    (per_head(pred, gt, p), per_head(pred, gt, s)))
        timers[f'{name}/ours_{args.heads}heads_joint'] = (
            lambda p=psnr_opt, s=ssim_opt: per_head_many(pred, gt, {
                'psnr': p,
                'ssim': s
            }))
        timers[f'{name}/ours_1head'] = (lambda p=psnr_opt, s=ssim_opt:
                                        (per_head(pred[:, :1], gt, p), per_head(pred[:, :1], gt, s)))
        # accuracy of the timed configuration, head 0, for the record
        ours = (per_head(pred[:, :1], gt, psnr_opt)[0, 0].item(), per_head(pred[:, :1], gt, ssim_opt)[0, 0].item())
        ref = (calculate_psnr(img, img2, **cfg), calculate_ssim(img, img2, **cfg))
        timers[f'{name}/_check'] = (ours, ref)

    checks = {k.split('/')[0]: timers.pop(k) for k in list(timers) if k.endswith('/_check')}
    for fn in timers.values():  # warm-up (allocations, BLAS init)
        _timed(fn, device)
    samples = {k: [] for k in timers}
    others = {k: [] for k in timers}
    retries = 0
    load_before = os.getloadavg()
    for _ in range(repeats):
        for key, fn in timers.items():
            elapsed, other, tries = _timed_clean(fn, device, args.max_other_share, args.attempts)
            samples[key].append(elapsed)
            others[key].append(other)
            retries += tries - 1
    load_after = os.getloadavg()
    contended = sum(1 for k in others for x, t in zip(others[k], samples[k]) if x > args.max_other_share * t)

    rows = []
    for name in CONFIGS:
        base = statistics.median(samples[f'{name}/basicsr_numpy_1head'])
        for key in (f'{name}/basicsr_numpy_1head', f'{name}/ours_{args.heads}heads',
                    f'{name}/ours_{args.heads}heads_joint', f'{name}/ours_1head'):
            med = statistics.median(samples[key])
            rows.append(
                dict(
                    config=name,
                    what=key.split('/')[1],
                    median_s=med,
                    min_s=min(samples[key]),
                    max_s=max(samples[key]),
                    ratio_to_basicsr_1head=med / base))
    result = dict(
        device=str(device),
        device_name=torch.cuda.get_device_name(device) if device.type == 'cuda' else _cpu_model(),
        cpu_count=os.cpu_count(),
        torch=torch.__version__,
        torch_threads=torch.get_num_threads(),
        numpy=np.__version__,
        opencv=cv2.__version__,
        image='1280x720 RGB',
        heads=args.heads,
        repeats=repeats,
        loadavg_before=load_before,
        loadavg_after=load_after,
        configs=CONFIGS,
        rows=rows,
        samples_s=samples,
        other_processes_cpu_s=others,
        redone_samples=retries,
        contended_samples_kept=contended,
        head0_values_ours_vs_basicsr=checks)

    lines = [
        f'# Per-head metric speed ({result["device_name"]}, {result["device"]}, torch threads '
        f'{result["torch_threads"]})', '',
        f'1280x720 RGB, {args.heads} heads, median of {repeats} interleaved repeats. Each row times PSNR + SSIM. '
        'BasicSR = numpy `calculate_psnr` + `calculate_ssim` on uint8 images of ONE head (tensor2img not timed); '
        'ours = `basicsr_mh.metrics.per_head` from float tensors (quantization included).', '',
        '| config | what | median s | min s | max s | x BasicSR 1 head |', '|---|---|---:|---:|---:|---:|'
    ]
    for r in rows:
        lines.append(f'| {r["config"]} | {r["what"]} | {r["median_s"]:.4f} | {r["min_s"]:.4f} | {r["max_s"]:.4f} | '
                     f'{r["ratio_to_basicsr_1head"]:.2f} |')
    lines += [
        '', f'configs: {json.dumps(CONFIGS)}; load average before/after: '
        f'{", ".join(f"{x:.2f}" for x in load_before)} / {", ".join(f"{x:.2f}" for x in load_after)}; '
        f'samples redone because other processes used the CPU: {retries}; contended samples kept: {contended}'
    ]
    md = '\n'.join(lines) + '\n'
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, 'metrics_speed.json'), 'w') as f:
        json.dump(result, f, indent=2)
    with open(os.path.join(args.out, 'metrics_speed.md'), 'w') as f:
        f.write(md)
    print(md)


if __name__ == '__main__':
    main()
