"""Small blurred/sharp pair folders from the real photos bundled with scikit-image (nothing is downloaded).

Used by the quick-start example and the tests: each sharp photo is blurred with a straight motion kernel of random
length and angle. ``python -m basicsr_mh.data.example_pairs --out datasets/example`` writes
``{train,val}/{gt,lq}/*.png`` in BasicSR's PairedImageDataset layout, and refuses to overwrite an existing folder.
"""
import argparse
import cv2
import numpy as np
import os

TRAIN_PHOTOS = ('astronaut', 'coffee', 'rocket', 'chelsea')
VAL_PHOTOS = ('retina', 'immunohistochemistry')


def photo_bgr(name, size=None):
    """A photo of ``skimage.data`` as uint8 BGR (H, W, 3), optionally resized to ``size`` = (w, h)."""
    from skimage import data as skdata
    img = getattr(skdata, name)()
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


def make_pair_folder(root, names, size, seed):
    """Write ``root/gt/NNN_<photo>.png`` and the blurred ``root/lq/...``; returns (gt_dir, lq_dir)."""
    rng = np.random.default_rng(seed)
    gt_dir, lq_dir = os.path.join(root, 'gt'), os.path.join(root, 'lq')
    os.makedirs(gt_dir, exist_ok=True)
    os.makedirs(lq_dir, exist_ok=True)
    for i, name in enumerate(names):
        img = photo_bgr(name, size)
        blurred = motion_blur(img, int(rng.integers(3, 8)), float(rng.uniform(0, 180)))
        cv2.imwrite(os.path.join(gt_dir, f'{i:03d}_{name}.png'), img)
        cv2.imwrite(os.path.join(lq_dir, f'{i:03d}_{name}.png'), blurred)
    return gt_dir, lq_dir


def make_example_dataset(out, train_size=(128, 128), val_size=(125, 93), seed=0):
    """Write the example train/val pair folders under ``out``; refuses an existing non-empty ``out``."""
    if os.path.isdir(out) and os.listdir(out):
        raise FileExistsError(f'{out} exists and is not empty; nothing was written. Fix: choose another --out or '
                              'remove it yourself.')
    train = make_pair_folder(os.path.join(out, 'train'), TRAIN_PHOTOS, train_size, seed)
    val = make_pair_folder(os.path.join(out, 'val'), VAL_PHOTOS, val_size, seed + 1)
    return {'train': train, 'val': val}


def main(argv=None):
    """Command line: ``python -m basicsr_mh.data.example_pairs --out datasets/example``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--out', default='datasets/example', help='output folder (must not exist or be empty)')
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args(argv)
    dirs = make_example_dataset(args.out, seed=args.seed)
    print(f'Wrote example pairs: train {dirs["train"][0]} / {dirs["train"][1]}, val {dirs["val"][0]} / '
          f'{dirs["val"][1]}')


if __name__ == '__main__':
    main()
