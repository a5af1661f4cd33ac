"""Reading and writing checkpoints safely: clear errors for bad files, atomic writes that never leave half files."""
import os
import tempfile
import torch

from basicsr.utils import get_root_logger


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
