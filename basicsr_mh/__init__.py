"""basicsr-mh: multi-output (multi-head) deblurring for BasicSR.

Importing this package first fixes BasicSR 1.4.2's import on current torchvision (:mod:`basicsr_mh.compat`), then
imports the architectures, losses, models and datasets so that they register into BasicSR's registries.
:func:`build_network` builds a network from ``network_g`` options in the short form (``num_heads``/``combine``);
after the import BasicSR's own ``build_network``, ``build_model`` and hence ``basicsr.train.train_pipeline`` accept
it too (:mod:`basicsr_mh.hooks`).
"""
# isort: skip_file  (compat must be imported before anything that imports basicsr)
from . import compat  # noqa: F401  (must come before anything that imports basicsr)
from .version import __version__  # noqa: F401
from . import archs  # noqa: F401,E402
from . import losses  # noqa: F401,E402
from . import models  # noqa: F401,E402
from . import data  # noqa: F401,E402
from .data import paired_image_dataset  # noqa: F401,E402  (registers Dataset_PairedImage)
from .options import build_network  # noqa: F401,E402
from . import hooks  # noqa: E402

hooks.install()  # BasicSR's build_network / build_model accept the multi-head keys
