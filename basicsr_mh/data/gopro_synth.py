"""GoPro-style blurred/sharp pairs synthesized from the real photos bundled with scikit-image (nothing is downloaded).

The procedure is GoPro's (Nah et al. 2017; the paper's §2.2): a burst of ``N`` consecutive frames (``N`` uniform in
``[frames_min, frames_max]``, default 7..13) is taken by a moving camera; the frames are averaged in linear light
(pixel values through the inverse camera response function (CRF), a gamma 2.2 curve by default), the average goes
back through the CRF, and the label is the middle frame, index ``N // 2`` (for even ``N`` too). Frames are rendered
from one photo by warping it along a random hand-held camera trajectory (:mod:`basicsr_mh.data.camera_trajectory`:
random speed, direction and acceleration, a small rotation and random-walk hand jitter), with bicubic sub-pixel
interpolation in linear light. Between frames the motion is sampled at ``S`` odd sub-frames (auto: at most 1 px apart)
so that the blur is a smooth integral rather than ``N`` ghosts; ``--subframes 1`` is GoPro's literal average of
``N`` instantaneous frames. The label frame's pose is the identity, so the sharp image is an exact crop of the photo,
while its place along the blur path varies with the acceleration and jitter: the randomness of the target that the
paper's multi-head training is built for. Nothing is tuned towards any method. The one filter is content: a crop
whose grey-level standard deviation is below ``min_std`` (e.g. the black border of ``retina``) is redrawn.

Photos: train and validation come from disjoint photos (:data:`TRAIN_PHOTOS`, :data:`VAL_PHOTOS`; the two views of
``stereo_motorcycle`` are the same scene and both in train). Pair ``i`` of a split uses photo ``i mod P`` of its list;
grey photos are replicated to 3 channels. Randomness: pair ``i`` of split ``s`` (0 train, 1 val) draws from
``np.random.default_rng(np.random.SeedSequence([seed, s, i]))``, so the output is byte-identical for a seed,
whatever the number of workers.

Layout (BasicSR's PairedImageDataset): ``OUT/{train,val}/{gt,lq}/<id>.png`` (uint8 RGB PNGs, ids such as
``0003_retina_00``: pair index, photo, occurrence of that photo), or with ``--lmdb`` ``OUT/{train,val}/{gt,lq}.lmdb``
with BasicSR's ``meta_info.txt``. ``OUT/meta.json`` records the parameters, the photo split and per-pair trajectory
statistics (frames, sub-frames, blur length/extent in px, label offset from the blur centroid); ``OUT/README.txt``
summarizes it. ``OUT`` is refused if it exists and is not empty; the data are written to a hidden sibling folder and
renamed into place at the end, so a failed run leaves nothing half-written.

Command line (also ``basicsr-mh make-data``)::

    python -m basicsr_mh.data.gopro_synth --out datasets/gopro_synth [--num-train 96 --num-val 12 --size 128]
        [--frames-min 7 --frames-max 13] [--seed 0] [--lmdb] [--workers 2]

Defaults (96 train + 12 val pairs of 128x128) are sized for a CPU demo that trains in minutes; generating them takes
a few seconds on 2 cores.
"""
import cv2
import json
import math
import numpy as np
import os
import shutil
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field

from basicsr_mh_cli.parsers import make_data_parser
from .camera_trajectory import TrajectoryConfig, sample_trajectory
from .crf import build_crf

# Real photographs of skimage.data, min side >= 300 px, not already blurred (``clock`` is a motion-blur sample) and not
# mostly flat (``cell``). name -> (skimage.data function, index into its returned tuple or None).
PHOTO_SOURCES = {
    'astronaut': ('astronaut', None),
    'coffee': ('coffee', None),
    'rocket': ('rocket', None),
    'immunohistochemistry': ('immunohistochemistry', None),
    'retina': ('retina', None),
    'hubble_deep_field': ('hubble_deep_field', None),
    'motorcycle_left': ('stereo_motorcycle', 0),
    'motorcycle_right': ('stereo_motorcycle', 1),
    'brick': ('brick', None),
    'grass': ('grass', None),
    'gravel': ('gravel', None),
    'moon': ('moon', None),
    'chelsea': ('chelsea', None),
    'camera': ('camera', None),
    'coins': ('coins', None),
}
#: Training photos (12 scenes; the two motorcycle views are one scene).
TRAIN_PHOTOS = ('astronaut', 'coffee', 'rocket', 'immunohistochemistry', 'retina', 'hubble_deep_field',
                'motorcycle_left', 'motorcycle_right', 'brick', 'grass', 'gravel', 'moon')
#: Validation photos, disjoint from :data:`TRAIN_PHOTOS`: a colour photo, a grey portrait, a grey still life.
VAL_PHOTOS = ('chelsea', 'camera', 'coins')

SPLITS = ('train', 'val')
_PNG_LEVEL = 1  # BasicSR's lmdb default; used for the PNG files too
_MARGIN = 3  # source pixels kept around the footprint for bicubic interpolation
_PHOTO_CACHE = {}


class PhotoUnavailable(RuntimeError):
    """A photo of the split list is not bundled with the installed scikit-image."""


def load_photo(name):
    """Photo ``name`` of :data:`PHOTO_SOURCES` as uint8 RGB (H, W, 3), read from scikit-image's bundled files.

    Raises :class:`PhotoUnavailable` when this scikit-image does not ship it (nothing is downloaded).
    """
    if name in _PHOTO_CACHE:
        return _PHOTO_CACHE[name]
    if name not in PHOTO_SOURCES:
        raise KeyError(f'unknown photo {name!r}; known: {", ".join(PHOTO_SOURCES)}.')
    func_name, index = PHOTO_SOURCES[name]
    from skimage import data as skdata
    func = getattr(skdata, func_name, None)
    if func is None:
        raise PhotoUnavailable(f'skimage.data.{func_name} does not exist in this scikit-image.')
    try:
        img = func()
    except Exception as err:  # e.g. a file that this install would have to download: never do that
        raise PhotoUnavailable(f'skimage.data.{func_name}() failed: {err}') from err
    if index is not None:
        img = img[index]
    img = np.asarray(img)
    if img.dtype != np.uint8:
        raise PhotoUnavailable(f'skimage.data.{func_name} is {img.dtype}, not a uint8 photo.')
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    img = np.ascontiguousarray(img[..., :3])
    img.setflags(write=False)
    _PHOTO_CACHE[name] = img
    return img


def available_photos(names):
    """(available, unavailable): ``names`` split by whether :func:`load_photo` can read them here."""
    ok, missing = [], []
    for name in names:
        try:
            load_photo(name)
            ok.append(name)
        except PhotoUnavailable:
            missing.append(name)
    return ok, missing


@dataclass(frozen=True)
class SynthConfig:
    """Parameters of one blurred/sharp pair.

    Attributes:
        size (int | tuple): output (h, w), or an int for square pairs.
        frames_min, frames_max (int): range of the burst length N (inclusive).
        subframes (int): odd sub-frames per frame, or 0 for auto (at most ``trajectory.max_subframe_step`` px apart).
        crf (str): ``'gamma'`` (GoPro), ``'srgb'`` or ``'linear'``; ``gamma``: its exponent.
        min_std (float): crops of the label whose grey standard deviation (in [0, 1]) is below this are redrawn,
            up to ``max_tries`` times (then the most textured one is kept).
        trajectory (TrajectoryConfig): camera motion ranges.
    """
    size: object = 128
    frames_min: int = 7
    frames_max: int = 13
    subframes: int = 0
    crf: str = 'gamma'
    gamma: float = 2.2
    min_std: float = 0.02
    max_tries: int = 20
    trajectory: TrajectoryConfig = field(default_factory=TrajectoryConfig)

    def __post_init__(self):
        h, w = self.hw
        if h < 8 or w < 8:
            raise ValueError(f'size must be at least 8 px, got {self.size}.')
        if not 1 <= self.frames_min <= self.frames_max:
            raise ValueError(f'need 1 <= frames_min <= frames_max, got {self.frames_min}, {self.frames_max}.')
        if self.subframes < 0 or (self.subframes and self.subframes % 2 == 0):
            raise ValueError(f'subframes must be 0 (auto) or a positive odd number, got {self.subframes}.')
        build_crf(self.crf, self.gamma)

    @property
    def hw(self):
        """(h, w) of the output."""
        if isinstance(self.size, (int, np.integer)):
            return int(self.size), int(self.size)
        h, w = self.size
        return int(h), int(w)

    def to_dict(self):
        d = asdict(self)
        d['size'] = list(self.hw)
        return d


def _hw(size):
    return (int(size), int(size)) if isinstance(size, (int, np.integer)) else (int(size[0]), int(size[1]))


def _source_region(photo, footprint, origin):
    """Crop the source pixels the footprint needs (reflect-padded where it leaves the photo).

    Returns (region uint8 (h', w', 3), (x, y) of the region's top-left in photo coordinates).
    """
    x0, y0, x1, y1 = footprint
    ox, oy = origin
    left, top = int(math.floor(ox + x0)) - _MARGIN, int(math.floor(oy + y0)) - _MARGIN
    right, bottom = int(math.ceil(ox + x1)) + _MARGIN + 1, int(math.ceil(oy + y1)) + _MARGIN + 1
    hp, wp = photo.shape[:2]
    pads = (max(0, -top), max(0, bottom - hp), max(0, -left), max(0, right - wp))
    region = photo[max(top, 0):min(bottom, hp), max(left, 0):min(right, wp)]
    if any(pads):
        region = cv2.copyMakeBorder(np.ascontiguousarray(region), *pads, cv2.BORDER_REFLECT_101)
    return region, (left, top)


def iter_burst(photo, trajectory, size, origin=None, crf=None):
    """Yield the ``T = N * S`` frames of ``trajectory`` one by one, each (h, w, 3) float32 linear irradiance.

    Same arguments as :func:`render_burst`; uses memory for one frame at a time.
    """
    h, w = _hw(size)
    photo = _as_rgb(photo)
    if origin is None:
        origin = ((photo.shape[1] - w) // 2, (photo.shape[0] - h) // 2)
    crf = crf or build_crf()
    region, (rx, ry) = _source_region(photo, trajectory.footprint((h, w)), origin)
    lut = crf.inverse_lut()
    linear = lut[region]
    mats = trajectory.matrices((h, w), (origin[0] - rx, origin[1] - ry))
    for mat in mats:
        frame = cv2.warpAffine(
            linear, mat, (w, h), flags=cv2.INTER_CUBIC | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REFLECT_101)
        yield np.clip(frame, 0.0, 1.0, out=frame)


def render_burst(photo, trajectory, size, origin=None, crf=None):
    """Render the frames a moving camera sees of ``photo``.

    Args:
        photo (np.ndarray): uint8 (Hp, Wp, 3) RGB or (Hp, Wp) grey, the scene in pixel values (through the CRF).
        trajectory (CameraTrajectory): the camera motion, T = N * S sub-frame poses.
        size (int | tuple): output (h, w).
        origin (tuple): (x, y) of the label frame's top-left corner in ``photo``; default centred.
        crf: a CRF of :mod:`basicsr_mh.data.crf` (default gamma 2.2) used to linearize the photo.

    Returns:
        np.ndarray: (T, h, w, 3) float32 linear irradiance in [0, 1]. Frame ``trajectory.label_index`` is the label
        (the middle frame, an exact crop of the photo); ``trajectory.frame_indices`` are the N video frames.
    """
    h, w = _hw(size)
    out = np.empty((len(trajectory), h, w, 3), np.float32)
    for i, frame in enumerate(iter_burst(photo, trajectory, size, origin, crf)):
        out[i] = frame
    return out


def blur_burst(burst, crf=None):
    """GoPro's blurred image of a linear burst (T, h, w, 3): ``CRF(mean_t burst)``, float (h, w, 3) in [0, 1]."""
    crf = crf or build_crf()
    return crf(np.asarray(burst, np.float64).mean(axis=0))


def to_uint8(img):
    """Float image in [0, 1] -> uint8, rounding half up (``floor(x * 255 + 0.5)``)."""
    return np.floor(np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def _as_rgb(photo):
    photo = np.asarray(photo)
    if photo.dtype != np.uint8:
        raise TypeError(f'photo must be uint8, got {photo.dtype}.')
    if photo.ndim == 2:
        photo = np.repeat(photo[..., None], 3, axis=2)
    return photo[..., :3]


def _grey_std(crop):
    return float(cv2.cvtColor(np.ascontiguousarray(crop), cv2.COLOR_RGB2GRAY).std()) / 255.0


def sample_origin(photo, trajectory, size, rng, min_std=0.0, max_tries=20):
    """Draw the label crop's top-left (x, y) so that the whole footprint lies in ``photo`` (when it fits).

    Crops whose grey standard deviation is below ``min_std`` are redrawn (up to ``max_tries``; then the most
    textured). If the footprint is larger than the photo, the crop is centred and the border reflected.
    """
    h, w = _hw(size)
    hp, wp = photo.shape[:2]
    x0, y0, x1, y1 = trajectory.footprint((h, w))
    lo_x, hi_x = math.ceil(-x0) + _MARGIN, math.floor(wp - 1 - x1) - _MARGIN
    lo_y, hi_y = math.ceil(-y0) + _MARGIN, math.floor(hp - 1 - y1) - _MARGIN
    if lo_x > hi_x or lo_y > hi_y:
        return (wp - w) // 2, (hp - h) // 2
    best, best_std = None, -1.0
    for _ in range(max(1, int(max_tries))):
        ox, oy = int(rng.integers(lo_x, hi_x + 1)), int(rng.integers(lo_y, hi_y + 1))
        std = _grey_std(photo[oy:oy + h, ox:ox + w])
        if std >= min_std:
            return ox, oy
        if std > best_std:
            best, best_std = (ox, oy), std
    return best


def synthesize_pair(photo, rng, cfg=None, return_burst=False):
    """One GoPro-style pair from ``photo``.

    Args:
        photo (np.ndarray): uint8 (Hp, Wp, 3) RGB (or grey (Hp, Wp)).
        rng (np.random.Generator): the only source of randomness.
        cfg (SynthConfig): parameters (default :class:`SynthConfig`).
        return_burst (bool): also put the (T, h, w, 3) float32 linear burst in ``info['burst']``.

    Returns:
        tuple: ``blurred`` uint8 (h, w, 3) RGB = to_uint8(CRF(mean over the burst)), ``sharp`` uint8 (h, w, 3) RGB =
        to_uint8(CRF(middle frame)), ``info`` dict: ``trajectory`` (CameraTrajectory), ``origin`` (x, y), ``crf``, and
        the JSON-able blur statistics of :meth:`CameraTrajectory.stats` plus ``label_index``.
    """
    cfg = cfg or SynthConfig()
    photo = _as_rgb(photo)
    size = cfg.hw
    crf = build_crf(cfg.crf, cfg.gamma)
    num_frames = int(rng.integers(cfg.frames_min, cfg.frames_max + 1))
    trajectory = sample_trajectory(rng, num_frames, size, cfg.trajectory, cfg.subframes)
    origin = sample_origin(photo, trajectory, size, rng, cfg.min_std, cfg.max_tries)
    total = np.zeros(size + (3, ), np.float64)
    burst = np.empty((len(trajectory), ) + size + (3, ), np.float32) if return_burst else None
    label = None
    for i, frame in enumerate(iter_burst(photo, trajectory, size, origin, crf)):
        total += frame
        if i == trajectory.label_index:
            label = frame.copy()
        if burst is not None:
            burst[i] = frame
    blurred = to_uint8(crf(total / len(trajectory)))
    sharp = to_uint8(crf(label))
    info = dict(trajectory.stats(size), label_index=trajectory.label_index, origin=[int(origin[0]), int(origin[1])])
    info.update(trajectory=trajectory, crf=crf)
    if burst is not None:
        info['burst'] = burst
    return blurred, sharp, info


def pair_rng(seed, split, index):
    """The generator of pair ``index`` of ``split`` ('train' or 'val'): independent of worker count and order."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), SPLITS.index(split), int(index)]))


def plan_split(photos, num):
    """[(pair id, photo name)] for ``num`` pairs cycling over ``photos``: ids ``<index>_<photo>_<occurrence>``."""
    if num and not photos:
        raise ValueError('no photo is available for a split that needs pairs.')
    return [(f'{i:04d}_{photos[i % len(photos)]}_{i // len(photos):02d}', photos[i % len(photos)]) for i in range(num)]


def _make_one(task):
    split, index, key, name, seed, cfg = task
    blurred, sharp, info = synthesize_pair(load_photo(name), pair_rng(seed, split, index), cfg)
    record = {'id': key, 'split': split, 'photo': name}
    record.update({k: v for k, v in info.items() if k not in ('trajectory', 'crf', 'burst')})
    params = [cv2.IMWRITE_PNG_COMPRESSION, _PNG_LEVEL]
    lq = cv2.imencode('.png', cv2.cvtColor(blurred, cv2.COLOR_RGB2BGR), params)[1].tobytes()
    gt = cv2.imencode('.png', cv2.cvtColor(sharp, cv2.COLOR_RGB2BGR), params)[1].tobytes()
    return key, lq, gt, record


def check_out_dir(out):
    """Raise FileExistsError if ``out`` exists and is not an empty folder (user data is never overwritten)."""
    if os.path.isdir(out):
        if os.listdir(out):
            raise FileExistsError(f'output folder {out!r} exists and is not empty; nothing was written. Fix: pass '
                                  'another --out, or remove that folder yourself.')
    elif os.path.lexists(out):
        raise FileExistsError(f'output path {out!r} exists and is not a folder; nothing was written. Fix: pass '
                              'another --out.')


def _summary(records):
    out = {}
    for key in ('num_frames', 'subframes', 'blur_length_px', 'blur_extent_px', 'label_offset_px',
                'max_corner_shift_px'):
        vals = np.array([r[key] for r in records], np.float64)
        out[key] = {
            'mean': round(float(vals.mean()), 3),
            'min': round(float(vals.min()), 3),
            'max': round(float(vals.max()), 3)
        }
    return out


def _readme(meta):
    p = meta['params']
    lines = [
        'GoPro-style synthetic deblurring pairs (basicsr_mh.data.gopro_synth)',
        '',
        f"Procedure: {meta['procedure']}",
        '',
        f"Pairs: {p['num_train']} train, {p['num_val']} val; size {p['size'][0]}x{p['size'][1]} (h x w); "
        f"frames {p['frames_min']}..{p['frames_max']}; subframes {p['subframes'] or 'auto'}; CRF {meta['crf']}; "
        f"seed {p['seed']}; format {meta['format']}.",
        f"Train photos: {', '.join(meta['photos']['train'])}",
        f"Val photos:   {', '.join(meta['photos']['val'])}",
    ]
    if meta['photos']['unavailable']:
        lines.append(f"Unavailable in this scikit-image (skipped): {', '.join(meta['photos']['unavailable'])}")
    lines += ['', 'Blur statistics (px, mean [min, max]):']
    for split, summ in meta['summary'].items():
        parts = [f"{k} {v['mean']} [{v['min']}, {v['max']}]" for k, v in summ.items()]
        lines.append(f'  {split}: ' + '; '.join(parts))
    lines += ['', 'Per-pair trajectories: meta.json ("pairs").', '']
    return '\n'.join(lines)


def make_dataset(out,
                 num_train=96,
                 num_val=12,
                 size=128,
                 seed=0,
                 lmdb=False,
                 workers=1,
                 frames_min=7,
                 frames_max=13,
                 progress=True,
                 cfg=None,
                 train_photos=TRAIN_PHOTOS,
                 val_photos=VAL_PHOTOS):
    """Write a GoPro-style pair dataset under ``out`` (refused if ``out`` exists and is not empty).

    Args:
        out (str): output folder. num_train, num_val (int): pairs per split (>= 0, not both 0).
        size (int | tuple): pair (h, w). seed (int): same seed -> byte-identical files.
        lmdb (bool): write ``{gt,lq}.lmdb`` (BasicSR format) instead of PNG folders.
        workers (int): threads; the output does not depend on it.
        frames_min, frames_max (int): burst length range. progress (bool): tqdm bar.
        cfg (SynthConfig): other parameters; its ``size``/``frames_*`` are replaced by the arguments above.
        train_photos, val_photos: photo names of :data:`PHOTO_SOURCES` (must be disjoint).

    Returns:
        dict: ``{'root': out, 'train': {'gt': path, 'lq': path}, 'val': {...}, 'meta': out/meta.json,
        'readme': out/README.txt}``; paths are folders (or ``.lmdb`` folders).
    """
    from tqdm import tqdm

    check_out_dir(out)
    num_train, num_val = int(num_train), int(num_val)
    if num_train < 0 or num_val < 0 or num_train + num_val < 1:
        raise ValueError(f'num_train and num_val must be >= 0 and not both 0, got {num_train}, {num_val}.')
    overlap = set(train_photos) & set(val_photos)
    if overlap:
        raise ValueError(f'train and val photos must be disjoint; both have {sorted(overlap)}.')
    cfg = cfg or SynthConfig()
    cfg = SynthConfig(**dict(
        asdict(cfg), size=size, frames_min=int(frames_min), frames_max=int(frames_max), trajectory=cfg.trajectory))
    train_ok, train_missing = available_photos(train_photos)
    val_ok, val_missing = available_photos(val_photos)
    for missing in train_missing + val_missing:
        print(f'gopro_synth: photo {missing!r} is not bundled with this scikit-image; skipped.', file=sys.stderr)
    plans = {'train': plan_split(train_ok, num_train), 'val': plan_split(val_ok, num_val)}
    tasks = [(split, i, key, name, seed, cfg) for split in SPLITS for i, (key, name) in enumerate(plans[split])]

    out = os.path.abspath(out)
    parent = os.path.dirname(out)
    os.makedirs(parent, exist_ok=True)
    stage = tempfile.mkdtemp(prefix=f'.{os.path.basename(out)}.partial-', dir=parent)
    try:
        writers = {split: _Writer(os.path.join(stage, split), lmdb, len(plans[split]), cfg.hw) for split in SPLITS}
        records = []
        workers = max(1, int(workers))
        bar = tqdm(total=len(tasks), desc='gopro_synth', unit='pair', disable=not progress, leave=False)
        with ThreadPoolExecutor(workers) if workers > 1 else _Serial() as pool:
            for task, (key, lq, gt, record) in zip(tasks, pool.map(_make_one, tasks)):
                writers[task[0]].put(key, lq, gt, cfg.hw)
                records.append(record)
                bar.update()
        bar.close()
        for writer in writers.values():
            writer.close()
        meta = _meta(cfg, seed, num_train, num_val, lmdb, train_ok, val_ok, train_missing + val_missing, records)
        with open(os.path.join(stage, 'meta.json'), 'w') as f:
            json.dump(meta, f, indent=1)
            f.write('\n')
        with open(os.path.join(stage, 'README.txt'), 'w') as f:
            f.write(_readme(meta))
        _publish(stage, out)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    paths = {'root': out, 'meta': os.path.join(out, 'meta.json'), 'readme': os.path.join(out, 'README.txt')}
    for split in SPLITS:
        ext = '.lmdb' if lmdb else ''
        paths[split] = {'gt': os.path.join(out, split, 'gt' + ext), 'lq': os.path.join(out, split, 'lq' + ext)}
    return paths


def _meta(cfg, seed, num_train, num_val, lmdb, train_ok, val_ok, missing, records):
    import skimage

    from ..version import __version__
    params = dict(cfg.to_dict(), num_train=num_train, num_val=num_val, seed=int(seed))
    return {
        'generator':
        'basicsr_mh.data.gopro_synth',
        'basicsr_mh_version':
        __version__,
        'versions': {
            'numpy': np.__version__,
            'opencv': cv2.__version__,
            'scikit-image': skimage.__version__
        },
        'procedure': ('GoPro (Nah et al. 2017): average N consecutive frames of a moving camera in linear light '
                      '(inverse CRF), apply the CRF; label = frame N // 2. Frames are bicubic warps of a real photo '
                      'along a random trajectory (velocity, acceleration, rotation, random-walk jitter), sampled at '
                      'S sub-frames per frame; the label frame is an exact crop of the photo.'),
        'crf':
        build_crf(cfg.crf, cfg.gamma).describe(),
        'format':
        'lmdb' if lmdb else 'png folders',
        'params':
        params,
        'photos': {
            'train': list(train_ok),
            'val': list(val_ok),
            'unavailable': list(missing)
        },
        'rng':
        'numpy default_rng(SeedSequence([seed, split (0 train, 1 val), pair index]))',
        'summary': {
            split: _summary([r for r in records if r['split'] == split])
            for split in SPLITS if any(r['split'] == split for r in records)
        },
        'pairs':
        records,
    }


def _publish(stage, out):
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(stage, 0o777 & ~umask)
    check_out_dir(out)  # again: someone may have written there meanwhile
    if os.path.isdir(out):
        os.rmdir(out)  # empty (checked)
    os.rename(stage, out)


class _Serial:
    """In-process stand-in for an executor (``workers=1``)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    @staticmethod
    def map(func, items):
        return map(func, items)


class _Writer:
    """Writes one split: ``{gt,lq}/<key>.png`` or ``{gt,lq}.lmdb`` (BasicSR's LmdbMaker, meta_info.txt)."""

    def __init__(self, root, lmdb, num, hw):
        self.lmdb = lmdb
        if lmdb:
            # isort: off
            import basicsr_mh  # noqa: F401  (the compat alias before basicsr)
            from basicsr.utils.lmdb_util import LmdbMaker
            # isort: on
            os.makedirs(root)
            map_size = max(1, num) * (hw[0] * hw[1] * 3 + 4096) * 4 + (1 << 24)
            self.makers = {
                k: LmdbMaker(os.path.join(root, f'{k}.lmdb'), map_size=map_size, compress_level=_PNG_LEVEL)
                for k in ('gt', 'lq')
            }
        else:
            self.dirs = {k: os.path.join(root, k) for k in ('gt', 'lq')}
            for d in self.dirs.values():
                os.makedirs(d)

    def put(self, key, lq, gt, hw):
        for kind, data in (('gt', gt), ('lq', lq)):
            if self.lmdb:
                self.makers[kind].put(data, key, (hw[0], hw[1], 3))
            else:
                with open(os.path.join(self.dirs[kind], key + '.png'), 'wb') as f:
                    f.write(data)

    def close(self):
        if self.lmdb:
            for maker in self.makers.values():
                maker.close()


def run(args, prog='basicsr-mh make-data'):
    """``basicsr-mh make-data`` with parsed arguments (:func:`basicsr_mh_cli.parsers.make_data_parser`); returns the
    exit code (0, or 2 with a one-line error for a refused --out or a bad value)."""
    try:
        traj = TrajectoryConfig(
            speed_min=args.speed_min,
            speed_max=args.speed_max,
            accel_max=args.accel_max,
            jitter_std=args.jitter,
            rot_speed_std=args.rot_speed)
        cfg = SynthConfig(
            size=args.size,
            frames_min=args.frames_min,
            frames_max=args.frames_max,
            subframes=args.subframes,
            crf=args.crf,
            gamma=args.gamma,
            trajectory=traj)
        paths = make_dataset(
            args.out,
            args.num_train,
            args.num_val,
            args.size,
            args.seed,
            lmdb=args.lmdb,
            workers=args.workers,
            frames_min=args.frames_min,
            frames_max=args.frames_max,
            progress=not args.quiet,
            cfg=cfg)
    except (FileExistsError, ValueError) as err:
        print(f'{prog}: error: {err}', file=sys.stderr)
        return 2
    kind = 'lmdb' if args.lmdb else 'PNG folders'
    print(f'Wrote {args.num_train} train + {args.num_val} val GoPro-style pairs ({args.size}x{args.size}, {kind}) to '
          f'{paths["root"]}')
    for split in SPLITS:
        print(f'  {split}: dataroot_gt: {paths[split]["gt"]}  dataroot_lq: {paths[split]["lq"]}')
    print(f'  parameters, photo split and per-pair blur statistics: {paths["meta"]}')
    return 0


def main(argv=None, prog='basicsr-mh make-data'):
    """Command line ``argv`` (default ``sys.argv[1:]``); returns the exit code."""
    return run(make_data_parser(prog).parse_args(argv), prog)


if __name__ == '__main__':
    sys.exit(main())
