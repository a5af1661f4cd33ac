"""Data helpers: example blurred/sharp pairs from scikit-image's bundled photos."""
from .example_pairs import make_example_dataset, make_pair_folder, motion_blur, photo_bgr  # noqa: F401
