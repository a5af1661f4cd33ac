"""Prepare GoPro for the option files in options/: flat pair folders, NAFNet's 512x512 crops and lmdb.

From GoPro's published layout (GOPRO_Large)::

    <src>/train/<scene>/{blur,blur_gamma,sharp}/<frame>.png      2103 pairs in 22 scenes
    <src>/test/<scene>/{blur,blur_gamma,sharp}/<frame>.png       1111 pairs in 11 scenes

to, under ``--dst`` (default ``datasets/GoPro``)::

    train/input/<scene>_<frame>.png, train/target/...    the pairs, flat (MPRNet's training folders)
    test/input/..., test/target/...                      the test pairs, flat (Restormer/MPRNet testing)
    train/blur_crops/<scene>_<frame>_s001.png, ...       512x512 crops, step 256 (NAFNet's
    train/sharp_crops/...                                scripts/data_preparation/gopro.py; on GoPro's 720x1280
                                                         frames Restormer's generate_patches_gopro.py cuts the same
                                                         grid: 8 crops per frame)
    val/input_crops/..., val/target_crops/...            256x256 centre crops of the test pairs (the validation
                                                         sets of Restormer's and MPRNet's training)
    train/blur_crops.lmdb, train/sharp_crops.lmdb        the crops in lmdb (NAFNet/HINet training)
    test/input.lmdb, test/target.lmdb                    the test pairs in lmdb (NAFNet/HINet validation, testing)

The lmdb folders follow BasicSR's layout (``data.mdb``, ``lock.mdb``, ``meta_info.txt`` with lines
``<key>.png (h,w,c) <png compression>``; key = file name without ``.png``), written as
``basicsr.utils.lmdb_util.make_lmdb_from_imgs`` writes them (its ``read_img_worker`` encodes each image), but in
committed batches with a journal so that an interrupted run resumes.

Never overwrites: every file is written under a temporary name and renamed when complete; a run records its options
and progress in ``<dst>/.prepare_gopro/``; run the same command again after an interruption and it continues where it
stopped. A finished output (``<dst>/.prepare_gopro/COMPLETE``), or output paths that no unfinished run of this script
recorded, make it refuse with a non-zero exit and the path. The whole output needs some tens of GB.

Usage::

    python scripts/prepare_gopro.py --src /data/GOPRO_Large [--dst datasets/GoPro] [--workers 8]
"""
import argparse
import cv2
import json
import lmdb
import numpy as np
import os
import os.path as osp
import shutil
import sys
from multiprocessing import Pool
from tqdm import tqdm

STATE_DIR = '.prepare_gopro'
CROP_PNG_LEVEL = 3  # NAFNet's gopro.py: cv2.IMWRITE_PNG_COMPRESSION 3 for the crops
LMDB_PNG_LEVEL = 1  # make_lmdb_from_imgs' default compress_level
LMDB_BATCH = 200  # images per lmdb transaction (one journal flush each)


class PrepareError(Exception):
    """A problem with the source or the destination; main() prints it and exits with status 1."""


class StopRequested(Exception):
    """Raised after ``--stop-after`` items (to test resuming); main() exits with status 3."""


# ----------------------------------------------------------------------------------------------- small file helpers
def png_names(folder):
    """Sorted names of the ``*.png`` files directly in ``folder`` (hidden and temporary files excluded)."""
    return sorted(n for n in os.listdir(folder) if n.lower().endswith('.png') and not n.startswith('.'))


def _tmp_path(path):
    folder, name = osp.split(path)
    return osp.join(folder, f'.{name}.tmp-{os.getpid()}')


def write_bytes_atomic(path, data):
    """Write ``data`` under a temporary name, then rename to ``path`` (a present file is always complete)."""
    tmp = _tmp_path(path)
    with open(tmp, 'wb') as f:
        f.write(data)
    os.replace(tmp, path)


def copy_atomic(src, dst):
    tmp = _tmp_path(dst)
    shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def write_png_atomic(path, img, level):
    ok, buf = cv2.imencode('.png', img, [cv2.IMWRITE_PNG_COMPRESSION, level])
    if not ok:
        raise PrepareError(f'could not encode {path}')
    write_bytes_atomic(path, buf.tobytes())


def read_image(path):
    img = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    if img is None:
        raise PrepareError(f'cannot read image {path}')
    return img


def remove_stale_tmp(folder):
    """Delete the temporary files an interrupted run of these scripts left in ``folder``."""
    if osp.isdir(folder):
        for name in os.listdir(folder):
            if name.startswith('.') and '.tmp-' in name:
                os.remove(osp.join(folder, name))


def lmdb_key(name):
    """lmdb key of an image file: its name without ``.png``, dots made underscores.

    BasicSR's ``paired_paths_from_lmdb`` reads a key from ``meta_info.txt`` as the text before the first dot, so a
    key must not contain one (HIDE's names do: ``10fromGOPR0950.MP4.png``).
    """
    stem = name[:-4] if name.lower().endswith('.png') else osp.splitext(name)[0]
    key = stem.replace('.', '_')
    try:
        key.encode('ascii')
    except UnicodeEncodeError:
        raise PrepareError(f'{name}: lmdb keys must be ASCII; rename the file or use --no-lmdb')
    return key


# ----------------------------------------------------------------------------------------------- workers (picklable)
def copy_pair_worker(item):
    """item: (src_lq, src_gt, dst_lq, dst_gt). Copies both files."""
    src_lq, src_gt, dst_lq, dst_gt = item
    copy_atomic(src_lq, dst_lq)
    copy_atomic(src_gt, dst_gt)
    return None


def crop_positions(size, crop_size, step, thresh_size):
    """Start offsets along one side, as NAFNet's ``extract_subimages`` (BasicSR's extract_subimages.py)."""
    space = np.arange(0, size - crop_size + 1, step)
    if size - (space[-1] + crop_size) > thresh_size:
        space = np.append(space, size - crop_size)
    return [int(v) for v in space]


def crop_pair_worker(item):
    """item: (lq_path, gt_path, lq_dir, gt_dir, crop_size, step, thresh_size). Returns the number of crops."""
    lq_path, gt_path, lq_dir, gt_dir, crop_size, step, thresh_size = item
    lq, gt = read_image(lq_path), read_image(gt_path)
    if lq.shape != gt.shape:
        raise PrepareError(f'{lq_path} is {lq.shape}, but {gt_path} is {gt.shape}')
    h, w = gt.shape[:2]
    if h < crop_size or w < crop_size:
        raise PrepareError(f'{gt_path} is {h}x{w}, smaller than --crop-size {crop_size}')
    stem = osp.splitext(osp.basename(gt_path))[0]
    index = 0
    for x in crop_positions(h, crop_size, step, thresh_size):
        for y in crop_positions(w, crop_size, step, thresh_size):
            index += 1
            name = f'{stem}_s{index:03d}.png'
            for img, folder in ((lq, lq_dir), (gt, gt_dir)):
                crop = np.ascontiguousarray(img[x:x + crop_size, y:y + crop_size, ...])
                write_png_atomic(osp.join(folder, name), crop, CROP_PNG_LEVEL)
    return index


def center_crop_pair_worker(item):
    """item: (lq_path, gt_path, dst_lq, dst_gt, size). The centre ``size`` x ``size`` crop, as Restormer's."""
    lq_path, gt_path, dst_lq, dst_gt, size = item
    for src, dst in ((lq_path, dst_lq), (gt_path, dst_gt)):
        img = read_image(src)
        h, w = img.shape[:2]
        if h < size or w < size:
            raise PrepareError(f'{src} is {h}x{w}, smaller than --val-crop-size {size}')
        i, j = (h - size) // 2, (w - size) // 2
        write_png_atomic(dst, np.ascontiguousarray(img[i:i + size, j:j + size, ...]), CROP_PNG_LEVEL)
    return None


def basicsr_read_img_worker():
    """BasicSR's ``read_img_worker`` (the encoder of make_lmdb_from_imgs), imported on first use.

    Imported late so that copying and cropping do not load torch; ``basicsr_mh`` comes first, since BasicSR 1.4.2
    cannot be imported on current torchvision without its alias.
    """
    # isort: off
    import basicsr_mh  # noqa: F401
    from basicsr.utils.lmdb_util import read_img_worker
    # isort: on
    return read_img_worker


def lmdb_encode_worker(item):
    """item: (path, key). Returns (key, png bytes, (h, w, c)) with BasicSR's read_img_worker."""
    path, key = item
    if not osp.isfile(path):
        raise PrepareError(f'cannot read image {path}')
    key, img_byte, shape = basicsr_read_img_worker()(path, key, LMDB_PNG_LEVEL)
    return key, img_byte.tobytes(), shape


def _call(job):
    func, item = job
    return item, func(item)


# ----------------------------------------------------------------------------------------------- the resumable runner
class Preparer:
    """Runs the stages of a preparation resumably under ``dst`` (see the module docstring).

    Args:
        dst (str): output root.
        tool (str): script name, for the state folder and messages (``prepare_gopro``).
        params (dict): the options that determine the output; a resumed run must pass the same.
        outputs (list[str]): output paths relative to ``dst`` (for the refuse-to-overwrite check).
        workers (int): worker processes (0 or 1: in this process).
        stop_after (int | None): stop (StopRequested) after this many new items, to test resuming.
    """

    def __init__(self, dst, tool, params, outputs, workers=0, stop_after=None):
        self.dst = dst
        self.tool = tool
        self.params = params
        self.outputs = outputs
        self.workers = workers
        self.stop_after = stop_after
        self.state_dir = osp.join(dst, f'.{tool}')
        self.processed = 0

    @property
    def complete_marker(self):
        return osp.join(self.state_dir, 'COMPLETE')

    def start(self):
        """Refuse (PrepareError) or return 'fresh' / 'resume'; creates the state folder for a fresh run."""
        state_file = osp.join(self.state_dir, 'state.json')
        if osp.exists(self.complete_marker):
            raise PrepareError(f'{self.dst} already holds a complete output of {self.tool}.py (marker '
                               f'{self.complete_marker}); refusing to overwrite it, nothing was written. Remove '
                               f'{self.dst} yourself to redo it, or choose another --dst.')
        if osp.isfile(state_file):
            with open(state_file) as f:
                recorded = json.load(f)
            if recorded != self.params:
                diff = ', '.join(f'{k}: {recorded.get(k)!r} (now {self.params.get(k)!r})'
                                 for k in sorted(set(recorded) | set(self.params))
                                 if recorded.get(k) != self.params.get(k))
                raise PrepareError(f'an unfinished run of {self.tool}.py with other options is recorded in '
                                   f'{state_file} ({diff}); refusing to mix them. Resume it with the same options, '
                                   f'or remove {self.dst} yourself.')
            return 'resume'
        for rel in self.outputs:
            path = osp.join(self.dst, rel)
            if osp.exists(path) and not (osp.isdir(path) and not os.listdir(path)):
                raise PrepareError(f'{path} exists and no unfinished run of {self.tool}.py is recorded in '
                                   f'{self.state_dir}; refusing to overwrite it, nothing was written. Remove it '
                                   'yourself or choose another --dst.')
        os.makedirs(self.state_dir, exist_ok=True)
        write_bytes_atomic(state_file, json.dumps(self.params, indent=1, sort_keys=True).encode())
        return 'fresh'

    def finish(self, summary):
        write_bytes_atomic(self.complete_marker, json.dumps(summary, indent=1, sort_keys=True).encode())

    # ------------------------------------------------------------------ running items
    def _tick(self):
        self.processed += 1
        if self.stop_after is not None and self.processed >= self.stop_after:
            raise StopRequested(f'stopped after {self.processed} items (--stop-after); run the same command again '
                                'to resume')

    def _map(self, func, items):
        """Yield (item, func(item)) for every item, in worker processes when ``workers`` > 1."""
        if self.workers <= 1 or len(items) <= 1:
            for item in items:
                yield item, func(item)
            return
        pool = Pool(self.workers)
        try:
            for result in pool.imap_unordered(_call, [(func, item) for item in items]):
                yield result
            pool.close()
        finally:
            pool.terminate()
            pool.join()

    def run_stage(self, title, items, func, done=None, record=None, folders=()):
        """Run ``func`` on every item not ``done``; ``record(item, result)`` after each one."""
        for folder in folders:
            os.makedirs(folder, exist_ok=True)
            remove_stale_tmp(folder)
        todo = [item for item in items if done is None or not done(item)]
        with tqdm(total=len(items), initial=len(items) - len(todo), desc=title, unit='img') as pbar:
            gen = self._map(func, todo)
            try:
                for item, result in gen:
                    if record is not None:
                        record(item, result)
                    pbar.update(1)
                    self._tick()
            finally:
                gen.close()
        return len(items)

    # ------------------------------------------------------------------ journals
    def journal_path(self, stage):
        return osp.join(self.state_dir, f'{stage}.journal')

    def read_journal(self, stage):
        path = self.journal_path(stage)
        if not osp.isfile(path):
            return []
        with open(path) as f:
            lines = f.read().split('\n')
        return [line for line in lines[:-1] if line]  # a last line without newline was cut off: ignore it

    def append_journal(self, stage, lines):
        if lines:
            with open(self.journal_path(stage), 'a') as f:
                f.write(''.join(f'{line}\n' for line in lines))
                f.flush()
                os.fsync(f.fileno())

    # ------------------------------------------------------------------ stages
    def copy_stage(self, title, pairs, lq_dir, gt_dir):
        """pairs: [(src_lq, src_gt, name)] -> lq_dir/name, gt_dir/name."""
        items = [(lq, gt, osp.join(lq_dir, name), osp.join(gt_dir, name)) for lq, gt, name in pairs]
        return self.run_stage(
            title,
            items,
            copy_pair_worker,
            done=lambda it: osp.isfile(it[2]) and osp.isfile(it[3]),
            folders=(lq_dir, gt_dir))

    def crop_stage(self, stage, title, lq_src, gt_src, lq_dir, gt_dir, crop_size, step, thresh_size):
        """Sub-image crops of every pair of ``lq_src``/``gt_src``; returns the number of crops."""
        journal = {}
        for line in self.read_journal(stage):
            name, _, count = line.rpartition(' ')
            if count.isdigit():  # anything else is a line an interruption garbled: that image is simply redone
                journal[name] = int(count)

        def done(item):
            name = osp.basename(item[1])
            count = journal.get(name)
            if count is None:
                return False
            stem = osp.splitext(name)[0]
            return all(
                osp.isfile(osp.join(folder, f'{stem}_s{i:03d}.png')) for i in range(1, count + 1)
                for folder in (lq_dir, gt_dir))

        def record(item, count):
            journal[osp.basename(item[1])] = count
            self.append_journal(stage, [f'{osp.basename(item[1])} {count}'])

        names = png_names(gt_src)
        items = [(osp.join(lq_src, n), osp.join(gt_src, n), lq_dir, gt_dir, crop_size, step, thresh_size)
                 for n in names]
        self.run_stage(title, items, crop_pair_worker, done=done, record=record, folders=(lq_dir, gt_dir))
        return sum(journal[n] for n in names)

    def center_crop_stage(self, title, lq_src, gt_src, lq_dir, gt_dir, size):
        names = png_names(gt_src)
        items = [(osp.join(lq_src, n), osp.join(gt_src, n), osp.join(lq_dir, n), osp.join(gt_dir, n), size)
                 for n in names]
        return self.run_stage(
            title,
            items,
            center_crop_pair_worker,
            done=lambda it: osp.isfile(it[2]) and osp.isfile(it[3]),
            folders=(lq_dir, gt_dir))

    def lmdb_stage(self, stage, title, folder, lmdb_path):
        """All ``*.png`` of ``folder`` into ``lmdb_path`` (BasicSR layout); resumable; returns the image count."""
        names = png_names(folder)
        if not names:
            raise PrepareError(f'{folder} has no PNG images to put into {lmdb_path}')
        keys = [lmdb_key(n) for n in names]
        if len(set(keys)) != len(keys):
            raise PrepareError(f'two images of {folder} map to the same lmdb key; rename them or use --no-lmdb')
        meta_path = osp.join(lmdb_path, 'meta_info.txt')
        if not osp.isdir(lmdb_path) and osp.exists(self.journal_path(stage)):
            os.remove(self.journal_path(stage))  # the lmdb went away: start it again
        meta = {}
        for line in self.read_journal(stage):
            meta[line.split(' ', 1)[0][:-len('.png')]] = line
        if osp.isfile(meta_path) and all(k in meta for k in keys):
            with tqdm(total=len(keys), initial=len(keys), desc=title, unit='img'):
                return len(keys)
        basicsr_read_img_worker()  # import once here, before worker processes fork
        sample = read_image(osp.join(folder, names[0]))
        map_size = int(sample.nbytes * len(names) * 1.5) + (64 << 20)
        env = lmdb.open(lmdb_path, map_size=map_size)
        pending = []
        txn = env.begin(write=True)

        def commit():
            nonlocal txn
            txn.commit()
            self.append_journal(stage, pending)
            pending.clear()
            txn = env.begin(write=True)

        def record(item, result):
            key, img_byte, (h, w, c) = result
            txn.put(key.encode('ascii'), img_byte)
            line = f'{key}.png ({h},{w},{c}) {LMDB_PNG_LEVEL}'
            meta[key] = line
            pending.append(line)
            if len(pending) >= LMDB_BATCH:
                commit()

        items = [(osp.join(folder, n), k) for n, k in zip(names, keys)]
        try:
            self.run_stage(title, items, lmdb_encode_worker, done=lambda it: it[1] in meta, record=record)
        finally:
            commit()
            txn.abort()
            env.close()
        write_bytes_atomic(meta_path, ''.join(f'{meta[k]}\n' for k in keys).encode())
        return len(keys)


# ----------------------------------------------------------------------------------------------- GoPro
def gopro_pairs(src, split, blur_kind):
    """[(blurred path, sharp path, '<scene>_<frame>.png')] of ``src/split``, checked for matching names."""
    root = osp.join(src, split)
    if not osp.isdir(root):
        raise PrepareError(f'{root} does not exist: --src must be GoPro\'s GOPRO_Large folder, with '
                           'train/<scene>/{blur,blur_gamma,sharp} and test/<scene>/...')
    scenes = sorted(d for d in os.listdir(root) if osp.isdir(osp.join(root, d)) and not d.startswith('.'))
    if not scenes:
        raise PrepareError(f'{root} has no scene folders')
    pairs = []
    for scene in scenes:
        blur_dir, sharp_dir = osp.join(root, scene, blur_kind), osp.join(root, scene, 'sharp')
        for folder in (blur_dir, sharp_dir):
            if not osp.isdir(folder):
                raise PrepareError(f'{folder} does not exist (scene {scene} of {root})')
        blurred, sharp = png_names(blur_dir), png_names(sharp_dir)
        if blurred != sharp:
            odd = sorted(set(blurred) ^ set(sharp))[:5]
            raise PrepareError(f'{blur_dir} and {sharp_dir} hold different file names, e.g. {odd}')
        if not blurred:
            raise PrepareError(f'{blur_dir} has no PNG images')
        pairs += [(osp.join(blur_dir, n), osp.join(sharp_dir, n), f'{scene}_{n}') for n in blurred]
    return pairs, len(scenes)


def gopro_outputs(args):
    outs = ['train/input', 'train/target', 'test/input', 'test/target', 'train/blur_crops', 'train/sharp_crops']
    if args.val_crop_size:
        outs += ['val/input_crops', 'val/target_crops']
    if not args.no_lmdb:
        outs += ['train/blur_crops.lmdb', 'train/sharp_crops.lmdb', 'test/input.lmdb', 'test/target.lmdb']
    return outs


def prepare_gopro(args):
    src, dst = osp.abspath(args.src), args.dst
    train_pairs, n_train_scenes = gopro_pairs(src, 'train', args.blur_kind)
    test_pairs, n_test_scenes = gopro_pairs(src, 'test', args.blur_kind)
    params = {
        'src': src,
        'blur_kind': args.blur_kind,
        'crop_size': args.crop_size,
        'step': args.step,
        'thresh_size': args.thresh_size,
        'val_crop_size': args.val_crop_size,
        'lmdb': not args.no_lmdb
    }
    prep = Preparer(dst, 'prepare_gopro', params, gopro_outputs(args), args.workers, args.stop_after)
    mode = prep.start()
    print(f'{"Resuming" if mode == "resume" else "Preparing"} {dst} from {src}: train {len(train_pairs)} pairs '
          f'({n_train_scenes} scenes), test {len(test_pairs)} pairs ({n_test_scenes} scenes), blur: {args.blur_kind}')

    def d(*parts):
        return osp.join(dst, *parts)

    summary = {'train_pairs': len(train_pairs), 'test_pairs': len(test_pairs)}
    prep.copy_stage('copy train', train_pairs, d('train', 'input'), d('train', 'target'))
    prep.copy_stage('copy test', test_pairs, d('test', 'input'), d('test', 'target'))
    summary['train_crops'] = prep.crop_stage('crops', f'crop {args.crop_size}/{args.step}', d('train', 'input'),
                                             d('train', 'target'), d('train', 'blur_crops'), d('train', 'sharp_crops'),
                                             args.crop_size, args.step, args.thresh_size)
    if args.val_crop_size:
        summary['val_crops'] = prep.center_crop_stage(f'val centre crop {args.val_crop_size}', d('test', 'input'),
                                                      d('test', 'target'), d('val', 'input_crops'),
                                                      d('val', 'target_crops'), args.val_crop_size)
    if not args.no_lmdb:
        lmdb_stages = [('lmdb-blur-crops', 'train/blur_crops'), ('lmdb-sharp-crops', 'train/sharp_crops'),
                       ('lmdb-test-input', 'test/input'), ('lmdb-test-target', 'test/target')]
        for stage, folder in lmdb_stages:
            prep.lmdb_stage(stage, f'lmdb {folder}', d(folder), d(folder) + '.lmdb')
    prep.finish(summary)
    print(f'Done: {dst} ({", ".join(f"{k} {v}" for k, v in summary.items())}).')
    return summary


def run_main(func, args, tool):
    """Run ``func(args)``; errors print one line naming the path and exit 1 (3 for --stop-after)."""
    try:
        func(args)
    except PrepareError as err:
        print(f'{tool}: error: {err}', file=sys.stderr)
        sys.exit(1)
    except StopRequested as err:
        print(f'{tool}: {err}', file=sys.stderr)
        sys.exit(3)
    except KeyboardInterrupt:
        print(f'\n{tool}: interrupted; run the same command again to resume', file=sys.stderr)
        sys.exit(130)


def build_parser():
    parser = argparse.ArgumentParser(
        description=__doc__.split('\n\n')[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument('--src', required=True, help='GoPro\'s GOPRO_Large folder (train/ and test/ inside)')
    parser.add_argument('--dst', default='datasets/GoPro', help='output folder')
    parser.add_argument(
        '--blur-kind',
        choices=['blur', 'blur_gamma'],
        default='blur',
        help='which blurred images to use (the papers use `blur`)')
    parser.add_argument('--crop-size', type=int, default=512, help='training crop size (NAFNet: 512)')
    parser.add_argument('--step', type=int, default=256, help='training crop step (NAFNet: 256)')
    parser.add_argument(
        '--thresh-size',
        type=int,
        default=0,
        help='add a last crop flush with the border when more than this many pixels remain')
    parser.add_argument(
        '--val-crop-size',
        type=int,
        default=256,
        help='centre crop of the test pairs for val/ (Restormer, MPRNet: 256); 0: no val/')
    parser.add_argument('--workers', type=int, default=min(8, os.cpu_count() or 1), help='worker processes (0: none)')
    parser.add_argument('--no-lmdb', action='store_true', help='skip the lmdb copies (NAFNet/HINet need them)')
    parser.add_argument('--stop-after', type=int, default=None, help=argparse.SUPPRESS)  # tests: simulate a crash
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    for key in ('crop_size', 'step'):
        if getattr(args, key) < 1:
            build_parser().error(f'--{key.replace("_", "-")} must be >= 1')
    if args.thresh_size < 0 or args.val_crop_size < 0 or args.workers < 0:
        build_parser().error('--thresh-size, --val-crop-size and --workers must be >= 0')
    run_main(prepare_gopro, args, 'prepare_gopro')


if __name__ == '__main__':
    main()
