"""Build time of an MH-C network (K = 4, combine) against its plain backbone, for every backbone we ship.

Each repeat builds the plain network and the MH-C one through BasicSR's ``build_network`` (plain first on even
repeats, MH-C first on odd ones), after one warm-up build of each; reported are the medians over ``--repeats`` and
their ratio, with the spread (min-max) of the ratio over the repeats. Our backbones declare their head layout, so the
MH-C build runs the backbone once (to start the heads at the input, ``head_init: identity``); ``--probe`` also times a
build that probes for the layout (``head_layers`` named: the path of BasicSR's and users' backbones).

Results go to ``benchmarks/results/build_time.json`` and ``build_time.md``.

Usage: ``python benchmarks/build_time.py [--repeats 7] [--threads 2] [--out benchmarks/results]``
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
import torch
from basicsr.archs import build_network
from basicsr.utils.registry import ARCH_REGISTRY

#: name -> plain backbone options (the published sizes; NAFNet-width16 of the quick start)
CONFIGS = {
    'NAFNet-width16 (quick start)':
    dict(type='NAFNet', width=16, enc_blk_nums=[1, 1, 1, 1], middle_blk_num=1, dec_blk_nums=[1, 1, 1, 1]),
    'NAFNet-width32 (GoPro)':
    dict(type='NAFNet', width=32, enc_blk_nums=[1, 1, 1, 28], middle_blk_num=1, dec_blk_nums=[1, 1, 1, 1]),
    'NAFNetLocal-width32':
    dict(type='NAFNetLocal', width=32, enc_blk_nums=[1, 1, 1, 28], middle_blk_num=1, dec_blk_nums=[1, 1, 1, 1]),
    'HINetLocal (GoPro)':
    dict(type='HINetLocal', wf=64, hin_position_left=3, hin_position_right=4),
    'Restormer (GoPro)':
    dict(type='Restormer'),
    'MPRNet (GoPro)':
    dict(type='MPRNet'),
}


def _timed(opt):
    torch.manual_seed(0)
    start = time.perf_counter()
    build_network(dict(opt))
    return time.perf_counter() - start


def measure(opt, repeats, probe):
    """Median seconds of the plain, MH-C (and probed MH-C) builds, and the MH-C / plain ratios of each repeat."""
    variants = {'plain': opt, 'mhc': dict(opt, num_heads=4, combine=True)}
    if probe:
        backbone = ARCH_REGISTRY.get(opt['type'])(**{k: v for k, v in opt.items() if k != 'type'})
        variants['mhc_probed'] = dict(variants['mhc'], head_layers=backbone.multihead_layout().layer_names)
    times = {name: [] for name in variants}
    for name, variant in variants.items():  # warm-up
        _timed(variant)
    for repeat in range(repeats):
        order = list(variants) if repeat % 2 == 0 else list(reversed(variants))
        for name in order:
            times[name].append(_timed(variants[name]))
    ratios = [m / p for m, p in zip(times['mhc'], times['plain'])]
    result = {name: statistics.median(values) for name, values in times.items()}
    result.update(ratio=statistics.median(ratios), ratio_min=min(ratios), ratio_max=max(ratios))
    if probe:
        result['probed_ratio'] = statistics.median(m / p for m, p in zip(times['mhc_probed'], times['plain']))
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--repeats', type=int, default=7)
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--probe', action='store_true', help='also time a build that probes for the layout')
    parser.add_argument('--out', default=os.path.join(os.path.dirname(os.path.abspath(__file__)), 'results'))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = {name: measure(opt, args.repeats, args.probe) for name, opt in CONFIGS.items()}
    record = dict(
        torch=torch.__version__,
        machine=platform.machine(),
        threads=args.threads,
        repeats=args.repeats,
        load=os.getloadavg()[0],
        results=rows)
    lines = [
        '| backbone | plain build (s) | MH-C build (s) | ratio (min-max) |' +
        (' probed MH-C ratio |' if args.probe else ''),
        '| --- | ---: | ---: | ---: |' + (' ---: |' if args.probe else '')
    ]
    for name, r in rows.items():
        probed = f' {r["probed_ratio"]:.2f} |' if args.probe else ''
        lines.append(f'| {name} | {r["plain"]:.3f} | {r["mhc"]:.3f} | {r["ratio"]:.2f} ({r["ratio_min"]:.2f}-'
                     f'{r["ratio_max"]:.2f}) |{probed}')
    table = '\n'.join(lines)
    print(table)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, 'build_time.json'), 'w') as f:
        json.dump(record, f, indent=2)
    with open(os.path.join(args.out, 'build_time.md'), 'w') as f:
        f.write(f'Build times on the CPU ({args.threads} threads, {args.repeats} interleaved repeats, medians; load '
                f'{record["load"]:.1f}; torch {torch.__version__}).\n\n{table}\n')


if __name__ == '__main__':
    main()
