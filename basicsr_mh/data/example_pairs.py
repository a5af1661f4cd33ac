"""Blurred/sharp pair folders from the real photos bundled with scikit-image (nothing is downloaded).

Used by the quick start and the tests. Each pair is a crop of a photo (downscaled by a random factor, as camera
images are larger than the crops a network trains on) blurred with a straight motion kernel of its own random length
and angle, so a network sees many blurs, not one per photo. Training and validation crops come from disjoint photos.
``python -m basicsr_mh.data.example_pairs --out datasets/example`` writes ``{train,val}/{gt,lq}/*.png`` in BasicSR's
PairedImageDataset layout and refuses to overwrite an existing folder.
"""
import argparse
import cv2
import numpy as np
import os

#: Photos of ``skimage.data`` the training crops come from (grey ones are stacked to three channels).
TRAIN_PHOTOS = ('rocket', 'chelsea', 'camera', 'coins', 'moon', 'brick', 'gravel', 'grass', 'clock', 'page', 'text',
                'hubble_deep_field', 'immunohistochemistry', 'retina', 'colorwheel', 'cell')
#: Photos the validation crops come from, disjoint from :data:`TRAIN_PHOTOS`.
VAL_PHOTOS = ('astronaut', 'coffee')
#: Straight motion-blur lengths in pixels, [low, high] inclusive.
BLUR_LENGTHS = (5, 13)
#: A crop is re-drawn (up to MAX_TRIES times) while its mean absolute blur difference is below this (8-bit levels).
MIN_BLUR_DIFFERENCE = 2.0
MAX_TRIES = 20


def photo_bgr(name, size=None):
    """A photo of ``skimage.data`` as uint8 BGR (H, W, 3), optionally resized to ``size`` = (w, h)."""
    from skimage import data as skdata
    img = getattr(skdata, name)()
    if img.dtype == bool:
        img = img.astype(np.uint8) * 255
    if img.ndim == 2:
        img = np.stack([img] * 3, axis=-1)
    img = cv2.cvtColor(np.ascontiguousarray(img[..., :3]), cv2.COLOR_RGB2BGR)
    if size is not None:
        img = cv2.resize(img, size, interpolation=cv2.INTER_AREA)
    return img


def motion_blur(img, length, angle):
    """Blur a (H, W, C) image with a normalized line kernel of ``length`` pixels at ``angle`` degrees."""
    kernel = np.zeros((length, length), np.float32)
    kernel[length // 2, :] = 1.0
    rot = cv2.getRotationMatrix2D((length / 2 - 0.5, length / 2 - 0.5), angle, 1.0)
    kernel = cv2.warpAffine(kernel, rot, (length, length))
    kernel /= kernel.sum()
    return cv2.filter2D(img, -1, kernel, borderType=cv2.BORDER_REFLECT)


def make_pair_folder(root, names, size, seed, lengths=(3, 7)):
    """Write ``root/gt/NNN_<photo>.png`` (each photo resized to ``size`` = (w, h)) and its blurred ``root/lq/...``;
    one kernel per photo with a length in ``lengths`` (inclusive). Returns (gt_dir, lq_dir)."""
    rng = np.random.default_rng(seed)
    gt_dir, lq_dir = _pair_dirs(root)
    for i, name in enumerate(names):
        img = photo_bgr(name, size)
        blurred = motion_blur(img, int(rng.integers(lengths[0], lengths[1] + 1)), float(rng.uniform(0, 180)))
        cv2.imwrite(os.path.join(gt_dir, f'{i:03d}_{name}.png'), img)
        cv2.imwrite(os.path.join(lq_dir, f'{i:03d}_{name}.png'), blurred)
    return gt_dir, lq_dir


def make_crop_folder(root, names, count, crop, seed, lengths=BLUR_LENGTHS, short_side=(192, 320)):
    """Write ``count`` pairs ``root/{gt,lq}/NNN_<photo>.png`` of ``crop`` x ``crop`` pixels, cycling through
    ``names``: the photo is resized so its short side is a random value in ``short_side``, blurred whole with its own
    kernel (length in ``lengths``, any angle), and the same window is cut from both. Returns (gt_dir, lq_dir)."""
    rng = np.random.default_rng(seed)
    gt_dir, lq_dir = _pair_dirs(root)
    photos = {name: photo_bgr(name) for name in names}
    for i in range(count):
        name = names[i % len(names)]
        img = photos[name]
        scale = float(rng.integers(short_side[0], short_side[1] + 1)) / min(img.shape[:2])
        width, height = max(crop, round(img.shape[1] * scale)), max(crop, round(img.shape[0] * scale))
        img = cv2.resize(img, (width, height), interpolation=cv2.INTER_AREA)
        blurred = motion_blur(img, int(rng.integers(lengths[0], lengths[1] + 1)), float(rng.uniform(0, 180)))
        for _ in range(MAX_TRIES):  # skip flat windows (sky, black space): their blur is invisible
            top, left = int(rng.integers(0, height - crop + 1)), int(rng.integers(0, width - crop + 1))
            window = (slice(top, top + crop), slice(left, left + crop))
            if np.abs(img[window].astype(np.float32) - blurred[window]).mean() >= MIN_BLUR_DIFFERENCE:
                break
        cv2.imwrite(os.path.join(gt_dir, f'{i:03d}_{name}.png'), img[window])
        cv2.imwrite(os.path.join(lq_dir, f'{i:03d}_{name}.png'), blurred[window])
    return gt_dir, lq_dir


def _pair_dirs(root):
    gt_dir, lq_dir = os.path.join(root, 'gt'), os.path.join(root, 'lq')
    os.makedirs(gt_dir, exist_ok=True)
    os.makedirs(lq_dir, exist_ok=True)
    return gt_dir, lq_dir


def make_example_dataset(out, num_train=96, num_val=4, train_crop=96, val_crop=128, seed=0, lengths=BLUR_LENGTHS):
    """Write the example train/val pair folders under ``out`` (:func:`make_crop_folder` over :data:`TRAIN_PHOTOS`
    and :data:`VAL_PHOTOS`); refuses an existing non-empty ``out``. Returns {'train': (gt, lq), 'val': (gt, lq)}."""
    if os.path.isdir(out) and os.listdir(out):
        raise FileExistsError(f'{out} exists and is not empty; nothing was written. Fix: choose another --out or '
                              'remove it yourself.')
    train = make_crop_folder(os.path.join(out, 'train'), TRAIN_PHOTOS, num_train, train_crop, seed, lengths)
    val = make_crop_folder(os.path.join(out, 'val'), VAL_PHOTOS, num_val, val_crop, seed + 1, lengths)
    return {'train': train, 'val': val}


def main(argv=None):
    """Command line: ``python -m basicsr_mh.data.example_pairs --out datasets/example``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--out', default='datasets/example', help='output folder (must not exist or be empty)')
    parser.add_argument('--num-train', type=int, default=96, help='training pairs (default 96)')
    parser.add_argument('--num-val', type=int, default=4, help='validation pairs (default 4)')
    parser.add_argument('--train-crop', type=int, default=96, help='training crop size in pixels (default 96)')
    parser.add_argument('--val-crop', type=int, default=128, help='validation crop size in pixels (default 128)')
    parser.add_argument(
        '--blur',
        type=int,
        nargs=2,
        default=BLUR_LENGTHS,
        metavar=('MIN', 'MAX'),
        help=f'motion-blur length range in pixels (default {BLUR_LENGTHS[0]} {BLUR_LENGTHS[1]})')
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args(argv)
    dirs = make_example_dataset(args.out, args.num_train, args.num_val, args.train_crop, args.val_crop, args.seed,
                                tuple(args.blur))
    print(f'Wrote example pairs: train {dirs["train"][0]} / {dirs["train"][1]}, val {dirs["val"][0]} / '
          f'{dirs["val"][1]}')


if __name__ == '__main__':
    main()
