"""Test entry point: ``basicsr-mh test -opt ...`` / ``python -m basicsr_mh.test -opt ...``.

Like BasicSR's ``basicsr/test.py`` with the current directory as root: results go to ``results/<name>/``, an existing
folder of that name is archived (renamed), never overwritten. The options, network, checkpoint and first image pairs are
checked before anything is written. With ``--launcher pytorch`` every rank validates a shard and the metrics are
reduced. Rank 0 writes the metrics of every dataset to ``results/<name>/metrics.json``
(``{dataset: {metric: value}}``).
"""
import os
import sys
import torch

# isort: off
import basicsr_mh  # noqa: F401
# isort: on
from basicsr.data import build_dataloader, build_dataset
from basicsr.models import build_model
from basicsr.utils import get_env_info, get_time_str
from basicsr.utils.options import dict2str
from os import path as osp

from basicsr_mh_cli.parsers import train_test_parser
from .cli_options import finish_distributed, make_exp_dirs, options_from_args, setup_root_logger
from .models.checkpoint import atomic_write_json
from .preflight import preflight


def test_pipeline(root_path, argv=None):
    """Validate a model on every dataset of the option file named in the command line ``argv`` (default
    ``sys.argv[1:]``); BasicSR's signature. Returns the model (its ``metric_results``)."""
    return test(root_path, train_test_parser('basicsr-mh test', False).parse_args(argv))


def run(args, prog='basicsr-mh test'):
    """``basicsr-mh test`` with parsed arguments, the current directory as root; returns the exit code 0."""
    test(os.getcwd(), args)
    return 0


def test(root_path, args):
    """Validate a model from parsed arguments (:func:`basicsr_mh_cli.parsers.train_test_parser`); returns it."""
    opt = options_from_args(root_path, False, args)
    notes = opt.pop('_notes', [])
    torch.backends.cudnn.benchmark = True
    preflight(opt)
    make_exp_dirs(opt)  # rank 0 only
    if opt['dist'] and torch.distributed.is_initialized():
        torch.distributed.barrier()  # the results folder exists (and an old one is archived) before others write
    log_file = osp.join(opt['path']['log'], f"test_{opt['name']}_{get_time_str()}.log")
    logger = setup_root_logger(log_file)
    logger.info(get_env_info())
    for note in notes:
        logger.info(note)
    logger.info(dict2str(opt))

    opt.setdefault('val', {})
    test_loaders = []
    for _, dataset_opt in sorted(opt['datasets'].items()):
        test_set = build_dataset(dataset_opt)
        test_loader = build_dataloader(
            test_set, dataset_opt, num_gpu=opt['num_gpu'], dist=opt['dist'], sampler=None, seed=opt['manual_seed'])
        logger.info(f"Number of test images in {dataset_opt['name']}: {len(test_set)}")
        test_loaders.append(test_loader)

    model = build_model(opt)
    results = {}
    for test_loader in test_loaders:
        name = test_loader.dataset.opt['name']
        logger.info(f'Testing {name}...')
        model.validation(
            test_loader, current_iter=opt['name'], tb_logger=None, save_img=opt['val'].get('save_img', False))
        results[name] = {k: float(v) for k, v in (getattr(model, 'metric_results', {}) or {}).items()}
    model.test_results = results
    if opt['rank'] == 0:
        atomic_write_json(results, osp.join(opt['path']['results_root'], 'metrics.json'))
        logger.info(f"Metrics written to {osp.join(opt['path']['results_root'], 'metrics.json')}")
    finish_distributed(opt)
    return model


def main(argv=None):
    """``python -m basicsr_mh.test -opt ...``."""
    return test_pipeline(os.getcwd(), argv if argv is not None else sys.argv[1:])


if __name__ == '__main__':
    main()
    sys.exit(0)
