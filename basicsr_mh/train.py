"""Training entry point: ``basicsr-mh train -opt ...`` / ``python -m basicsr_mh.train -opt ...`` (torchrun too).

The loop follows BasicSR's ``basicsr/train.py`` (same folders, logs, checkpoints and flags) with the current
directory as root, and adds: multi-head option upgrades and a pre-flight check (network, checkpoint, first image pair
of every dataset) before anything is written, gloo on the CPU for ``--launcher pytorch`` (folders made by rank 0, the
others wait at a barrier), and an exact resume: ``--auto_resume`` takes the latest training state whose network
checkpoint exists and loads (half-written files are skipped with a warning), restores the optimizers, schedulers, EMA,
head statistics, every rank's RNG states and the position inside the epoch, so a resumed run ends with the same
numbers as an uninterrupted one (exactly so with ``num_worker_per_gpu: 0``). Validation does not touch the training
RNG streams. Each validation's metrics are written to ``experiments/<name>/metrics.json`` (rank 0).

Preemption (:mod:`basicsr_mh.preemption`): SIGTERM or SIGUSR1 during the loop ends the run after the current step,
with a complete resumable state (all ranks agree on the step; rank 0 writes atomically); the process exits with
:data:`~basicsr_mh.preemption.PREEMPTED_EXIT_CODE` (75) and ``--auto_resume`` continues exactly.
"""
import datetime
import math
import os
import sys
import time
import torch

# isort: off
import basicsr_mh  # noqa: F401  (registers archs/losses/models; installs the torchvision alias first)
# isort: on
from basicsr.data import build_dataloader, build_dataset
from basicsr.data.data_sampler import EnlargedSampler
from basicsr.data.prefetch_dataloader import CPUPrefetcher, CUDAPrefetcher
from basicsr.models import build_model
from basicsr.train import init_tb_loggers
from basicsr.utils import (AvgTimer, MessageLogger, get_env_info, get_root_logger, get_time_str, mkdir_and_rename,
                           scandir)
from basicsr.utils.options import copy_opt_file, dict2str
from os import path as osp

from basicsr_mh_cli.parsers import train_test_parser
from .cli_options import finish_distributed, make_exp_dirs, options_from_args, setup_root_logger
from .models.checkpoint import (UntrustedCheckpointError, atomic_write_json, checkpoint_trust, preserved_rng,
                                read_checkpoint, set_rng_state)
from .models.multihead_model import MultiHeadImageRestorationModel
from .preemption import PREEMPTED_EXIT_CODE, Preempted, PreemptionWatch, shield_data_loader_workers
from .preflight import preflight


def _dist_ready(opt):
    return bool(opt.get('dist')) and torch.distributed.is_available() and torch.distributed.is_initialized()


def barrier(opt):
    """Wait for every rank (no-op without distributed training)."""
    if _dist_ready(opt):
        torch.distributed.barrier()


def _usable_state(state_path, models_dir, warn, trust):
    """Whether ``<iter>.state`` and its ``net_g_<iter>.pth`` both exist and load; warns (``warn``) when not.

    Raises:
        UntrustedCheckpointError: either file needs ``weights_only=False`` and ``trust`` is False (never skipped: an
            older state would silently replace the newest).
    """
    iteration = osp.basename(state_path)[:-len('.state')]
    net_path = osp.join(models_dir, f'net_g_{iteration}.pth')
    if not osp.isfile(net_path):
        warn(f'Resume: skipping {state_path}: its network {net_path} does not exist (interrupted while saving?).')
        return False
    for path, is_state in ((state_path, True), (net_path, False)):
        try:
            content = read_checkpoint(path, trust=trust)
        except UntrustedCheckpointError:
            raise
        except (ValueError, FileNotFoundError) as err:
            warn(f'Resume: skipping {state_path}: {err}')
            return False
        if not isinstance(content, dict) or ('iter' not in content if is_state else 'params' not in content):
            warn(f'Resume: skipping {state_path}: {path} is not a complete training state / network checkpoint.')
            return False
    return True


def find_resume_state(opt, warn=None):
    """Path of the training state to resume from, or None.

    ``--auto_resume``: the latest ``<iter>.state`` in ``training_states/`` whose ``models/net_g_<iter>.pth`` exists and
    both load; ``*.tmp`` files (interrupted atomic writes) are ignored and broken files skipped with a warning. Rank 0
    chooses and the other ranks follow; a file refused as untrusted stops every rank with that message. Without it:
    ``path.resume_state`` (or None).
    """
    warn = warn or (lambda msg: get_root_logger().warning(msg))
    if not opt['auto_resume']:
        return opt['path'].get('resume_state')
    chosen, refusal = None, None
    if opt.get('rank', 0) == 0:
        state_dir = opt['path']['training_states']
        if osp.isdir(state_dir):
            names = [
                name for name in scandir(state_dir, suffix='.state', recursive=False)
                if name[:-len('.state')].isdigit()
            ]
            try:
                for name in sorted(names, key=lambda n: int(n[:-len('.state')]), reverse=True):
                    path = osp.join(state_dir, name)
                    if _usable_state(path, opt['path']['models'], warn, checkpoint_trust(opt)):
                        chosen = path
                        break
            except UntrustedCheckpointError as err:
                refusal = str(err)
    if _dist_ready(opt):
        box = [chosen, refusal]
        torch.distributed.broadcast_object_list(box, src=0)
        chosen, refusal = box
    if refusal is not None:
        raise UntrustedCheckpointError(refusal)
    if chosen is not None:
        opt['path']['resume_state'] = chosen
    return chosen


def load_resume_state(opt, warn=None):
    """Load the resume state on the CPU (``weights_only=True`` unless ``path.trust_checkpoint``) and point
    ``path.pretrain_network_g`` at its network (``params`` and ``params_ema`` are loaded from it into net_g and
    net_g_ema)."""
    path = find_resume_state(opt, warn)
    if path is None:
        return None
    state = read_checkpoint(path, trust=checkpoint_trust(opt))
    models_dir = opt['path']['models']
    if opt['path'].get('pretrain_network_g') is None or opt['auto_resume']:
        opt['path']['pretrain_network_g'] = osp.join(models_dir, f'net_g_{state["iter"]}.pth')
        if not osp.isfile(opt['path']['pretrain_network_g']):
            raise FileNotFoundError(f'Resume state {path} has no matching network {opt["path"]["pretrain_network_g"]}.')
    opt['path']['param_key_g'] = 'params'
    opt['path']['strict_load_g'] = True
    return state


class ResumableSampler(EnlargedSampler):
    """BasicSR's :class:`EnlargedSampler` that can skip the samples already seen in the epoch of a resumed run.

    ``skip`` (samples) applies to the current epoch only; :meth:`set_epoch` clears it.
    """

    def __init__(self, dataset, num_replicas, rank, ratio=1):
        super().__init__(dataset, num_replicas, rank, ratio)
        self.skip = 0

    def __iter__(self):
        return iter(list(super().__iter__())[self.skip:])

    def set_epoch(self, epoch):
        super().set_epoch(epoch)
        self.skip = 0


def create_train_val_dataloader(opt, logger):
    """BasicSR's ``create_train_val_dataloader`` with a :class:`ResumableSampler` for the training set.

    Returns:
        tuple: train_loader, train_sampler, val_loaders, total_epochs, total_iters, iters_per_epoch
    """
    train_loader = train_sampler = None
    val_loaders = []
    total_epochs = total_iters = iters_per_epoch = 0
    for phase, dataset_opt in opt['datasets'].items():
        if phase == 'train':
            ratio = dataset_opt.get('dataset_enlarge_ratio', 1)
            train_set = build_dataset(dataset_opt)
            train_sampler = ResumableSampler(train_set, opt['world_size'], opt['rank'], ratio)
            train_loader = build_dataloader(
                train_set,
                dataset_opt,
                num_gpu=opt['num_gpu'],
                dist=opt['dist'],
                sampler=train_sampler,
                seed=opt['manual_seed'])
            iters_per_epoch = len(train_sampler) // dataset_opt['batch_size_per_gpu']
            if iters_per_epoch < 1:
                raise ValueError(f'datasets.train: {len(train_set)} images x dataset_enlarge_ratio {ratio} over '
                                 f'{opt["world_size"]} process(es) give less than one batch of batch_size_per_gpu '
                                 f'{dataset_opt["batch_size_per_gpu"]}. Fix: lower batch_size_per_gpu or raise '
                                 'dataset_enlarge_ratio.')
            total_iters = int(opt['train']['total_iter'])
            total_epochs = math.ceil(total_iters / iters_per_epoch)
            logger.info('Training statistics:'
                        f'\n\tNumber of train images: {len(train_set)}'
                        f'\n\tDataset enlarge ratio: {ratio}'
                        f'\n\tBatch size per gpu: {dataset_opt["batch_size_per_gpu"]}'
                        f'\n\tWorld size (gpu number): {opt["world_size"]}'
                        f'\n\tRequire iter number per epoch: {iters_per_epoch}'
                        f'\n\tTotal epochs: {total_epochs}; iters: {total_iters}.')
        elif phase.split('_')[0] == 'val':
            val_set = build_dataset(dataset_opt)
            val_loader = build_dataloader(
                val_set, dataset_opt, num_gpu=opt['num_gpu'], dist=opt['dist'], sampler=None, seed=opt['manual_seed'])
            logger.info(f'Number of val images/folders in {dataset_opt["name"]}: {len(val_set)}')
            val_loaders.append(val_loader)
        else:
            raise ValueError(f'datasets.{phase}: phase "{phase}" is not recognized. Fix: name it train or val*.')
    if train_loader is None:
        raise ValueError('datasets.train is missing. Fix: add a training dataset.')
    return train_loader, train_sampler, val_loaders, total_epochs, total_iters, iters_per_epoch


def validate_all(model, val_loaders, current_iter, tb_logger, opt, metrics_path, on_validation=None):
    """Validate on every loader without touching the training RNG streams; rank 0 writes ``metrics_path``
    (``{"iter": i, "datasets": {name: {metric: value}}}``). ``on_validation(record)``, if given, is called per
    dataset with ``dict(iter=i, dataset=name, **metrics)`` plus, for a multi-head model, ``win_h<k>``: the share of
    training samples head k won in the current logging window. Returns ``{name: {metric: value}}``."""
    results = {}
    with preserved_rng():
        for val_loader in val_loaders:
            model.validation(val_loader, current_iter, tb_logger, opt['val'].get('save_img', False))
            if getattr(model, 'metric_results', None):
                name = val_loader.dataset.opt['name']
                results[name] = {k: float(v) for k, v in model.metric_results.items()}
                if on_validation is not None:
                    record = dict(iter=int(current_iter), dataset=name, **results[name])
                    if getattr(model, 'num_outputs', 1) > 1:
                        rates = model.head_win_rates(reset=False).tolist()
                        record.update({f'win_h{k}': rate for k, rate in enumerate(rates)})
                    on_validation(record)
    if opt['rank'] == 0 and results:
        atomic_write_json({'iter': current_iter, 'datasets': results}, metrics_path)
    return results


def train_pipeline(root_path, argv=None, on_validation=None):
    """Run a training from the command line arguments ``argv`` (default ``sys.argv[1:]``); BasicSR's signature
    (``on_validation``: see :func:`validate_all`). Returns the trained model."""
    return train(root_path, train_test_parser('basicsr-mh train', True).parse_args(argv), on_validation)


def run(args, prog='basicsr-mh train'):
    """``basicsr-mh train`` with parsed arguments, the current directory as root; returns the exit code: 0, or
    :data:`~basicsr_mh.preemption.PREEMPTED_EXIT_CODE` when a signal stopped the run after writing its state."""
    try:
        train(os.getcwd(), args)
    except Preempted as stop:
        print(f'basicsr-mh: {stop}', file=sys.stderr)
        return PREEMPTED_EXIT_CODE
    return 0


def save_checkpoint(model, epoch, current_iter, epoch_iter, opt):
    """``model.save``; a basicsr-mh model also records the loop's position in the epoch (``epoch_iter``) and the
    world size, for an exact resume. Returns the training state's path."""
    if isinstance(model, MultiHeadImageRestorationModel):
        model.save(epoch, current_iter, extras={'epoch_iter': epoch_iter, 'world_size': opt['world_size']})
    else:  # BasicSR's own SRModel (a plain single-head file)
        model.save(epoch, current_iter)
    return osp.join(opt['path']['training_states'], f'{current_iter}.state')


def _stop_for_preemption(model, watch, epoch, current_iter, epoch_iter, saved, opt, tb_logger):
    """Write the state of the finished step (unless this step's checkpoint was just written), log, release the
    distributed group and raise :class:`~basicsr_mh.preemption.Preempted`."""
    logger = get_root_logger()
    state_path = osp.join(opt['path']['training_states'], f'{current_iter}.state')
    if not saved:
        logger.info('Saving models and training states before stopping.')
        state_path = save_checkpoint(model, epoch, current_iter, epoch_iter, opt)
    logger.warning(f'Stopped by {watch.signal_name} after iteration {current_iter}: resumable state {state_path}; '
                   f'exit code {PREEMPTED_EXIT_CODE}. Continue with --auto_resume.')
    if tb_logger:
        tb_logger.close()
    finish_distributed(opt)
    raise Preempted(watch.signal_name, current_iter, state_path)


def train(root_path, args, on_validation=None):
    """Run a training from parsed arguments (:func:`basicsr_mh_cli.parsers.train_test_parser`); returns the model.
    ``on_validation(record)`` is called after each validation (:func:`validate_all`)."""
    opt = options_from_args(root_path, True, args)
    opt['root_path'] = root_path
    notes = opt.pop('_notes', [])
    torch.backends.cudnn.benchmark = True

    warnings_before_log = []
    resume_state = load_resume_state(opt, warn=warnings_before_log.append)
    with preserved_rng():  # nothing is written before the network, checkpoint and first pairs are checked
        preflight(opt)
    if resume_state is None:
        make_exp_dirs(opt)  # rank 0 only; an existing experiment of that name is archived
        if opt.get('logger', {}).get('use_tb_logger') and 'debug' not in opt['name'] and opt['rank'] == 0:
            mkdir_and_rename(osp.join(opt['root_path'], 'tb_logger', opt['name']))
    elif opt['rank'] == 0:
        os.makedirs(opt['path']['experiments_root'], exist_ok=True)
    barrier(opt)  # the folders exist before any rank writes into them
    copy_opt_file(args.opt, opt['path']['experiments_root'])

    log_file = osp.join(opt['path']['log'], f"train_{opt['name']}_{get_time_str()}.log")
    logger = setup_root_logger(log_file)
    logger.info(get_env_info())
    for note in notes:
        logger.info(note)
    for warning in warnings_before_log:
        logger.warning(warning)
    logger.info(dict2str(opt))
    tb_logger = init_tb_loggers(opt)

    train_loader, train_sampler, val_loaders, total_epochs, total_iters, iters_per_epoch = \
        create_train_val_dataloader(opt, logger)
    shield_data_loader_workers(train_loader)  # a scheduler's signal to every process must not kill the workers
    batch_size = opt['datasets']['train']['batch_size_per_gpu']
    model = build_model(opt)
    skip_batches = 0
    if resume_state:
        model.resume_training(resume_state)
        start_epoch, current_iter = resume_state['epoch'], resume_state['iter']
        skip_batches = int(resume_state.get('epoch_iter', 0))
        if 'epoch_iter' not in resume_state:  # a state of BasicSR or an older basicsr-mh: restart the epoch
            logger.warning(f'Resume state {opt["path"]["resume_state"]} does not record the position in the epoch; '
                           'the epoch restarts (the run will not match an uninterrupted one exactly).')
        logger.info(f'Resuming training from epoch: {start_epoch}, iter: {current_iter}.')
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
    metrics_path = osp.join(opt['path']['experiments_root'], 'metrics.json')
    last_val_iter = None
    epoch = start_epoch
    with PreemptionWatch() as watch:  # SIGTERM/SIGUSR1: stop after the current step, resumable
        for epoch in range(start_epoch, total_epochs + 1):
            train_sampler.set_epoch(epoch)
            epoch_iter = 0
            if resume_state is not None and epoch == start_epoch:
                epoch_iter = min(skip_batches, iters_per_epoch)
                train_sampler.skip = epoch_iter * batch_size
            prefetcher.reset()
            if resume_state is not None and epoch == start_epoch:
                rng = resume_state.get('rng') or []
                if len(rng) == opt['world_size']:
                    set_rng_state(rng[opt['rank']])
                else:
                    logger.warning(f'Resume state has RNG states of {len(rng)} process(es), this run has '
                                   f'{opt["world_size"]}: random streams restart from the seed.')
            train_data = prefetcher.next()
            while train_data is not None:
                data_timer.record()
                current_iter += 1
                if current_iter > total_iters:
                    break
                epoch_iter += 1
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
                # validation first (BasicSR saves first): a checkpoint records the best head of its own iteration
                if val_freq is not None and current_iter % val_freq == 0:
                    validate_all(model, val_loaders, current_iter, tb_logger, opt, metrics_path, on_validation)
                    last_val_iter = current_iter
                saved = current_iter % opt['logger']['save_checkpoint_freq'] == 0
                if saved:
                    logger.info('Saving models and training states.')
                    save_checkpoint(model, epoch, current_iter, epoch_iter, opt)
                if watch.stop_requested(distributed=_dist_ready(opt)):  # every rank asks after every step
                    _stop_for_preemption(model, watch, epoch, current_iter, epoch_iter, saved, opt, tb_logger)
                data_timer.start()
                iter_timer.start()
                train_data = prefetcher.next()
            if current_iter > total_iters:
                break

        # still watched: a signal during the last validation and save lets them finish (training has ended)
        consumed = str(datetime.timedelta(seconds=int(time.time() - start_time)))
        logger.info(f'End of training. Time consumed: {consumed}')
        if getattr(model, 'skipped_steps', 0):
            logger.warning(f'{model.skipped_steps} training step(s) were skipped for a non-finite loss or gradient '
                           '(train.skip_nonfinite).')
        final_iter = min(current_iter, total_iters)
        if opt.get('val') is not None and last_val_iter != final_iter:  # BasicSR validates once more unless done
            validate_all(model, val_loaders, final_iter, tb_logger, opt, metrics_path, on_validation)
        logger.info('Save the latest model.')
        model.save(epoch=-1, current_iter=-1)
        if watch.signal_name is not None:
            logger.warning(f'{watch.signal_name} came after the last iteration: training has ended normally.')
    if tb_logger:
        tb_logger.close()
    finish_distributed(opt)
    return model


def main(argv=None):
    """``python -m basicsr_mh.train -opt ...`` (torchrun too): train with the current directory as root; returns the
    exit code (:func:`run`)."""
    return run(
        train_test_parser('python -m basicsr_mh.train', True).parse_args(argv if argv is not None else sys.argv[1:]))


if __name__ == '__main__':
    sys.exit(main())
