"""Compatibility fixes that must run before :mod:`basicsr` is imported.

PyPI's basicsr 1.4.2 imports ``torchvision.transforms.functional_tensor``, a module that torchvision removed in
0.17. BasicSR's git master imports ``torchvision.transforms.functional`` instead. We register an alias module under
the old name that forwards to the current one, so both BasicSR versions import beside any torchvision.

The NAFNet, HINet and Restormer repositories ship their own old copy of ``basicsr`` (no registries: archs and models
are found by file name). When that copy is the one installed, :func:`check_basicsr` stops the import with an
explanation instead of an ImportError deep inside BasicSR.
"""
import importlib
import importlib.util
import sys
import types

_OLD_NAME = 'torchvision.transforms.functional_tensor'


def install_torchvision_alias():
    """Make ``import torchvision.transforms.functional_tensor`` work on torchvision >= 0.17.

    Returns:
        bool: True when an alias was installed, False when the real module exists or an alias is already there.
    """
    if _OLD_NAME in sys.modules:
        return False
    if importlib.util.find_spec(_OLD_NAME) is not None:  # an older torchvision still ships the module
        return False
    import torchvision.transforms as transforms
    import torchvision.transforms.functional as functional

    alias = types.ModuleType(_OLD_NAME)
    alias.__doc__ = ('Alias installed by basicsr_mh.compat for BasicSR 1.4.2: forwards to '
                     'torchvision.transforms.functional.')
    for name in dir(functional):
        if not name.startswith('__'):
            setattr(alias, name, getattr(functional, name))
    sys.modules[_OLD_NAME] = alias
    transforms.functional_tensor = alias
    return True


class VendoredBasicSRError(ImportError):
    """The installed ``basicsr`` is the old copy vendored by the NAFNet/HINet/Restormer repositories."""


def check_basicsr():
    """Raise :class:`VendoredBasicSRError` when the ``basicsr`` Python would import has no ``utils/registry.py``
    (the copy inside the NAFNet, HINet or Restormer repositories); it is checked on disk, nothing is imported."""
    import os
    spec = importlib.util.find_spec('basicsr')
    if spec is None or not spec.submodule_search_locations:
        return  # not installed: the import of basicsr reports it
    folder = list(spec.submodule_search_locations)[0]
    if not os.path.isfile(os.path.join(folder, 'utils', 'registry.py')):
        raise VendoredBasicSRError(
            f'basicsr-mh needs upstream BasicSR (>= 1.4.2, with registries), but the basicsr found at {folder} is '
            'the older copy that the NAFNet, HINet and Restormer repositories ship (`python setup.py develop` in one '
            'of them installs it). Fix: use a separate environment: `python -m venv .venv-mh && . .venv-mh/bin/'
            'activate && pip install basicsr-mh` (it installs BasicSR from PyPI); basicsr-mh\'s NAFNet, HINet and '
            'Restormer load those repositories\' checkpoints (strict), so you lose nothing. Run it outside that '
            'repository\'s folder, where its basicsr/ would shadow the installed one.')


check_basicsr()
install_torchvision_alias()
