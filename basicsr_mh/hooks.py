"""``import basicsr_mh`` makes BasicSR's own entry points understand the multi-head keys.

A repository built on BasicSR trains through ``basicsr.train.train_pipeline`` (or a Real-ESRGAN-style ``train.py``
that imports its package and calls it). After ``import basicsr_mh``:

- ``basicsr.archs.build_network`` accepts ``network_g`` in the short form (``num_heads``/``combine`` beside ``type``
  or in a ``multihead:`` block) and builds the :class:`~basicsr_mh.archs.multihead_arch.MultiHeadArch`;
- ``basicsr.models.build_model`` upgrades the options first (:func:`basicsr_mh.options.upgrade_options`: the model
  type, the loss wrapper, the same checks and error lines as ``basicsr-mh train``).

The two functions are replaced in ``basicsr.archs`` / ``basicsr.models`` and in every imported ``basicsr.*`` module
that bound them by name (``from basicsr.archs import build_network``), so modules imported later get them too.
Installing twice is a no-op. Our own CLI (``basicsr-mh train``) adds what BasicSR's pipeline does not have: the
pre-flight check before any folder is written, ``--import``, ``metrics.json``, exact mid-epoch resume and gloo
distributed training on CPUs.
"""
import functools
import sys

#: Attribute marking our wrappers (holds the function they wrap).
WRAPPED = '__basicsr_mh_wraps__'


def _wrap_build_network(original):

    @functools.wraps(original)
    def build_network(opt):
        """BasicSR's ``build_network`` for ``opt`` in the short, long or plain form; returns the nn.Module."""
        from .options import upgrade_network_options
        long_form, _ = upgrade_network_options(opt)
        return original(dict(long_form))

    setattr(build_network, WRAPPED, original)
    return build_network


def _wrap_build_model(original):

    @functools.wraps(original)
    def build_model(opt):
        """BasicSR's ``build_model`` after :func:`basicsr_mh.options.upgrade_options` (in place); returns the model."""
        from .options import upgrade_options
        upgrade_options(opt)
        return original(opt)

    setattr(build_model, WRAPPED, original)
    return build_model


def _replace_everywhere(name, home, wrap):
    current = getattr(home, name)
    if hasattr(current, WRAPPED):
        return current
    wrapped = wrap(current)
    for module_name, module in list(sys.modules.items()):
        if module is not None and (module_name == 'basicsr' or module_name.startswith('basicsr.')) and \
                getattr(module, name, None) is current:
            setattr(module, name, wrapped)
    return wrapped


def install():
    """Replace BasicSR's ``build_network`` and ``build_model`` by the multi-head-aware ones (idempotent)."""
    import basicsr.archs
    import basicsr.models
    _replace_everywhere('build_network', basicsr.archs, _wrap_build_network)
    _replace_everywhere('build_model', basicsr.models, _wrap_build_model)


def original(function):
    """The BasicSR function a wrapper of this module replaced (``function`` itself when it is not one of ours)."""
    return getattr(function, WRAPPED, function)
