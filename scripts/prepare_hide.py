"""Prepare HIDE's test set for the option files in options/test/HIDE/: flat pair folders and lmdb.

From HIDE's published layout (HIDE_dataset)::

    <src>/test/test-close-ups/<name>.png, <src>/test/test-long-shot/<name>.png   2025 blurred test images
    <src>/GT/<name>.png                                                           sharp images, same file names
    <src>/test.txt                                                                the test list (cross-checked)

to, under ``--dst`` (default ``datasets/HIDE``)::

    test/input/<name>.png, test/target/<name>.png      the pairs, flat, original names (Restormer/MPRNet testing)
    test/input.lmdb, test/target.lmdb                  the pairs in lmdb, BasicSR's layout (NAFNet/HINet testing);
                                                       keys are the names without ``.png``, dots made underscores
                                                       (BasicSR reads a key up to its first dot)

Resumable and never overwrites, like prepare_gopro.py (whose machinery it uses): the state is in
``<dst>/.prepare_hide/``; a complete output, or output paths that no unfinished run recorded, make it refuse with a
non-zero exit and the path.

Usage::

    python scripts/prepare_hide.py --src /data/HIDE_dataset [--dst datasets/HIDE] [--workers 8]
"""
import argparse
import os
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.abspath(__file__)))
from prepare_gopro import PrepareError, Preparer, png_names, run_main  # noqa: E402


def read_test_list(path):
    """File names listed in HIDE's ``test.txt`` (one entry a line; folders and a missing ``.png`` tolerated)."""
    names = set()
    with open(path) as f:
        for line in f:
            entry = line.strip().replace('\\', '/')
            if entry:
                name = entry.split('/')[-1].split()[0]
                names.add(name if name.lower().endswith('.png') else f'{name}.png')
    return names


def hide_pairs(src):
    """[(blurred path, sharp path, name)] of HIDE's test set, checked: unique names, every GT present."""
    test_root, gt_root = osp.join(src, 'test'), osp.join(src, 'GT')
    for folder in (test_root, gt_root):
        if not osp.isdir(folder):
            raise PrepareError(f'{folder} does not exist: --src must be the HIDE_dataset folder, with '
                               'test/{test-close-ups,test-long-shot}/*.png and GT/*.png')
    folders = [test_root] + [
        osp.join(test_root, d)
        for d in sorted(os.listdir(test_root)) if osp.isdir(osp.join(test_root, d)) and not d.startswith('.')
    ]
    seen, pairs = {}, []
    for folder in folders:
        for name in png_names(folder):
            path = osp.join(folder, name)
            if name in seen:
                raise PrepareError(f'{path} and {seen[name]} have the same name; the flat output needs unique names')
            seen[name] = path
            gt = osp.join(gt_root, name)
            if not osp.isfile(gt):
                raise PrepareError(f'{gt} does not exist: no sharp image for {path}')
            pairs.append((path, gt, name))
    if not pairs:
        raise PrepareError(f'{test_root} and its subfolders hold no PNG images')
    listed = osp.join(src, 'test.txt')
    if osp.isfile(listed):
        expected = read_test_list(listed)
        found = set(seen)
        if expected != found:
            print(
                f'prepare_hide: warning: {listed} lists {len(expected)} images, {len(found)} found in {test_root} '
                f'({len(expected - found)} listed but not found, e.g. {sorted(expected - found)[:3]}; '
                f'{len(found - expected)} found but not listed, e.g. {sorted(found - expected)[:3]})',
                file=sys.stderr)
    return sorted(pairs, key=lambda p: p[2]), len(folders) - 1


def prepare_hide(args):
    src, dst = osp.abspath(args.src), args.dst
    pairs, n_groups = hide_pairs(src)
    outputs = ['test/input', 'test/target'] + ([] if args.no_lmdb else ['test/input.lmdb', 'test/target.lmdb'])
    prep = Preparer(dst, 'prepare_hide', {'src': src, 'lmdb': not args.no_lmdb}, outputs, args.workers, args.stop_after)
    mode = prep.start()
    print(f'{"Resuming" if mode == "resume" else "Preparing"} {dst} from {src}: {len(pairs)} test pairs '
          f'({n_groups} groups)')
    inp, tgt = osp.join(dst, 'test', 'input'), osp.join(dst, 'test', 'target')
    prep.copy_stage('copy test', pairs, inp, tgt)
    if not args.no_lmdb:
        prep.lmdb_stage('lmdb-test-input', 'lmdb test/input', inp, inp + '.lmdb')
        prep.lmdb_stage('lmdb-test-target', 'lmdb test/target', tgt, tgt + '.lmdb')
    summary = {'test_pairs': len(pairs)}
    prep.finish(summary)
    print(f'Done: {dst} ({len(pairs)} test pairs).')
    return summary


def build_parser():
    parser = argparse.ArgumentParser(
        description=__doc__.split('\n\n')[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument('--src', required=True, help='HIDE\'s HIDE_dataset folder (test/ and GT/ inside)')
    parser.add_argument('--dst', default='datasets/HIDE', help='output folder')
    parser.add_argument('--workers', type=int, default=min(8, os.cpu_count() or 1), help='worker processes (0: none)')
    parser.add_argument('--no-lmdb', action='store_true', help='skip the lmdb copies (NAFNet/HINet need them)')
    parser.add_argument('--stop-after', type=int, default=None, help=argparse.SUPPRESS)  # tests: simulate a crash
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.workers < 0:
        build_parser().error('--workers must be >= 0')
    run_main(prepare_hide, args, 'prepare_hide')


if __name__ == '__main__':
    main()
