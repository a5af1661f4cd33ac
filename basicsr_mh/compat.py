"""Compatibility fixes that must run before :mod:`basicsr` is imported.

PyPI's basicsr 1.4.2 imports ``torchvision.transforms.functional_tensor``, a module that torchvision removed in
0.17. BasicSR's git master imports ``torchvision.transforms.functional`` instead. We register an alias module under
the old name that forwards to the current one, so both BasicSR versions import beside any torchvision.
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


install_torchvision_alias()
