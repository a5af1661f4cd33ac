"""Network architectures of basicsr-mh.

Importing this package imports each architecture module explicitly, so that the classes decorated with
``@ARCH_REGISTRY.register()`` are registered in BasicSR's ``ARCH_REGISTRY`` and can be built from an option file with
``network_g: {type: <ClassName>, ...}``.

Modules:
    arch_util: shared building blocks (:class:`LayerNorm2d`, :class:`SimpleGate`).
    nafnet_arch: :class:`NAFNet` and its :class:`NAFBlock`.
    multihead_arch: :class:`MultiHeadArch`, K output heads on any registered backbone.
"""
from . import nafnet_arch  # noqa: F401
from . import multihead_arch  # noqa: F401
