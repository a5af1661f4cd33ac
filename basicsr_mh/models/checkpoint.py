"""Reading and writing checkpoints safely: clear errors for bad files, atomic writes that never leave half files."""
import numpy as np
import os
import pickle
import random
import re
import tempfile
import torch
from contextlib import contextmanager

from ..heads import strip_module_prefix

#: How a user accepts a checkpoint that needs more than ``weights_only=True`` (named by every refusal).
TRUST_HINT = ('Fix: only if you trust whoever made the file, pass --trust-checkpoint (infer, export, analyze) or set '
              'path.trust_checkpoint: true in the option file (train, test).')


class UntrustedCheckpointError(ValueError):
    """A checkpoint or training state holds pickled objects that ``weights_only=True`` refuses (loading them could
    run code). A ``ValueError`` too, so the command line prints it as one line."""


def checkpoint_trust(opt):
    """``path.trust_checkpoint`` of an option dict (default False); a clear error when it is not a boolean."""
    value = (opt.get('path') or {}).get('trust_checkpoint', False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise ValueError(f'path.trust_checkpoint is {value!r}; it must be true or false. Fix: write '
                         '`trust_checkpoint: true` only for checkpoints from a source you trust.')
    return value


def unsafe_globals(path, error):
    """The globals (``module.name``) of checkpoint ``path`` that ``weights_only`` loading refuses.

    Read by disassembling the pickle without running it (:func:`torch.serialization.get_unsafe_globals_in_checkpoint`);
    for files it cannot read (the legacy non-zip format), taken from torch's ``error`` message.
    """
    found = []
    lister = getattr(torch.serialization, 'get_unsafe_globals_in_checkpoint', None)
    if lister is not None:
        try:
            found = list(lister(path))
        except Exception:  # noqa: BLE001  (legacy format, damaged archive: fall back to the message)
            found = []
    if not found:
        found = re.findall(r'GLOBAL ([\w.]+) was not an allowed global', str(error))
    return list(dict.fromkeys(found))


def network_state(checkpoint, key=None, prefer_ema=False, where='the checkpoint'):
    """The network weights of a BasicSR checkpoint (``module.`` prefixes removed): the one policy for choosing its
    entry, for training (``path.pretrain_network_g``), pre-flight and the tools.

    Args:
        checkpoint (dict): ``{params: ..., params_ema: ..., ...}``, or a bare state dict (tensors only).
        key (str | None): the entry asked for (``path.param_key_g``, ``--param-key``). When the checkpoint lacks it,
            ``params`` is used, as BasicSR does. None: ``params_ema`` when ``prefer_ema`` and present, else
            ``params``.
        prefer_ema (bool): the deployment default (``infer``, ``analyze``): the EMA weights where there are some.
        where (str): the file, for the message.

    Returns:
        tuple(OrderedDict, str | None): the state dict and the entry used (None for a bare state dict).

    Raises:
        ValueError: naming the entries the checkpoint has and the fix, when none fits.
    """
    if not isinstance(checkpoint, dict):
        raise ValueError(f'{where} is a {type(checkpoint).__name__}, not a checkpoint. Fix: point to a net_g_*.pth.')
    if key is None:
        key = 'params_ema' if prefer_ema and isinstance(checkpoint.get('params_ema'), dict) else 'params'
    if not isinstance(checkpoint.get(key), dict) and isinstance(checkpoint.get('params'), dict):
        key = 'params'
    if isinstance(checkpoint.get(key), dict):
        return strip_module_prefix(checkpoint[key]), key
    if checkpoint and all(torch.is_tensor(v) for v in checkpoint.values()):
        return strip_module_prefix(checkpoint), None
    raise ValueError(f'{where} has no "{key}" entry (it has {sorted(checkpoint)[:8]}). Fix: set path.param_key_g '
                     '(or --param-key) to one of them, or point to a network checkpoint.')


def read_checkpoint(path, trust=False):
    """Load a network checkpoint or a training state on the CPU, with ``weights_only=True`` unless ``trust``.

    Nothing in an untrusted file can run code: a file that needs more than tensors, numbers, strings and plain
    containers is refused before any of it is unpickled, naming the offending globals and the opt-in.

    Args:
        path (str): a ``.pth`` / ``.state`` file.
        trust (bool): load arbitrary pickled objects (``weights_only=False``): ``--trust-checkpoint`` /
            ``path.trust_checkpoint: true``, for files from a source the user trusts.

    Returns:
        dict: the loaded object.

    Raises:
        FileNotFoundError / ValueError: naming the file and what is wrong with it.
        UntrustedCheckpointError: the file needs ``weights_only=False`` and ``trust`` is False.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f'Checkpoint "{path}" does not exist. Fix: check path.pretrain_network_g / --ckpt.')
    try:
        return torch.load(path, map_location='cpu', weights_only=not trust)
    except pickle.UnpicklingError as err:
        offending = unsafe_globals(path, err) if not trust else []
        if offending:
            raise UntrustedCheckpointError(
                f'Checkpoint "{path}" was not loaded: it holds pickled objects other than tensors and plain '
                f'containers ({", ".join(offending[:6])}{" ..." if len(offending) > 6 else ""}), and loading them '
                f'can run code. {TRUST_HINT}') from None
        raise _unreadable(path, err) from err
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        raise _unreadable(path, err) from err


def _unreadable(path, err):
    first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return ValueError(f'Checkpoint "{path}" cannot be read ({first_line}). It may be truncated or not a PyTorch '
                      'checkpoint. Fix: point to a complete .pth file.')


@contextmanager
def atomic_file(path, mode='wb'):
    """Write ``path`` atomically: yield a temporary file in the same folder; when the block ends without error the file
    is flushed, fsynced, given the permissions a plain ``open`` would (``0o666 & ~umask``) and renamed over ``path``.

    A crash mid-write leaves the previous ``path`` intact and at most a ``.tmp`` file, never a half file; a symbolic
    link at ``path`` is replaced, not followed.
    """
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp_path = tempfile.mkstemp(prefix=os.path.basename(path) + '.', suffix='.tmp', dir=folder)
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp_path, 0o666 & ~_umask())
        os.replace(tmp_path, path)
    except BaseException:
        if os.path.exists(tmp_path):
            os.remove(tmp_path)
        raise


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_torch_save(obj, path):
    """``torch.save`` through :func:`atomic_file`: never a half checkpoint, readable as a plain file would be."""
    with atomic_file(path) as f:
        torch.save(obj, f)


class NonFiniteError(FloatingPointError, ValueError):
    """A loss, gradient or parameter is NaN/inf (a ``ValueError`` too, so the CLI prints it as one line)."""


def nonfinite_tensors(named_tensors):
    """Names of the floating-point tensors in ``named_tensors`` (iterable of (name, Tensor)) with NaN/inf values."""
    bad = []
    for name, tensor in named_tensors:
        if torch.is_tensor(tensor) and tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            bad.append(name)
    return bad


def check_finite_state(state_dict, what):
    """Raise :class:`NonFiniteError` naming ``what`` and the first bad keys when ``state_dict`` has NaN/inf values.

    Called before a checkpoint is written, so a diverged run never leaves a NaN checkpoint behind.
    """
    bad = nonfinite_tensors(state_dict.items())
    if bad:
        shown = ', '.join(bad[:5]) + (f' and {len(bad) - 5} more' if len(bad) > 5 else '')
        raise NonFiniteError(f'Refusing to save {what}: parameters {shown} are not finite (NaN/inf). The previous '
                             'checkpoints are kept. Fix: lower train.optim_g.lr, set train.use_grad_clip: true, check '
                             'the data, or set train.skip_nonfinite: true; resume with --auto_resume.')


def get_rng_state():
    """The python, numpy, torch (and CUDA) random generator states of this process, as a dict that
    ``torch.load(weights_only=True)`` reads (the numpy key is a tensor, not a pickled array)."""
    numpy_state = np.random.get_state(legacy=False)
    return {
        'python': random.getstate(),
        'numpy': {
            'bit_generator': str(numpy_state['bit_generator']),
            'key': torch.from_numpy(numpy_state['state']['key'].astype(np.int64)),
            'pos': int(numpy_state['state']['pos']),
            'has_gauss': int(numpy_state['has_gauss']),
            'gauss': float(numpy_state['gauss']),
        },
        'torch': torch.get_rng_state(),
        'cuda': torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def set_rng_state(state):
    """Restore the states of :func:`get_rng_state` (CUDA ones only when a GPU is present).

    The numpy entry may also be numpy's legacy tuple (training states written by basicsr-mh 0.1).
    """
    random.setstate(state['python'])
    numpy_state = state['numpy']
    if isinstance(numpy_state, dict):
        numpy_state = {
            'bit_generator': numpy_state['bit_generator'],
            'state': {
                'key': numpy_state['key'].numpy().astype(np.uint32),
                'pos': numpy_state['pos']
            },
            'has_gauss': numpy_state['has_gauss'],
            'gauss': numpy_state['gauss'],
        }
    np.random.set_state(numpy_state)
    torch.set_rng_state(state['torch'])
    if state.get('cuda') is not None and torch.cuda.is_available() and len(state['cuda']) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state['cuda'])


@contextmanager
def preserved_rng():
    """Run a block (validation, a pre-flight check) without changing the random generators' states."""
    state = get_rng_state()
    try:
        yield
    finally:
        set_rng_state(state)


def atomic_write_json(obj, path):
    """Write ``obj`` as indented JSON to ``path`` through :func:`atomic_file`."""
    import json
    with atomic_file(path, 'w') as f:
        json.dump(obj, f, indent=2)
