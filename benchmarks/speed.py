"""Training and validation cost of a multi-head network (MH-C: K = 4, combine, K' = 10) over its single-head backbone.

For every configuration (NAFNet-width32 at 256x256, and CPU-sized Restormer and HINet; larger on ``--device cuda``):

* **training step time**: ``zero_grad`` + forward + pixel loss (``MinHeadLoss`` around it for MH-C, summed over the
  stages of HINet) + backward + AdamW step, on random (B, 3, S, S) pairs. Single-head and MH-C models live in the
  same process; each repeat times ``--steps`` steps of both, alternating which goes first (ABBA), after a warm-up.
  Reported: the median over ``--repeats`` repeats of the mean step time, and the ratio of the medians;
* **the options and the fork** (same interleaving, one process): ``fork`` = the plain backbone trained as BasicSR's
  SRModel trains it (L1Loss, FP32, contiguous, eager, no basicsr-mh wrapper or loss; with ``--reference`` the
  reference code's ``NAFNet`` for ``nafnet32``), and MH-C with each option of :mod:`basicsr_mh.acceleration`:
  ``mhc_bf16`` (``amp: bf16``), ``mhc_cl`` (``channels_last``), ``mhc_bf16_cl`` (both: the GPU recipe),
  ``mhc_compile`` (``compile: true``; its compilation happens in the warm-up and is not timed). ``--variants``
  chooses them; the headline figure is MH-C's step against the fork's;
* **peak memory** of training: on CUDA ``torch.cuda.max_memory_allocated`` (after ``reset_peak_memory_stats``); on the
  CPU the process RSS high-water mark (``resource.getrusage(RUSAGE_SELF).ru_maxrss``) of a fresh subprocess per
  configuration and variant (imports, model build, 1 warm-up + ``--steps`` steps; ``VmHWM``, as ``ru_maxrss`` keeps
  the parent's mark across fork/exec on Linux). ``peak`` is the whole process,
  ``train`` is the high-water mark minus the one measured right after the imports (before the model is built): the
  part the model, its gradients, the optimizer state and the activations account for. Ratios are of the ``train`` part
  (the stricter number; the whole-process ratio is in the JSON). tracemalloc does not see torch's allocations;
* **validation time**: ``eval()`` forward under ``no_grad`` + ``basicsr_mh.metrics.per_head`` for PSNR and for SSIM
  (as ``MultiHeadImageRestorationModel.head_scores`` does) on one (1, 3, H, W) image, K' = 10 heads over 1 head,
  interleaved repeats, medians.

``--reference PATH`` adds the paper's reference code, read at run time from
``PATH/NAFNet-main/basicsr/models/archs/{MHNAFNet_arch,NAFNet_arch}.py`` and the ``PSNRLoss`` /
``MultiHeadPSNRLoss`` classes of ``PATH/NAFNet-main/basicsr/models/losses/losses.py`` (only their import lines are
rewritten; nothing of it is stored here), measured the same way as configuration ``nafnet32-ref``.

Results go to ``benchmarks/results/<--name>.json`` and ``.md`` (``speed`` by default; ``_cuda`` added on the GPU);
the Markdown tables are printed.

Usage: ``python benchmarks/speed.py [--device cpu|cuda] [--quick] [--repeats 5] [--steps 2] [--reference PATH]
[--only nafnet32,hinet] [--variants fork,mhc_bf16,...] [--clock wall|cpu] [--name speed] [--out benchmarks/results]``
"""
import argparse
import ast
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
import types

# isort: off
import basicsr_mh  # noqa: F401  (torchvision alias, before basicsr)
# isort: on
import torch
from basicsr.archs import build_network
from basicsr.losses import build_loss

from basicsr_mh.acceleration import Acceleration
from basicsr_mh.losses.min_head_loss import MinHeadLoss
from basicsr_mh.metrics import per_head
from basicsr_mh.options import upgrade_network_options

NUM_HEADS, COMBINE = 4, True
NAFNET32 = dict(
    type='NAFNet', img_channel=3, width=32, middle_blk_num=1, enc_blk_nums=[1, 1, 1, 28], dec_blk_nums=[1, 1, 1, 1])
#: name -> network options, pixel loss, training (batch, size) and validation (H, W) per device.
CONFIGS = {
    'nafnet32':
    dict(
        net=NAFNET32,
        loss={'type': 'PSNRLoss'},
        cpu=dict(batch=1, size=256, val=(256, 256)),
        cuda=dict(batch=8, size=256, val=(720, 1280))),
    'restormer':
    dict(
        net=dict(type='Restormer', dim=24, num_blocks=[2, 2, 2, 2], num_refinement_blocks=2, heads=[1, 2, 4, 8]),
        loss={'type': 'L1Loss'},
        cpu=dict(batch=1, size=128, val=(128, 128)),
        cuda=dict(batch=4, size=128, val=(720, 1280)),
        cuda_net=dict(type='Restormer')),
    'hinet':
    dict(
        net=dict(type='HINet', wf=16, depth=4),
        loss={'type': 'PSNRLoss'},
        cpu=dict(batch=1, size=128, val=(128, 128)),
        cuda=dict(batch=8, size=256, val=(720, 1280)),
        cuda_net=dict(type='HINet', wf=64, depth=5)),
    'nafnet32-ref':
    dict(
        net='reference',
        loss='reference',
        cpu=dict(batch=1, size=256, val=(256, 256)),
        cuda=dict(batch=8, size=256, val=(720, 1280))),
}
#: single-head and MH-C (the ratios of the targets) first, then the fork and the options.
BASE_VARIANTS = ('single', 'mhc')
OPTION_VARIANTS = {
    'fork': {},
    'mhc_bf16': dict(amp='bf16'),
    'mhc_cl': dict(channels_last=True),
    'mhc_bf16_cl': dict(amp='bf16', channels_last=True),
    'mhc_compile': dict(compile=True),
}
VARIANTS = BASE_VARIANTS + tuple(OPTION_VARIANTS)
#: variants whose peak memory is measured (compile: a fresh process would compile again, minutes on a CPU).
MEMORY_VARIANTS = ('fork', 'single', 'mhc', 'mhc_bf16', 'mhc_cl', 'mhc_bf16_cl')
METRICS = {
    'psnr': dict(type='calculate_psnr', crop_border=0, test_y_channel=False),
    'ssim': dict(type='calculate_ssim', crop_border=0, test_y_channel=False)
}
TARGETS = {'step': 1.03, 'memory': 1.05, 'val': 1.3}


# ---------------------------------------------------------------------------------------------------- reference
def _exec_source(source, filename, namespace):
    exec(compile(source, filename, 'exec'), namespace)  # noqa: S102 (the user's own reference checkout)
    return namespace


def load_reference(path):
    """The reference ``NAFNet``, ``MHNAFNet``, ``PSNRLoss`` and ``MultiHeadPSNRLoss`` from checkout ``path``."""
    root = os.path.join(path, 'NAFNet-main', 'basicsr', 'models')
    util_file = os.path.join(root, 'archs', 'arch_util.py')
    util_src = open(util_file).read().replace('from basicsr.utils import get_root_logger',
                                              'from basicsr.utils import get_root_logger  # noqa')
    util = types.ModuleType('mh_reference_arch_util')
    _exec_source(util_src, util_file, util.__dict__)
    found = {}
    for fname, cls in (('NAFNet_arch.py', 'NAFNet'), ('MHNAFNet_arch.py', 'MHNAFNet')):
        file = os.path.join(root, 'archs', fname)
        src = open(file).read()
        src = src.replace('from basicsr.models.archs.arch_util import LayerNorm2d', 'LayerNorm2d = _util.LayerNorm2d')
        src = src.replace('from basicsr.models.archs.local_arch import Local_Base',
                          'class Local_Base:  # unused stub\n    pass')
        found[cls] = _exec_source(src, file, {'_util': util, '__name__': f'mh_reference_{cls}'})[cls]
    loss_file = os.path.join(root, 'losses', 'losses.py')
    loss_src = open(loss_file).read()
    tree = ast.parse(loss_src)
    namespace = {'torch': torch, 'nn': torch.nn, 'np': __import__('numpy')}
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name in ('PSNRLoss', 'MultiHeadPSNRLoss'):
            _exec_source(ast.get_source_segment(loss_src, node), loss_file, namespace)
            found[node.name] = namespace[node.name]
    return found


# ---------------------------------------------------------------------------------------------------- building
def network_options(name, device):
    """Network options of configuration ``name`` on ``device`` (the CUDA preset may use the published sizes)."""
    cfg = CONFIGS[name]
    return dict(cfg.get('cuda_net') or cfg['net']) if device == 'cuda' else dict(cfg['net'])


def build(name, variant, device, reference=None):
    """(network, loss, :class:`Acceleration`) of ``variant`` (:data:`VARIANTS`) for configuration ``name``."""
    accel = Acceleration(device_type=device)
    if variant in OPTION_VARIANTS:
        accel = Acceleration(
            device_type=device,
            **{
                k: ('default' if k == 'compile' else v)
                for k, v in OPTION_VARIANTS[variant].items()
            })
    if variant == 'fork':
        return build_fork(name, device, reference) + (accel, )
    if variant.startswith('mhc'):
        variant = 'mhc'
    return build_plugin(name, variant, device, reference) + (accel, )


def build_fork(name, device, reference=None):
    """The fork's single-head training: the plain backbone (the reference ``NAFNet`` with ``--reference``) and
    BasicSR's ``L1Loss``, as SRModel trains it."""
    if CONFIGS[name]['net'] == 'reference' or (reference and name == 'nafnet32'):
        kwargs = {k: v for k, v in NAFNET32.items() if k != 'type'}
        net = load_reference(reference)['NAFNet'](**kwargs)
    else:
        net = build_network(network_options(name, device))
    return net.to(device), build_loss({'type': 'L1Loss', 'loss_weight': 1.0, 'reduction': 'mean'}).to(device)


def build_plugin(name, variant, device, reference=None):
    """(network, loss) of ``variant`` ('single' or 'mhc') for configuration ``name`` on ``device``."""
    if CONFIGS[name]['net'] == 'reference':
        ref = load_reference(reference)
        kwargs = {k: v for k, v in NAFNET32.items() if k != 'type'}
        if variant == 'single':
            return ref['NAFNet'](**kwargs).to(device), ref['PSNRLoss']().to(device)
        return (ref['MHNAFNet'](n_heads=NUM_HEADS, combinate_heads=COMBINE,
                                **kwargs).to(device), ref['MultiHeadPSNRLoss']().to(device))
    net_opt = network_options(name, device)
    if variant == 'mhc':
        net_opt.update(num_heads=NUM_HEADS, combine=COMBINE)
    net_opt, _ = upgrade_network_options(net_opt)
    net = build_network(net_opt).to(device)
    loss_opt = dict(CONFIGS[name]['loss'])
    loss = MinHeadLoss(loss=loss_opt) if variant == 'mhc' else build_loss(loss_opt)
    return net, loss.to(device)


def sync(device):
    """Wait for the device (CUDA) so that wall-clock times are complete."""
    if device == 'cuda':
        torch.cuda.synchronize()


def train_step(net, loss, optim, x, y, accel=None, cache=None):
    """One training step: forward (with ``accel``'s autocast, memory format and compile; the output in FP32), loss
    (summed over stages of list outputs), backward, optimizer step."""
    optim.zero_grad(set_to_none=True)
    out = accel.run(net, x, cache if cache is not None else {}) if accel is not None else net(x)
    stages = out if isinstance(out, (list, tuple)) else [out]
    total = sum(loss(stage, y) for stage in stages)
    del out, stages  # as the model's optimize_parameters: the outputs are not kept through the backward pass
    total.backward()
    optim.step()


def batch(name, device, seed=0):
    """Random (x, y) training pair of configuration ``name``."""
    cfg = CONFIGS[name][device]
    gen = torch.Generator().manual_seed(seed)
    shape = (cfg['batch'], 3, cfg['size'], cfg['size'])
    return torch.rand(shape, generator=gen).to(device), torch.rand(shape, generator=gen).to(device)


#: ``--clock``: wall time, or the CPU time of this process (all its threads; on a shared CPU it leaves out the time
#: the process waits for cores other processes hold, so ratios are steadier; CPU only).
CLOCKS = {'wall': time.perf_counter, 'cpu': time.process_time}
CLOCK = CLOCKS['wall']


def timed(fn, device, n):
    """Mean seconds (of :data:`CLOCK`) of ``n`` calls of ``fn``."""
    sync(device)
    start = CLOCK()
    for _ in range(n):
        fn()
    sync(device)
    return (CLOCK() - start) / n


def validate(net, lq, gt, accel=None, cache=None):
    """The validation work for one image: forward (no_grad, eval) and per-head PSNR and SSIM."""
    with torch.no_grad():
        out = accel.run(net, lq, cache if cache is not None else {}) if accel is not None else net(lq)
        out = out[-1] if isinstance(out, (list, tuple)) else out
        heads = out if out.dim() == 5 else out.unsqueeze(1)
        return {m: per_head(heads, gt, opt) for m, opt in METRICS.items()}


def measure_time(name, device, repeats, steps, reference=None, variants=VARIANTS):
    """Interleaved step times of ``variants`` and validation times of single-head and MH-C:
    ``{variant: {'step': [..], 'val': [..]}}``."""
    torch.manual_seed(0)
    models = {}
    for v in variants:
        net, loss, accel = build(name, v, device, reference)
        models[v] = (accel.prepare_network(net), loss, accel, {})
    optims = {v: torch.optim.AdamW(models[v][0].parameters(), 1e-4) for v in variants}
    x, y = batch(name, device)
    vh, vw = CONFIGS[name][device]['val']
    gen = torch.Generator().manual_seed(1)
    lq, gt = torch.rand(1, 3, vh, vw, generator=gen).to(device), torch.rand(1, 3, vh, vw, generator=gen).to(device)
    times = {v: {'step': [], 'val': []} for v in variants}
    validated = [v for v in BASE_VARIANTS if v in variants]
    for v in variants:  # warm-up (allocator, oneDNN/cuDNN kernels, compilation)
        net, loss, accel, cache = models[v]
        net.train()
        for _ in range(2 if accel.compile else 1):
            train_step(net, loss, optims[v], x, y, accel, cache)
        if v in validated:
            net.eval()
            validate(net, lq, gt, accel, cache)
    for rep in range(repeats):
        order = variants if rep % 2 == 0 else variants[::-1]
        for v in order:
            net, loss, accel, cache = models[v]
            net.train()
            times[v]['step'].append(timed(lambda: train_step(net, loss, optims[v], x, y, accel, cache), device, steps))
        for v in (validated if rep % 2 == 0 else validated[::-1]):
            net, _, accel, cache = models[v]
            net.eval()
            times[v]['val'].append(timed(lambda: validate(net, lq, gt, accel, cache), device, 1))
    return times


# ---------------------------------------------------------------------------------------------------- memory
def rss_high_water_mb():
    """The process' RSS high-water mark in MiB: ``VmHWM`` of ``/proc/self/status`` on Linux, else ``ru_maxrss``.

    ``ru_maxrss`` alone is wrong in a child process on Linux: it keeps the parent's high-water mark across fork and
    execve, while ``VmHWM`` belongs to the new address space.
    """
    try:
        with open('/proc/self/status') as f:
            for line in f:
                if line.startswith('VmHWM:'):
                    return int(line.split()[1]) / 1024.
    except OSError:
        pass
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kib / 1024. if sys.platform != 'darwin' else kib / 2**20


def memory_child(name, variant, device, steps, reference):
    """Run in a fresh process: peak memory of 1 + ``steps`` training steps; prints one JSON line."""
    base = rss_high_water_mb()
    torch.manual_seed(0)
    net, loss, accel = build(name, variant, device, reference)
    net = accel.prepare_network(net)
    optim = torch.optim.AdamW(net.parameters(), 1e-4)
    x, y = batch(name, device)
    if device == 'cuda':
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    cache = {}
    for _ in range(1 + steps):
        train_step(net, loss, optim, x, y, accel, cache)
    result = {'peak_rss_mb': rss_high_water_mb(), 'base_rss_mb': base}
    result['train_rss_mb'] = result['peak_rss_mb'] - base
    if device == 'cuda':
        torch.cuda.synchronize()
        result['cuda_peak_mb'] = torch.cuda.max_memory_allocated() / 2**20
    print('MEMORY ' + json.dumps(result), flush=True)


def measure_memory(name, device, steps, repeats, reference=None, variants=MEMORY_VARIANTS):
    """Peak memory of ``variants``, each in fresh subprocesses (alternating): ``{variant: [result, ...]}``."""
    out = {v: [] for v in variants}
    for rep in range(repeats):
        for v in (variants if rep % 2 == 0 else variants[::-1]):
            cmd = [
                sys.executable,
                os.path.abspath(__file__), '--memory-child', name, v, '--device', device, '--steps',
                str(steps), '--threads',
                str(torch.get_num_threads())
            ]
            if reference:
                cmd += ['--reference', reference]
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
            line = [ln for ln in proc.stdout.splitlines() if ln.startswith('MEMORY ')]
            if proc.returncode or not line:
                raise RuntimeError(f'memory child {name}/{v} failed:\n{proc.stderr[-3000:]}')
            out[v].append(json.loads(line[-1][len('MEMORY '):]))
    return out


# ---------------------------------------------------------------------------------------------------- report
def _spread(a, b):
    """[min, max] over the repeats of the interleaved per-repeat ratio a[i] / b[i]."""
    ratios = [_ratio(x, y) for x, y in zip(a, b)]
    return [min(ratios), max(ratios)] if ratios else None


def summarize(name, device, times, memory):
    """Medians and ratios (MH-C over single-head; every variant over the fork) of one configuration."""
    timed_variants = [v for v in VARIANTS if v in times]
    step = {v: statistics.median(times[v]['step']) for v in timed_variants}
    val = {v: statistics.median(times[v]['val']) for v in timed_variants if times[v]['val']}
    mem_key = 'cuda_peak_mb' if device == 'cuda' else 'train_rss_mb'
    mem = {v: statistics.median(r[mem_key] for r in memory[v]) for v in memory}
    peak = {v: statistics.median(r['peak_rss_mb'] for r in memory[v]) for v in memory}
    cfg = CONFIGS[name][device]
    row = {
        'config': name,
        'train_batch': cfg['batch'],
        'train_size': cfg['size'],
        'val_size': list(cfg['val']),
        'network':
        'reference NAFNet / MHNAFNet' if CONFIGS[name]['net'] == 'reference' else network_options(name, device),
        'step_s': step,
        'step_ratio': _ratio(step.get('mhc'), step.get('single')),
        'step_ratio_spread': _spread(times.get('mhc', {}).get('step', []),
                                     times.get('single', {}).get('step', [])),
        'val_s': val,
        'val_ratio': _ratio(val.get('mhc'), val.get('single')),
        'memory_kind': mem_key,
        'memory_mb': mem,
        'memory_ratio': _ratio(mem.get('mhc'), mem.get('single')),
        'process_peak_rss_mb': peak,
        'process_peak_rss_ratio': _ratio(peak.get('mhc'), peak.get('single')),
        'raw': {
            'times': times,
            'memory': memory
        },
    }
    if 'fork' in step:  # step rate (fork's step time over the variant's) and memory over the fork's
        row['rate_vs_fork'] = {v: _ratio(step['fork'], t) for v, t in step.items()}
        row['memory_vs_fork'] = {v: _ratio(m, mem['fork']) for v, m in mem.items() if 'fork' in mem}
    return row


def _ratio(a, b):
    return a / b if a is not None and b else float('nan')


def _mark(ratio, target):
    return f'{ratio:.3f}' + (' ✓' if ratio <= target else ' ✗')


VARIANT_NAMES = {
    'fork': 'fork single-head (FP32, L1, plain backbone)',
    'single': 'single-head',
    'mhc': 'MH-C',
    'mhc_bf16': 'MH-C, amp bf16',
    'mhc_cl': 'MH-C, channels_last',
    'mhc_bf16_cl': 'MH-C, bf16 + channels_last',
    'mhc_compile': 'MH-C, compile',
}


def markdown(rows, meta):
    """Markdown tables of the summarized rows: MH-C over single-head, then every variant beside the fork."""
    mem_name = 'CUDA max_memory_allocated' if meta['device'] == 'cuda' else 'RSS high-water mark above imports'
    lines = [
        f"Device: {meta['device_name']}; torch {meta['torch']}; {meta.get('clock', 'wall')} clock; "
        f"{meta['repeats']} interleaved repeats of "
        f"{meta['steps']} steps (medians; spread: min-max of the per-repeat ratio); memory: {mem_name}, "
        f"{meta['memory_repeats']} fresh processes per variant (median). MH-C = K {NUM_HEADS}, combine (K' = 10). "
        f"Targets: step <= {TARGETS['step']}, memory <= {TARGETS['memory']} (training), validation with 10 heads <= "
        f"{TARGETS['val']} x one head.",
        '',
        '| config | train batch x size | step single (s) | step MH-C (s) | step ratio | spread | memory single (MiB) '
        '| memory MH-C (MiB) | memory ratio | val size | val 1 head (s) | val 10 heads (s) | val ratio |',
        '| --- | --- | ---: | ---: | ---: | --- | ---: | ---: | ---: | --- | ---: | ---: | ---: |',
    ]
    for r in rows:
        spread = r.get('step_ratio_spread') or [float('nan')] * 2
        lines.append(
            f"| {r['config']} | {r['train_batch']} x {r['train_size']}² | {r['step_s']['single']:.3f} | "
            f"{r['step_s']['mhc']:.3f} | {_mark(r['step_ratio'], TARGETS['step'])} | {spread[0]:.3f}-{spread[1]:.3f} | "
            f"{r['memory_mb']['single']:.0f} | {r['memory_mb']['mhc']:.0f} | "
            f"{_mark(r['memory_ratio'], TARGETS['memory'])} | {r['val_size'][0]}x{r['val_size'][1]} | "
            f"{r['val_s']['single']:.3f} | {r['val_s']['mhc']:.3f} | {_mark(r['val_ratio'], TARGETS['val'])} |")
    if meta['device'] == 'cpu':
        lines += [
            '', 'Whole-process RSS peak ratio (MH-C / single, imports included): ' +
            ', '.join(f"{r['config']} {r['process_peak_rss_ratio']:.3f}" for r in rows) + '.'
        ]
    with_options = [r for r in rows if set(r['step_s']) - set(BASE_VARIANTS)]
    if with_options:
        lines += [
            '', 'Every variant (absolute step times of one interleaved run; step rate = fork step / variant step, '
            'above 1 is faster than the fork; memory / fork, below 1 is less; blank where not measured):', '',
            '| config | variant | step (s) | step rate vs fork | memory (MiB) | memory / fork |',
            '| --- | --- | ---: | ---: | ---: | ---: |'
        ]
        for r in with_options:
            for v, t in r['step_s'].items():
                mem, rate = r['memory_mb'].get(v), r.get('rate_vs_fork', {}).get(v)
                mem_ratio = r.get('memory_vs_fork', {}).get(v)
                lines.append(f"| {r['config']} | {VARIANT_NAMES[v]} | {t:.3f} | "
                             f"{'' if rate is None else f'{rate:.2f}x'} | {'' if mem is None else f'{mem:.0f}'} | "
                             f"{'' if mem_ratio is None else f'{mem_ratio:.2f}'} |")
    return '\n'.join(lines) + '\n'


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--device', choices=['cpu', 'cuda'], default='cpu')
    parser.add_argument('--quick', action='store_true', help='5 repeats, 2 steps, 1 memory process per variant')
    parser.add_argument('--repeats', type=int, default=None, help='timing repeats (default 7; 5 with --quick)')
    parser.add_argument('--steps', type=int, default=None, help='steps per timing repeat (default 3; 2 --quick)')
    parser.add_argument('--memory-repeats', type=int, default=None, help='processes per variant (default 3; 1)')
    parser.add_argument('--reference', default=None, help='folder holding NAFNet-main/ of the reference code')
    parser.add_argument(
        '--threads',
        type=int,
        default=None,
        help='CPU threads (default: the idle cores, see '
        'basicsr_mh.demo.auto_threads; OpenMP threads waiting on busy cores distort timings)')
    parser.add_argument('--only', default=None, help='comma-separated configurations (default: all)')
    parser.add_argument(
        '--clock',
        choices=list(CLOCKS),
        default='wall',
        help='wall (default) or cpu: the process CPU time, steadier on a CPU shared with other work (CPU only)')
    parser.add_argument('--name', default='speed', help='result file stem (default speed: speed.json, speed.md)')
    parser.add_argument(
        '--variants',
        default=','.join(VARIANTS),
        help=f'comma-separated variants to time (single and mhc always; default: all of {", ".join(VARIANTS)})')
    parser.add_argument('--out', default=os.path.join(os.path.dirname(os.path.abspath(__file__)), 'results'))
    parser.add_argument('--memory-child', nargs=2, metavar=('CONFIG', 'VARIANT'), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.repeats = args.repeats or (5 if args.quick else 7)
    args.steps = args.steps or (2 if args.quick else 3)
    args.memory_repeats = args.memory_repeats or (1 if args.quick else 3)
    if args.repeats < 5:
        parser.error('--repeats must be >= 5 (medians of at least 5 interleaved repeats).')
    return args


def main(argv=None):
    """Run the benchmark; returns 0."""
    args = parse_args(argv)
    if args.device == 'cpu':
        from basicsr_mh.demo import auto_threads
        args.threads = args.threads or auto_threads()
        torch.set_num_threads(args.threads)
    if args.memory_child:
        memory_child(args.memory_child[0], args.memory_child[1], args.device, args.steps, args.reference)
        return 0
    global CLOCK
    if args.clock == 'cpu' and args.device == 'cuda':
        raise SystemExit('--clock cpu measures CPU time: use it with --device cpu.')
    CLOCK = CLOCKS[args.clock]
    if args.device == 'cuda' and not torch.cuda.is_available():
        raise SystemExit('--device cuda: no CUDA device is available.')
    names = [n for n in CONFIGS if n != 'nafnet32-ref' or args.reference]
    unknown = sorted(set(args.variants.split(',')) - set(VARIANTS))
    if unknown:
        raise SystemExit(f'--variants: unknown {", ".join(unknown)}; known: {", ".join(VARIANTS)}.')
    variants = [v for v in VARIANTS if v in BASE_VARIANTS or v in args.variants.split(',')]
    if args.only:
        names = [n for n in args.only.split(',') if n in names]
    rows = []
    start = time.time()
    for name in names:
        t0 = time.time()
        memory = measure_memory(name, args.device, args.steps, args.memory_repeats, args.reference,
                                [v for v in MEMORY_VARIANTS if v in variants])
        times = measure_time(name, args.device, args.repeats, args.steps, args.reference, variants)
        rows.append(summarize(name, args.device, times, memory))
        r = rows[-1]
        print(
            f"{name}: step ratio {r['step_ratio']:.3f}, memory ratio {r['memory_ratio']:.3f}, val ratio "
            f"{r['val_ratio']:.3f} ({time.time() - t0:.0f} s)",
            flush=True)
    meta = {
        'device': args.device,
        'torch': torch.__version__,
        'python': platform.python_version(),
        'device_name': torch.cuda.get_device_name() if args.device == 'cuda' else
        f'CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)',
        'repeats': args.repeats,
        'steps': args.steps,
        'memory_repeats': args.memory_repeats,
        'reference': bool(args.reference),
        'variants': variants,
        'clock': args.clock,
        'seconds': time.time() - start,
        'targets': TARGETS,
    }
    os.makedirs(args.out, exist_ok=True)
    suffix = '' if args.device == 'cpu' else f'_{args.device}'
    with open(os.path.join(args.out, f'{args.name}{suffix}.json'), 'w') as f:
        json.dump({'meta': meta, 'rows': rows}, f, indent=1)
        f.write('\n')
    text = markdown(rows, meta)
    with open(os.path.join(args.out, f'{args.name}{suffix}.md'), 'w') as f:
        f.write(text)
    print(text)
    return 0


if __name__ == '__main__':
    sys.exit(main())
