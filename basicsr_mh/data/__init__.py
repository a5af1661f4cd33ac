"""Data helpers. ``example_pairs``: blurred/sharp pair folders from scikit-image's bundled photos.

Submodules are imported where used (not here), so ``python -m basicsr_mh.data.example_pairs`` runs cleanly.
"""
