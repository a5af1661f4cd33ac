"""Command-line option parsing for ``train`` and ``test``: BasicSR's flags, CPU-capable distributed init.

Takes the same flags as BasicSR's ``basicsr/train.py`` (``-opt``, ``--launcher``, ``--auto_resume``, ``--debug``,
``--local_rank``, ``--force_yml``) and produces the same option dict as :func:`basicsr.utils.options.parse_options`,
but initialises ``torch.distributed`` with gloo when there is no GPU, and upgrades the short multi-head form
(:func:`basicsr_mh.options.upgrade_options`) before anything is written to disk.
"""
import os
import random
import torch
import yaml
from basicsr.utils import make_exp_dirs as basicsr_make_exp_dirs
from basicsr.utils import set_random_seed
from basicsr.utils.dist_util import get_dist_info
from basicsr.utils.options import _postprocess_yml_value
from collections import OrderedDict
from os import path as osp

from basicsr_mh_cli.parsers import train_test_parser
from .options import upgrade_options


def init_distributed(launcher, opt):
    """Initialise torch.distributed: nccl on CUDA, gloo on the CPU (``num_gpu: 0`` or no GPU)."""
    import torch.distributed as dist
    use_cuda = torch.cuda.is_available() and opt.get('num_gpu', 'auto') != 0
    backend = 'nccl' if use_cuda else 'gloo'
    if launcher == 'slurm':
        import subprocess
        proc_id = int(os.environ['SLURM_PROCID'])
        ntasks = int(os.environ['SLURM_NTASKS'])
        node_list = os.environ['SLURM_NODELIST']
        addr = subprocess.getoutput(f'scontrol show hostname {node_list} | head -n1')
        os.environ.setdefault('MASTER_PORT', str((opt.get('dist_params') or {}).get('port', 29500)))
        os.environ.setdefault('MASTER_ADDR', addr)
        os.environ['WORLD_SIZE'] = str(ntasks)
        os.environ['RANK'] = str(proc_id)
        os.environ['LOCAL_RANK'] = str(proc_id % max(torch.cuda.device_count(), 1))
    if use_cuda:
        torch.cuda.set_device(int(os.environ.get('LOCAL_RANK', os.environ.get('RANK', 0))) % torch.cuda.device_count())
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)


def _apply_force_yml(opt, entries):
    for entry in entries:
        if '=' not in entry:
            raise ValueError(f'--force_yml entry "{entry}" must look like key:subkey=value.')
        keys, value = entry.split('=', 1)
        node = opt
        parts = keys.strip().split(':')
        for key in parts[:-1]:
            if not isinstance(node, dict) or key not in node:
                raise ValueError(f'--force_yml "{entry}": no option "{key}" on that path.')
            node = node[key]
        node[parts[-1]] = _postprocess_yml_value(value.strip())


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader building mappings as OrderedDict (as BasicSR's loader does) and refusing duplicate keys,
    which plain YAML loaders resolve silently by keeping the last one."""


def _construct_unique_mapping(loader, node):
    seen = {}
    for key_node, _ in node.value:
        if key_node.tag == 'tag:yaml.org,2002:merge':  # `<<: *base`: its keys may be overridden on purpose
            continue
        key = loader.construct_object(key_node, deep=True)
        line = key_node.start_mark.line + 1
        if key in seen:
            raise DuplicateKeyError(key, seen[key], line)
        seen[key] = line
    loader.flatten_mapping(node)
    return OrderedDict(loader.construct_pairs(node))


class DuplicateKeyError(ValueError):
    """A mapping of an option file has the same key twice."""

    def __init__(self, key, first_line, second_line):
        super().__init__(key, first_line, second_line)
        self.key, self.first_line, self.second_line = key, first_line, second_line


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_unique_mapping)


def load_option_file(path):
    """Read a BasicSR option file (YAML, safe tags only) into nested OrderedDicts.

    Raises:
        ValueError: a key appears twice in one mapping (naming the key and both lines), or the YAML is malformed.
    """
    with open(path, encoding='utf-8') as f:
        try:
            return yaml.load(f, Loader=_UniqueKeyLoader)
        except DuplicateKeyError as err:
            raise ValueError(f'{path}: key "{err.key}" appears twice in the same mapping, on lines {err.first_line} '
                             f'and {err.second_line} (YAML would silently keep the second). Fix: remove one of them.') \
                from None
        except yaml.YAMLError as err:
            raise ValueError(f'{path} is not valid YAML: {err}') from None


def import_user_modules(modules, where):
    """Import each module name of ``modules`` (the user's package registering archs, models, losses, datasets), with
    the current directory searched first as ``python -m`` does. ``where`` names the source for errors (``--import``
    or ``imports`` of an option file). Raises ValueError naming the module and the fix."""
    import importlib
    import sys
    if isinstance(modules, str) or not isinstance(modules, (list, tuple)) or \
            not all(isinstance(m, str) and m for m in modules):
        raise ValueError(f'{where} must be a list of module names, got {modules!r}. Fix: e.g. `imports: '
                         '[myproject.archs]`.')
    if modules and os.getcwd() not in sys.path and '' not in sys.path:
        sys.path.insert(0, os.getcwd())
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError as err:
            raise ValueError(f'{where} {name}: {type(err).__name__}: {err}. Fix: run from the folder that holds '
                             f'the package, or install it (`pip install -e .`), or correct the name.') from err


def parse_options(root_path, is_train=True, argv=None, prog='basicsr-mh'):
    """Parse the command line ``argv`` (default: ``sys.argv[1:]``) and the YAML file into BasicSR's option dict.

    Returns:
        tuple(dict, argparse.Namespace): as :func:`options_from_args`, and the parsed arguments.
    """
    args = train_test_parser(prog, is_train).parse_args(argv)
    return options_from_args(root_path, is_train, args), args


def options_from_args(root_path, is_train, args):
    """The YAML file of parsed ``train``/``test`` arguments as BasicSR's option dict (see the module docstring).

    Args:
        root_path (str): folder under which ``experiments/``, ``tb_logger/`` and ``results/`` are created.
        is_train (bool): train or test paths.
        args (argparse.Namespace): from :func:`basicsr_mh_cli.parsers.train_test_parser`.

    Returns:
        dict: the options, upgraded to the multi-head form; ``opt['_notes']`` holds the upgrade's log lines.
    """
    if not osp.isfile(args.opt):
        raise FileNotFoundError(f'Option file "{args.opt}" does not exist. Fix: pass -opt path/to/options.yml.')
    import_user_modules(args.imports, '--import')
    opt = load_option_file(args.opt)
    if not isinstance(opt, dict):
        raise ValueError(f'Option file "{args.opt}" is not a YAML mapping.')
    import_user_modules(opt.get('imports') or [], f'{args.opt}: imports')
    for key in ('name', 'datasets'):
        if key not in opt:
            raise ValueError(f'Option file "{args.opt}" has no `{key}`. Fix: add it (see options/ for examples).')
    opt.setdefault('path', {})
    opt.setdefault('num_gpu', 'auto')
    if args.force_yml is not None:
        _apply_force_yml(opt, args.force_yml)
    if opt['num_gpu'] == 'auto':
        opt['num_gpu'] = torch.cuda.device_count()
    if opt['num_gpu'] > 0 and not torch.cuda.is_available():
        raise ValueError(f'num_gpu is {opt["num_gpu"]} but no CUDA device is available. Fix: set `num_gpu: 0` '
                         '(CPU) or `num_gpu: auto`.')
    opt['is_train'] = is_train
    opt['auto_resume'] = args.auto_resume
    if args.debug and not opt['name'].startswith('debug'):
        opt['name'] = 'debug_' + opt['name']

    if args.launcher == 'none':
        opt['dist'] = False
    else:
        opt['dist'] = True
        init_distributed(args.launcher, opt)
    opt['rank'], opt['world_size'] = get_dist_info()

    seed = opt.get('manual_seed')
    if seed is None:
        seed = random.randint(1, 10000)
        opt['manual_seed'] = seed
    set_random_seed(seed + opt['rank'])

    for phase, dataset in opt['datasets'].items():
        dataset['phase'] = phase.split('_')[0]
        if 'scale' in opt:
            dataset['scale'] = opt['scale']
        for key in ('dataroot_gt', 'dataroot_lq'):
            if dataset.get(key) is not None:
                dataset[key] = osp.expanduser(dataset[key])
    for key, val in opt['path'].items():
        if val is not None and ('resume_state' in key or 'pretrain_network' in key):
            opt['path'][key] = osp.expanduser(val)

    if is_train:
        root = osp.join(opt['path'].get('experiments_root_base') or osp.join(root_path, 'experiments'), opt['name'])
        opt['path'].update(
            experiments_root=root,
            models=osp.join(root, 'models'),
            training_states=osp.join(root, 'training_states'),
            log=root,
            visualization=osp.join(root, 'visualization'))
        if 'debug' in opt['name']:
            if 'val' in opt:
                opt['val']['val_freq'] = 8
            opt.setdefault('logger', {})
            opt['logger']['print_freq'] = 1
            opt['logger']['save_checkpoint_freq'] = 8
    else:
        root = osp.join(root_path, 'results', opt['name'])
        opt['path'].update(results_root=root, log=root, visualization=osp.join(root, 'visualization'))
    notes = []
    upgrade_options(opt, notes=notes)
    check_datasets(opt)
    opt['_notes'] = notes
    return opt


def check_datasets(opt):
    """Fail early, naming the key, when a dataset folder or file in the options does not exist."""
    for phase, dataset in opt['datasets'].items():
        for key in ('dataroot_gt', 'dataroot_lq', 'meta_info_file'):
            path = dataset.get(key)
            if path is not None and not osp.exists(path):
                raise FileNotFoundError(f'datasets.{phase}.{key}: "{path}" does not exist. Fix: correct the path, '
                                        'or create the data (e.g. `basicsr-mh make-data`).')


def setup_root_logger(log_file):
    """BasicSR's root logger writing to ``log_file`` (rank 0), also when it was already set up without a file
    (the pre-flight check logs before the experiment folder exists) or for an earlier run in this process."""
    import logging
    from basicsr.utils import get_root_logger
    from basicsr.utils.logger import initialized_logger
    was_initialized = 'basicsr' in initialized_logger
    logger = get_root_logger(logger_name='basicsr', log_level=logging.INFO, log_file=log_file)
    if was_initialized and get_dist_info()[0] == 0:
        for handler in [h for h in logger.handlers if isinstance(h, logging.FileHandler)]:
            logger.removeHandler(handler)
            handler.close()
        file_handler = logging.FileHandler(log_file, 'w')
        file_handler.setFormatter(logging.Formatter('%(asctime)s %(levelname)s: %(message)s'))
        file_handler.setLevel(logging.INFO)
        logger.addHandler(file_handler)
        logger.setLevel(logging.INFO)
    return logger


#: Entries of ``path`` that are settings, not folders (BasicSR's ``make_exp_dirs`` would create a folder of each).
PATH_SETTINGS = ('trust_checkpoint', )


def make_exp_dirs(opt):
    """BasicSR's ``make_exp_dirs`` (rank 0 archives an existing experiment/results folder and makes the new ones),
    leaving out the ``path`` entries that are settings (:data:`PATH_SETTINGS`)."""
    folders = {k: v for k, v in opt['path'].items() if k not in PATH_SETTINGS}
    basicsr_make_exp_dirs(dict(opt, path=folders))


def finish_distributed(opt):
    """End of a distributed run: wait for every rank, then destroy the process group, so that no rank exits while
    gloo/NCCL threads still run (a rank exiting with live gloo threads aborts with "terminate called without an
    active exception" and fails the whole torchrun). A no-op without distributed training."""
    import torch.distributed as dist
    if opt.get('dist') and dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
