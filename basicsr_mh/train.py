"""Training entry point: ``basicsr-mh train -opt ...`` / ``python -m basicsr_mh.train -opt ...`` (torchrun too).

The loop follows BasicSR's ``basicsr/train.py`` (same folders, logs, checkpoints and flags) with the current
directory as root, and adds: multi-head option upgrades and checks before anything is written, CPU-safe resume,
gloo on the CPU for ``--launcher pytorch``.
"""
import datetime
import logging
import os
import sys
import time
import torch
from os import path as osp

import basicsr_mh  # noqa: F401  (registers archs/losses/models; installs the torchvision alias first)
from basicsr.data.prefetch_dataloader import CPUPrefetcher, CUDAPrefetcher
from basicsr.models import build_model
from basicsr.train import create_train_val_dataloader, init_tb_loggers
from basicsr.utils import (AvgTimer, MessageLogger, get_env_info, get_root_logger, get_time_str, make_exp_dirs,
                           mkdir_and_rename, scandir)
from basicsr.utils.options import copy_opt_file, dict2str

from .cli_options import parse_options
from .models.checkpoint import read_checkpoint


def find_resume_state(opt):
    """Path of the training state to resume from (``--auto_resume``: the latest complete one), or None."""
    if opt['auto_resume']:
        state_dir = opt['path']['training_states']
        if osp.isdir(state_dir):
            states = [int(name[:-len('.state')]) for name in scandir(state_dir, suffix='.state', recursive=False)
                      if name[:-len('.state')].isdigit()]
            if states:
                path = osp.join(state_dir, f'{max(states)}.state')
                opt['path']['resume_state'] = path
                return path
        return None
    return opt['path'].get('resume_state')


def load_resume_state(opt):
    """Load the resume state on the CPU (optimizers move their states to the parameters' device)."""
    path = find_resume_state(opt)
    if path is None:
        return None
    state = read_checkpoint(path, trusted=True)
    models_dir = opt['path']['models']
    if opt['path'].get('pretrain_network_g') is None or opt['auto_resume']:
        opt['path']['pretrain_network_g'] = osp.join(models_dir, f'net_g_{state["iter"]}.pth')
        if not osp.isfile(opt['path']['pretrain_network_g']):
            raise FileNotFoundError(f'Resume state {path} has no matching network {opt["path"]["pretrain_network_g"]}.')
    opt['path']['param_key_g'] = 'params'
    opt['path']['strict_load_g'] = True
    return state


def train_pipeline(root_path, argv=None):
    """Run a training from the command line arguments ``argv`` (default ``sys.argv[1:]``)."""
    opt, args = parse_options(root_path, is_train=True, argv=argv)
    opt['root_path'] = root_path
    notes = opt.pop('_notes', [])
    torch.backends.cudnn.benchmark = True

    resume_state = load_resume_state(opt)
    if resume_state is None:
        make_exp_dirs(opt)
        if opt.get('logger', {}).get('use_tb_logger') and 'debug' not in opt['name'] and opt['rank'] == 0:
            mkdir_and_rename(osp.join(opt['root_path'], 'tb_logger', opt['name']))
    else:
        os.makedirs(opt['path']['experiments_root'], exist_ok=True)
    copy_opt_file(args.opt, opt['path']['experiments_root'])

    log_file = osp.join(opt['path']['log'], f"train_{opt['name']}_{get_time_str()}.log")
    logger = get_root_logger(logger_name='basicsr', log_level=logging.INFO, log_file=log_file)
    logger.info(get_env_info())
    for note in notes:
        logger.info(note)
    logger.info(dict2str(opt))
    tb_logger = init_tb_loggers(opt)

    train_loader, train_sampler, val_loaders, total_epochs, total_iters = create_train_val_dataloader(opt, logger)
    model = build_model(opt)
    if resume_state:
        model.resume_training(resume_state)
        logger.info(f"Resuming training from epoch: {resume_state['epoch']}, iter: {resume_state['iter']}.")
        start_epoch, current_iter = resume_state['epoch'], resume_state['iter']
    else:
        start_epoch, current_iter = 0, 0

    msg_logger = MessageLogger(opt, current_iter, tb_logger)
    prefetch_mode = opt['datasets']['train'].get('prefetch_mode')
    if prefetch_mode in (None, 'cpu'):
        prefetcher = CPUPrefetcher(train_loader)
    elif prefetch_mode == 'cuda':
        if opt['datasets']['train'].get('pin_memory') is not True:
            raise ValueError('datasets.train.prefetch_mode: cuda needs `pin_memory: true`.')
        prefetcher = CUDAPrefetcher(train_loader, opt)
    else:
        raise ValueError(f"datasets.train.prefetch_mode {prefetch_mode!r} is not one of None, 'cpu', 'cuda'.")

    logger.info(f'Start training from epoch: {start_epoch}, iter: {current_iter}')
    data_timer, iter_timer = AvgTimer(), AvgTimer()
    start_time = time.time()
    val_freq = (opt.get('val') or {}).get('val_freq')
    last_val_iter = None
    epoch = start_epoch
    for epoch in range(start_epoch, total_epochs + 1):
        train_sampler.set_epoch(epoch)
        prefetcher.reset()
        train_data = prefetcher.next()
        while train_data is not None:
            data_timer.record()
            current_iter += 1
            if current_iter > total_iters:
                break
            model.update_learning_rate(current_iter, warmup_iter=opt['train'].get('warmup_iter', -1))
            model.feed_data(train_data)
            model.optimize_parameters(current_iter)
            iter_timer.record()
            if current_iter == 1:
                msg_logger.reset_start_time()
            if current_iter % opt['logger']['print_freq'] == 0:
                log_vars = {'epoch': epoch, 'iter': current_iter, 'lrs': model.get_current_learning_rate()}
                log_vars.update({'time': iter_timer.get_avg_time(), 'data_time': data_timer.get_avg_time()})
                log_vars.update(model.get_current_log())
                msg_logger(log_vars)
            if current_iter % opt['logger']['save_checkpoint_freq'] == 0:
                logger.info('Saving models and training states.')
                model.save(epoch, current_iter)
            if val_freq is not None and current_iter % val_freq == 0:
                for val_loader in val_loaders:
                    model.validation(val_loader, current_iter, tb_logger, opt['val'].get('save_img', False))
                last_val_iter = current_iter
            data_timer.start()
            iter_timer.start()
            train_data = prefetcher.next()
        if current_iter > total_iters:
            break

    consumed = str(datetime.timedelta(seconds=int(time.time() - start_time)))
    logger.info(f'End of training. Time consumed: {consumed}')
    logger.info('Save the latest model.')
    model.save(epoch=-1, current_iter=-1)
    final_iter = min(current_iter, total_iters)
    if opt.get('val') is not None and last_val_iter != final_iter:  # BasicSR validates once more unless just done
        for val_loader in val_loaders:
            model.validation(val_loader, final_iter, tb_logger, opt['val'].get('save_img', False))
    if tb_logger:
        tb_logger.close()
    return model


def main(argv=None):
    """``python -m basicsr_mh.train -opt ...``: train with the current directory as root."""
    return train_pipeline(os.getcwd(), argv if argv is not None else sys.argv[1:])


if __name__ == '__main__':
    main()
    sys.exit(0)
