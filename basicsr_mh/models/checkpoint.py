"""Reading and writing checkpoints safely: clear errors for bad files, atomic writes that never leave half files."""
import numpy as np
import os
import random
import tempfile
import torch
from basicsr.utils import get_root_logger
from contextlib import contextmanager


def read_checkpoint(path, trusted=False):
    """Load a checkpoint on the CPU.

    Args:
        path (str): a ``.pth`` / ``.state`` file.
        trusted (bool): allow arbitrary pickled objects (our own training states); network checkpoints are read
            with ``weights_only=True`` first.

    Returns:
        dict: the loaded object.

    Raises:
        FileNotFoundError / ValueError: naming the file and what is wrong with it.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f'Checkpoint "{path}" does not exist. Fix: check path.pretrain_network_g / --ckpt.')
    try:
        if trusted:
            return torch.load(path, map_location='cpu', weights_only=False)
        try:
            return torch.load(path, map_location='cpu', weights_only=True)
        except Exception as safe_err:  # older checkpoints may hold other pickled objects
            if 'weights_only' not in str(safe_err) and 'Unsupported global' not in str(safe_err):
                raise
            get_root_logger().warning(f'{path}: not loadable with weights_only=True; loading it fully (only load '
                                      'checkpoints you trust).')
            return torch.load(path, map_location='cpu', weights_only=False)
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        raise ValueError(f'Checkpoint "{path}" cannot be read ({err}). It may be truncated or not a PyTorch '
                         'checkpoint. Fix: point to a complete .pth file.') from err


def atomic_torch_save(obj, path):
    """``torch.save`` to a temporary file in the same folder, fsync, then rename over ``path``.

    A crash mid-write leaves the previous ``path`` intact and at most a ``.tmp`` file, never a half checkpoint.
    """
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp_path = tempfile.mkstemp(prefix=os.path.basename(path) + '.', suffix='.tmp', dir=folder)
    try:
        with os.fdopen(fd, 'wb') as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
    except BaseException:
        if os.path.exists(tmp_path):
            os.remove(tmp_path)
        raise


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
    """The python, numpy, torch (and CUDA) random generator states of this process, as a dict."""
    return {
        'python': random.getstate(),
        'numpy': np.random.get_state(),
        'torch': torch.get_rng_state(),
        'cuda': torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def set_rng_state(state):
    """Restore the states of :func:`get_rng_state` (CUDA ones only when a GPU is present)."""
    random.setstate(state['python'])
    np.random.set_state(state['numpy'])
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
    """Write ``obj`` as indented JSON to ``path`` through a temporary file and a rename."""
    import json
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp_path = tempfile.mkstemp(prefix=os.path.basename(path) + '.', suffix='.tmp', dir=folder)
    try:
        with os.fdopen(fd, 'w') as f:
            json.dump(obj, f, indent=2)
        os.replace(tmp_path, path)
    except BaseException:
        if os.path.exists(tmp_path):
            os.remove(tmp_path)
        raise
