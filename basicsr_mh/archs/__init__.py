"""Network architectures of basicsr-mh.

Importing this package imports each architecture module explicitly, so that the classes decorated with
``@ARCH_REGISTRY.register()`` are registered in BasicSR's ``ARCH_REGISTRY`` and can be built from an option file with
``network_g: {type: <ClassName>, ...}``.

Modules:
    arch_util: shared building blocks (:class:`LayerNorm2d`, :class:`SimpleGate`).
    nafnet_arch: :class:`NAFNet` and its :class:`NAFBlock`.
    restormer_arch: :class:`Restormer` (MDTA + GDFN transformer blocks; both LayerNorm types, dual-pixel variant).
    multihead_arch: :class:`MultiHeadArch`, K output heads on any registered backbone.
    local_arch: TLC local average pooling (:class:`LocalAvgPool2d`, :class:`LocalBase`) and :class:`NAFNetLocal`.
    hinet_arch: :class:`HINet` (two stages) and :class:`HINetLocal`.
    mprnet_arch: :class:`MPRNet` (three stages).
"""
from . import hinet_arch  # noqa: F401
from . import local_arch  # noqa: F401
from . import mprnet_arch  # noqa: F401
from . import multihead_arch  # noqa: F401
from . import nafnet_arch  # noqa: F401
from . import restormer_arch  # noqa: F401
