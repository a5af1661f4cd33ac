"""MultiHeadImageRestorationModel: train K heads with the min-head loss and validate every head (Eq. 7a/7b)."""
import math
import os
import torch
import torch.nn.functional as F
from basicsr.archs import build_network
from basicsr.losses import build_loss
from basicsr.models.sr_model import SRModel
from basicsr.utils import get_root_logger, imwrite, tensor2img
from basicsr.utils.registry import MODEL_REGISTRY
from collections import OrderedDict
from copy import deepcopy
from os import path as osp
from torch.nn.parallel import DataParallel, DistributedDataParallel
from torch.utils.data import default_collate
from tqdm import tqdm

from ..acceleration import Acceleration
from ..archs.multihead_arch import MultiHeadArch, head_pair_name, image_scores
from ..keys import MULTIHEAD_META_KEY, strip_module_prefix
from ..losses.min_head_loss import ASSIGNMENT_KEYS, MinHeadLoss, MinHeadResult, log_loss_upgrade
from ..metrics import per_head_many
from ..options import acceleration_section, check_score_weight, upgrade_options
from .checkpoint import (NonFiniteError, atomic_torch_save, check_finite_state, checkpoint_trust, get_rng_state,
                         read_checkpoint)
from .lr_scheduler import build_scheduler
from .tiling import check_grid_options, grid_crop_size, merge_tiles, split_tiles
from .train_augment import MixingAugment, ProgressiveTraining
from .validation import HeadMetricAccumulator


def float_psnr_per_head(heads, gt, crop_border=0):
    """PSNR of float images with peak 1, no quantization: ``(B, K', C, H, W)``, ``(B, C, H, W)`` -> ``(B, K')``.

    The forks' ``use_image: false`` path (``calculate_psnr`` on the output tensors).
    """
    if crop_border:
        heads = heads[..., crop_border:-crop_border, crop_border:-crop_border]
        gt = gt[..., crop_border:-crop_border, crop_border:-crop_border]
    mse = (heads.double() - gt.double().unsqueeze(1)).pow(2).flatten(2).mean(dim=2)
    return (10 * torch.log10(1.0 / mse)).cpu()


@MODEL_REGISTRY.register()
class MultiHeadImageRestorationModel(SRModel):
    """Image restoration model for a network with K' output heads (a :class:`MultiHeadArch`).

    Training: the pixel loss is wrapped in :class:`MinHeadLoss` when it is a plain loss, and applied to every stage
    output of multi-stage backbones; head win rates (``heads/win_h{k}``) go to the log and TensorBoard.
    EMA (``train.ema_decay``), gradient clipping (``train.use_grad_clip``), every ``torch.optim`` optimizer and every
    scheduler of :func:`basicsr_mh.models.lr_scheduler.build_scheduler` work. Restormer's batch augmentations run
    just before the forward pass: progressive training (``datasets.train.mini_batch_sizes``/``gt_sizes``/``iters``)
    and mixup (``train.mixing_augs``), see :mod:`basicsr_mh.models.train_augment`.

    Validation: for every YAML metric ``m``, ``m`` is the best single head's mean (Eq. 7b; it drives BasicSR's
    best-metric tracking), ``m_overall`` the mean of each image's best head (Eq. 7a), ``m_worst`` the mean of each
    image's worst head, ``m_h0 .. m_h{K'-1}`` the per-head means, and ``best_head`` the best single head of the
    first metric. The network output is ``(B, K', C, H, W)``; a plain network (4-D output) is treated as K' = 1.
    Inference options (``val``): ``grids`` tiling with ``crop_size``/``crop_size_h``/``crop_size_w``/ratios (NAFNet,
    HINet; every head merged on its own), ``max_minibatch`` (tiles per forward), ``window_size`` (Restormer:
    reflect-pad to a multiple), ``rgb2bgr`` and ``use_image`` (NAFNet/Restormer validation flags).
    """

    #: The model handles multi-head networks itself: ``upgrade_options`` keeps a model type whose class says so.
    is_multihead_model = True
    #: ``train.use_grad_clip`` when the option file does not set it.
    default_grad_clip = False

    def __init__(self, opt):
        upgrade_options(opt)
        path_opt = opt.setdefault('path', {})
        if path_opt.get('param_key') is not None and path_opt.get('param_key_g') is None:
            path_opt['param_key_g'] = path_opt['param_key']  # NAFNet/Restormer forks' name
        check_grid_options(opt)
        self.scale = int(opt.get('scale', 1))
        self.best_head = 0
        self._win_counts = None
        self.progressive = None
        self.mixing = None
        self._progressive_stage = None
        self.final_index = -1
        #: Steps skipped for a non-finite loss or gradient (``train.skip_nonfinite: true``).
        self.skipped_steps = 0
        #: Extra entries of the next training state (the training loop's position in the epoch), see train.py.
        self.training_state_extras = {}
        #: ``train.amp``/``channels_last``/``compile`` (``val.*`` for a test run), see :mod:`basicsr_mh.acceleration`.
        section = acceleration_section(opt)
        device = 'cuda' if opt.get('num_gpu', 0) != 0 and torch.cuda.is_available() else 'cpu'
        self.acceleration = Acceleration.from_options(opt.get(section), device, section)
        self._compiled = {}
        self.grad_scaler = None
        super().__init__(opt)
        if self.acceleration.enabled:
            get_root_logger().info(f'basicsr-mh: {self.acceleration.describe()} ({section}.amp, '
                                   f'{section}.channels_last, {section}.compile).')
        bare = self.get_bare_model(self.net_g)
        self.num_heads = getattr(bare, 'num_heads', 1)
        self.combine = getattr(bare, 'combine', False)
        self.num_outputs = getattr(bare, 'num_outputs', 1)
        self.head_pairs = list(getattr(bare, 'head_pairs', [(0, 0)]))
        self.has_scores = bool(getattr(bare, 'head_scores', False))
        #: ``train.dead_head_iters``: warn when a base head has won nothing for this many iterations (0: never).
        self.dead_head_iters = int((self.opt.get('train') or {}).get('dead_head_iters', 1000))
        #: ``train.score_weight``: weight of the score branch's loss (``network_g.head_scores``).
        self.score_weight = check_score_weight((self.opt.get('train') or {}).get('score_weight', 1.0))
        self._last_base_win = None
        self._dead_warned = None
        # position of the final restoration among a multi-stage backbone's outputs (MPRNet: 0, HINet: -1)
        self.final_index = getattr(getattr(bare, 'backbone', bare), 'final_output_index', -1)
        self._win_counts = torch.zeros(self.num_outputs, dtype=torch.float64, device=self.device)
        self._last_win_rates = None
        load_path = self.opt['path'].get('pretrain_network_g')
        if load_path:
            meta = read_checkpoint(load_path, trust=checkpoint_trust(self.opt)).get(MULTIHEAD_META_KEY) or {}
            self.best_head = int(meta.get('best_head', 0)) if meta.get('num_outputs') == self.num_outputs else 0

    # ------------------------------------------------------------------ setup
    def model_to_device(self, net):
        """Move to the device (channels_last with ``train.channels_last``); DDP on CUDA or (gloo) CPU, DataParallel
        for several GPUs without DDP."""
        net = self.acceleration.prepare_network(net.to(self.device))
        if self.opt['dist']:
            find_unused = self.opt.get('find_unused_parameters', False)
            device_ids = [torch.cuda.current_device()] if self.device.type == 'cuda' else None
            net = DistributedDataParallel(net, device_ids=device_ids, find_unused_parameters=find_unused)
        elif self.opt['num_gpu'] > 1:
            net = DataParallel(net)
        return net

    def get_optimizer(self, optim_type, params, lr, **kwargs):
        """Any ``torch.optim`` optimizer by name (BasicSR 1.4.2 knows only Adam)."""
        optim_class = getattr(torch.optim, optim_type, None)
        if optim_class is None or not isinstance(optim_class, type):
            raise ValueError(f'train.optim_g.type "{optim_type}" is not a torch.optim optimizer. Fix: e.g. Adam, '
                             'AdamW, SGD.')
        return optim_class(params, lr, **kwargs)

    def setup_optimizers(self):
        train_opt = deepcopy(self.opt['train'])
        optim_params = [v for v in self.net_g.parameters() if v.requires_grad]
        optim_opt = train_opt['optim_g']
        optim_type = optim_opt.pop('type')
        self.optimizer_g = self.get_optimizer(optim_type, optim_params, **optim_opt)
        self.optimizers.append(self.optimizer_g)

    def init_training_settings(self):
        self.net_g.train()
        train_opt = self.opt['train']
        logger = get_root_logger()
        self.ema_decay = train_opt.get('ema_decay', 0)
        if self.ema_decay > 0:
            logger.info(f'Use Exponential Moving Average with decay: {self.ema_decay}')
            self.net_g_ema = self.acceleration.prepare_network(build_network(self.opt['network_g']).to(self.device))
            load_path = self.opt['path'].get('pretrain_network_g', None)
            if load_path is not None:
                self.load_network(self.net_g_ema, load_path, self.opt['path'].get('strict_load_g', True), 'params_ema')
            else:
                self.model_ema(0)
            self.net_g_ema.eval()

        has_heads = isinstance(self.get_bare_model(self.net_g), MultiHeadArch)
        pixel_opt = train_opt.get('pixel_opt')
        if pixel_opt:
            assignment = {k: pixel_opt[k] for k in ASSIGNMENT_KEYS if k in pixel_opt}
            assignment.setdefault('anneal_iters', max(1, int(train_opt.get('total_iter') or 2000) // 2))
            plain_opt = {k: v for k, v in pixel_opt.items() if k not in ASSIGNMENT_KEYS}
            if has_heads and pixel_opt.get('type') != 'MinHeadLoss':
                self.cri_pix = MinHeadLoss(loss=plain_opt, **assignment).to(self.device)
                log_loss_upgrade(pixel_opt.get('type'), self.cri_pix)
            elif pixel_opt.get('type') == 'MinHeadLoss':
                self.cri_pix = build_loss(dict(assignment, **pixel_opt)).to(self.device)
            else:  # one output: nothing to assign
                self.cri_pix = build_loss(plain_opt).to(self.device)
        else:
            self.cri_pix = None
        self.cri_perceptual = build_loss(train_opt['perceptual_opt']).to(
            self.device) if train_opt.get('perceptual_opt') else None
        if self.cri_pix is None and self.cri_perceptual is None:
            raise ValueError('train: both pixel_opt and perceptual_opt are missing. Fix: add e.g. '
                             '`pixel_opt: {type: PSNRLoss, loss_weight: 1}`.')
        if has_heads and self.cri_pix is None:
            raise ValueError('train.pixel_opt is required for a multi-head network: it picks each sample\'s head.')
        self.use_grad_clip = train_opt.get('use_grad_clip', self.default_grad_clip)
        self.progressive = ProgressiveTraining.from_options((self.opt.get('datasets') or {}).get('train'), self.scale)
        self.mixing = MixingAugment.from_options(train_opt.get('mixing_augs'), self.device)
        if self.mixing is not None:
            logger.info(f'Mixing augmentation: mixup (beta {self.mixing.dist.concentration1.item():g}, identity '
                        f'{"on" if self.mixing.use_identity else "off"}).')
        self.grad_scaler = self.acceleration.grad_scaler()
        self.setup_optimizers()
        self.setup_schedulers()

    def setup_schedulers(self):
        """One scheduler per optimizer: BasicSR's own, TrueCosineAnnealingLR, CosineAnnealingRestartCyclicLR,
        LinearLR (:func:`basicsr_mh.models.lr_scheduler.build_scheduler`; an unknown type lists the known ones)."""
        train_opt = self.opt['train']
        scheduler_opt = train_opt.get('scheduler')
        if not scheduler_opt:
            return
        for optimizer in self.optimizers:
            self.schedulers.append(build_scheduler(optimizer, scheduler_opt, total_iter=train_opt.get('total_iter')))

    def load_network(self, net, load_path, strict=True, param_key='params'):
        """Load a checkpoint; a single-head checkpoint's output layer warm-starts every head (logged)."""
        logger = get_root_logger()
        net = self.get_bare_model(net)
        checkpoint = read_checkpoint(load_path, trust=checkpoint_trust(self.opt))
        if param_key is not None:
            if param_key not in checkpoint and 'params' in checkpoint:
                logger.info(f'Loading: {param_key} does not exist in {load_path}, use params.')
                param_key = 'params'
            if param_key not in checkpoint:
                raise ValueError(f'{load_path} has no "{param_key}" entry (it has {sorted(checkpoint)}). Fix: set '
                                 'path.param_key_g to one of them.')
            state = checkpoint[param_key]
        else:
            state = checkpoint
        state = strip_module_prefix(state)
        logger.info(f'Loading {net.__class__.__name__} model from {load_path}, with param key: [{param_key}].')
        self._print_different_keys_loading(net, state, strict)
        net.load_state_dict(state, strict=strict)

    def _print_different_keys_loading(self, crt_net, load_net, strict=True):
        """BasicSR's key report, but an output layer with 1 head is kept (warm start) instead of dropped."""
        bare = self.get_bare_model(crt_net)
        if isinstance(bare, MultiHeadArch):
            layers = list(bare.head_layer_names) + list(getattr(bare, 'head_input_layers', {}))
            grown = {f'{name}.{p}' for name in layers for p in ('weight', 'bias')}
            current = bare.state_dict()
            kept = {k: load_net[k] for k in list(load_net) if k in grown and k in current}
            load_net.update({k: current[k] for k in kept})  # present in both: nothing to report for them
            super()._print_different_keys_loading(crt_net, load_net, strict)
            load_net.update(kept)
        else:
            super()._print_different_keys_loading(crt_net, load_net, strict)

    # ------------------------------------------------------------------ training
    def feed_data(self, data, is_val=False):
        """Take a batch (``lq``, optional ``gt``) onto the device; ``is_val`` is accepted for the forks' callers."""
        self.lq = data['lq'].to(self.device)
        if 'gt' in data:
            self.gt = data['gt'].to(self.device)

    def augment_batch(self, current_iter):
        """Restormer's progressive cut and mixup of the fed training batch for iteration ``current_iter``."""
        if self.progressive is not None:
            stage = self.progressive.stage(current_iter)
            if stage != self._progressive_stage:
                self._progressive_stage = stage
                get_root_logger().info(
                    f'Progressive training stage {stage + 1}/{len(self.progressive.ends)} from iter {current_iter}: '
                    f'patch size {self.progressive.gt_sizes[stage]}, batch size '
                    f'{self.progressive.mini_batch_sizes[stage]} per GPU.')
            self.lq, self.gt = self.progressive(self.lq, self.gt, current_iter)
        if self.mixing is not None:
            self.gt, self.lq = self.mixing(self.gt, self.lq)

    def optimize_parameters(self, current_iter, tb_logger=None):
        """One training step on the fed batch (after :meth:`augment_batch`); ``tb_logger`` is accepted and unused.

        A non-finite loss or gradient raises :class:`NonFiniteError` naming the iteration and the heads/samples that
        produced it, or skips the step with a warning when ``train.skip_nonfinite`` is true (counted in
        ``skipped_steps``). In distributed training all ranks take the same decision.
        """
        self.augment_batch(current_iter)
        self.optimizer_g.zero_grad()
        scores = None
        # under train.amp only the network runs in low precision: losses, assignment and logs are FP32
        if self.has_scores:
            outputs, scores = self.acceleration.run(self.net_g, self.lq, self._compiled, return_scores=True)
        else:
            outputs = self.acceleration.run(self.net_g, self.lq, self._compiled)
        stages = outputs if isinstance(outputs, (list, tuple)) else [outputs]
        l_total = 0
        loss_dict = OrderedDict()
        final_winners = None
        stage_losses = []
        if self.cri_pix:
            l_pix = 0.
            for index, stage in enumerate(stages):
                if isinstance(self.cri_pix, MinHeadLoss):
                    result = self.cri_pix.assign(stage, self.gt, current_iter)
                else:
                    result = MinHeadResult(self.cri_pix(stage, self.gt))
                l_pix = l_pix + result.loss
                stage_losses.append(result.losses)
                if index == self.final_index % len(stages):
                    final_winners = result.winners
            l_total = l_total + l_pix
            loss_dict['l_pix'] = l_pix
        if scores is not None and final_winners is not None:
            l_score = self.score_weight * self.score_loss(scores, final_winners)
            l_total = l_total + l_score
            loss_dict['l_score'] = l_score
        final = None
        if self.cri_perceptual:
            final = stages[self.final_index]
            if final.dim() == 5:
                final = final[torch.arange(final.shape[0], device=final.device), final_winners]
            l_percep, l_style = self.cri_perceptual(final, self.gt)
            if l_percep is not None:
                l_total = l_total + l_percep
                loss_dict['l_percep'] = l_percep
            if l_style is not None:
                l_total = l_total + l_style
                loss_dict['l_style'] = l_style
        if not self._finite_on_all_ranks(l_total):
            detail = self._nonfinite_loss_detail(stages, stage_losses, loss_dict)
            return self._nonfinite_step(current_iter, 'loss', detail)
        del outputs, stages, final  # the (B, K', C, H, W) outputs are not needed through the backward pass
        if self.grad_scaler is not None:  # fp16: a non-finite gradient is the scaler's business (skip, lower scale)
            self.grad_scaler.scale(l_total).backward()
            self.grad_scaler.unscale_(self.optimizer_g)
        else:
            l_total.backward()
        grads = [p.grad for p in self.net_g.parameters() if p.grad is not None]
        if self.grad_scaler is None and grads and not bool(torch.stack([torch.isfinite(g).all() for g in grads]).all()):
            names = [
                n for n, p in self.get_bare_model(self.net_g).named_parameters()
                if p.grad is not None and not bool(torch.isfinite(p.grad).all())
            ]
            return self._nonfinite_step(current_iter, 'gradient', f'parameters {", ".join(names[:5])}')
        if final_winners is not None:
            self._win_counts += torch.bincount(final_winners, minlength=self.num_outputs).to(self._win_counts)
            self.watch_dead_heads(final_winners, current_iter)
        if self.use_grad_clip:
            torch.nn.utils.clip_grad_norm_(self.net_g.parameters(), 0.01)
        if self.grad_scaler is not None:
            self.grad_scaler.step(self.optimizer_g)
            self.grad_scaler.update()
        else:
            self.optimizer_g.step()
        self.log_dict = self.reduce_loss_dict(loss_dict)
        if self.skipped_steps:
            self.log_dict['skipped_steps'] = float(self.skipped_steps)
        if self.ema_decay > 0:
            self.model_ema(decay=self.ema_decay)

    def _finite_on_all_ranks(self, value):
        """Whether ``value`` is finite on every rank (one all-reduce in distributed training)."""
        flag = torch.isfinite(torch.as_tensor(value, dtype=torch.float32)).all().float().to(self.device)
        if self.opt.get('dist') and torch.distributed.is_available() and torch.distributed.is_initialized():
            flag = flag.reshape(1).clone()
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MIN)
        return bool(flag.min() > 0)

    def _head_name(self, index):
        return head_pair_name(int(index), self.num_heads, self.combine) if self.num_outputs > 1 else 'output'

    def _nonfinite_loss_detail(self, stages, stage_losses, loss_dict):
        """Which loss terms, heads, samples and inputs are not finite, as text for the error message."""
        parts = [
            f'{name} = {float(value.detach()) if torch.is_tensor(value) else value:g}'
            for name, value in loss_dict.items()
        ]
        multi_stage = len(stages) > 1
        for s, (stage, losses) in enumerate(zip(stages, stage_losses + [None] * len(stages))):
            where = f'stage {s} ' if multi_stage else ''
            if losses is not None:
                bad = (~torch.isfinite(losses)).nonzero().tolist()
                if bad:
                    shown = ', '.join(f'head {self._head_name(k)} of sample {b}' for b, k in bad[:8])
                    parts.append(f'{where}non-finite MinHeadLoss per-head loss for {shown}'
                                 f'{f" and {len(bad) - 8} more" if len(bad) > 8 else ""}')
            out = stage.detach()
            if out.dim() == 5:
                bad_heads = (~torch.isfinite(out)).flatten(2).any(dim=2).any(dim=0).nonzero().flatten().tolist()
                if bad_heads:
                    parts.append(f'{where}network output not finite in head(s) '
                                 f'{", ".join(self._head_name(k) for k in bad_heads)}')
            elif not bool(torch.isfinite(out).all()):
                parts.append(f'{where}network output not finite')
        for name in ('lq', 'gt'):
            tensor = getattr(self, name, None)
            if tensor is not None and not bool(torch.isfinite(tensor).all()):
                parts.append(f'the input batch `{name}` has NaN/inf values (check the dataset)')
        return '; '.join(parts)

    def _nonfinite_step(self, current_iter, what, detail):
        """Raise :class:`NonFiniteError`, or skip this step with a warning when ``train.skip_nonfinite`` is true."""
        message = f'Non-finite {what} at iteration {current_iter}: {detail}.'
        self.optimizer_g.zero_grad()
        if not self.opt['train'].get('skip_nonfinite', False):
            raise NonFiniteError(message + ' No checkpoint of this step is written. Fix: lower train.optim_g.lr, set '
                                 'train.use_grad_clip: true, check the data, or set `train.skip_nonfinite: true` to '
                                 'skip such steps; resume with --auto_resume.')
        self.skipped_steps += 1
        get_root_logger().warning(message + f' Step skipped (train.skip_nonfinite; {self.skipped_steps} skipped so '
                                  'far).')
        self.log_dict = OrderedDict(skipped_steps=float(self.skipped_steps))

    def score_loss(self, scores, winners):
        """Binary cross-entropy of the score branch against the winners (resilient MCL, Letzelter et al. 2023).

        Args:
            scores (Tensor): (B, K', H, W) per-pixel logits.
            winners (Tensor): (B,) each sample's winning extended head (MinHeadLoss).

        Returns:
            Tensor: scalar; the per-image term (spatial-mean logits vs the one-hot winner) plus the per-pixel term
            (every pixel's logits vs the one-hot winner of its image), so the per-image score is the mean of
            per-pixel scores trained towards the same target.
        """
        target = F.one_hot(winners, scores.shape[1]).to(scores.dtype)  # (B, K')
        per_pixel = target[:, :, None, None].expand_as(scores)
        return (F.binary_cross_entropy_with_logits(image_scores(scores), target) +
                F.binary_cross_entropy_with_logits(scores, per_pixel))

    def watch_dead_heads(self, winners, current_iter):
        """Warn once when a base head has won no training sample for ``train.dead_head_iters`` iterations (default
        1000; 0 turns the warning off): it no longer learns under the hard assignment. A base head wins a sample when
        the sample's winning extended head contains it. Counts this rank's samples.

        Args:
            winners (Tensor): (B,) extended-head index of each sample of this step.
            current_iter (int): the iteration.
        """
        if self.num_heads < 2 or self.dead_head_iters <= 0:
            return
        if self._last_base_win is None:
            self._last_base_win = [current_iter - 1] * self.num_heads
            self._dead_warned = [False] * self.num_heads
        for index in set(winners.tolist()):
            for head in set(self.head_pairs[index]):
                self._last_base_win[head] = current_iter
                self._dead_warned[head] = False
        for head, last in enumerate(self._last_base_win):
            if current_iter - last >= self.dead_head_iters and not self._dead_warned[head]:
                self._dead_warned[head] = True
                get_root_logger().warning(
                    f'Base head {head} has won no training sample for {current_iter - last} iterations (since '
                    f'iteration {last}): it receives no gradient under the hard assignment. Fix: set '
                    '`assignment: relaxed` (or annealed) under train.pixel_opt, or `head_init: identity` under '
                    'network_g; train.dead_head_iters sets when this warns.')

    def base_head_shares(self, rates):
        """(K',) extended-head win rates -> (K,) base-head shares: a win of pair (i, j) counts half for i and half
        for j (all of it for i when i == j), so the shares sum to 1 and an even split is 1/K each."""
        shares = torch.zeros(self.num_heads, dtype=rates.dtype)
        for index, (i, j) in enumerate(self.head_pairs):
            shares[i] += 0.5 * float(rates[index])
            shares[j] += 0.5 * float(rates[index])
        return shares

    def head_win_rates(self, reset=True):
        """Fraction of training samples each extended head won since the last reset (reduced over ranks), (K',).

        When no sample was counted since then (a validation right after a log line), the rates of the last window
        that had samples are returned, not zeros.
        """
        counts = self._win_counts.clone()
        if self.opt.get('dist') and torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(counts)
        if reset:
            self._win_counts.zero_()
        total = counts.sum()
        if total > 0:
            self._last_win_rates = counts / total
            return self._last_win_rates.clone()
        return self._last_win_rates.clone() if self._last_win_rates is not None else counts

    def get_current_log(self):
        log = OrderedDict(self.log_dict)
        if self.num_outputs > 1:
            rates = self.head_win_rates()
            if float(rates.sum()) > 0:
                for k, rate in enumerate(rates.tolist()):
                    log[f'heads/win_h{k}'] = rate
                if self.combine:
                    for k, share in enumerate(self.base_head_shares(rates.cpu()).tolist()):
                        log[f'heads/base_h{k}'] = share
        return log

    # ------------------------------------------------------------------ inference
    def test(self):
        """Run the EMA network (else net_g) on ``self.lq``: ``self.output`` (B, [K',] C, H, W), last stage only."""
        net = self.net_g_ema if hasattr(self, 'net_g_ema') else self.net_g
        was_training = net.training
        net.eval()
        try:
            with torch.no_grad():
                self.output = self.inference(net, self.lq)
        finally:
            if was_training:
                net.train()

    def inference(self, net, lq):
        """``net`` on ``lq`` with the ``val`` options: ``grids`` tiling, ``window_size`` padding, ``max_minibatch``."""
        val_opt = self.opt.get('val') or {}
        if not val_opt.get('grids', False):
            return self._forward_padded(net, lq)
        height, width = lq.shape[-2] * self.scale, lq.shape[-1] * self.scale
        crop_h, crop_w = grid_crop_size(val_opt, (self.opt.get('datasets') or {}).get('train'), height, width,
                                        self.scale)
        tiles, offsets = split_tiles(lq, crop_h, crop_w, self.scale)
        return merge_tiles(self._forward_padded(net, tiles), offsets, lq.shape[0], height, width)

    def _forward_padded(self, net, lq):
        """Reflect-pad to a multiple of ``val.window_size`` (Restormer), run, crop back."""
        window = (self.opt.get('val') or {}).get('window_size') or 0
        height, width = lq.shape[-2:]
        pad_h, pad_w = (-height) % window if window else 0, (-width) % window if window else 0
        if pad_h or pad_w:
            lq = torch.nn.functional.pad(lq, (0, pad_w, 0, pad_h), 'reflect')
        out = self._forward_batched(net, lq)
        if pad_h or pad_w:
            out = out[..., :height * self.scale, :width * self.scale]
        return out

    def _forward_batched(self, net, lq):
        """``net`` on chunks of at most ``val.max_minibatch`` samples; the last stage of list outputs."""
        step = (self.opt.get('val') or {}).get('max_minibatch') or lq.shape[0]
        outs = []
        for start in range(0, lq.shape[0], step):
            out = self.acceleration.run(net, lq[start:start + step], self._compiled,
                                        f'{acceleration_section(self.opt)}.compile')
            outs.append(out[self.final_index] if isinstance(out, (list, tuple)) else out)
        return outs[0] if len(outs) == 1 else torch.cat(outs, dim=0)

    def heads_output(self):
        """The last output as (B, K', C, H, W) (a plain network's (B, C, H, W) becomes K' = 1)."""
        return self.output if self.output.dim() == 5 else self.output.unsqueeze(1)

    def get_current_visuals(self):
        out_dict = OrderedDict()
        out_dict['lq'] = self.lq.detach().cpu()
        out_dict['result'] = self.heads_output()[:, self.best_head].detach().cpu()
        if hasattr(self, 'gt'):
            out_dict['gt'] = self.gt.detach().cpu()
        return out_dict

    # ------------------------------------------------------------------ validation
    def validation(self, dataloader, current_iter, tb_logger, save_img=False, rgb2bgr=None, use_image=None):
        """BasicSR's validation (sharded over the ranks when distributed); ``rgb2bgr``/``use_image`` (the forks'
        extra arguments) override ``val.rgb2bgr``/``val.use_image`` (default true)."""
        flags = self.validation_flags(rgb2bgr, use_image)
        if self.opt.get('dist'):
            self._validate(*self._shard(dataloader), current_iter, tb_logger, save_img, flags)
        else:
            self._validate(dataloader.dataset, enumerate(dataloader), len(dataloader), current_iter, tb_logger,
                           save_img, flags)

    def validation_flags(self, rgb2bgr=None, use_image=None):
        """``{'rgb2bgr': bool, 'use_image': bool}``: the arguments where given, else ``val.*``, else true."""
        val_opt = self.opt.get('val') or {}
        given = {'rgb2bgr': rgb2bgr, 'use_image': use_image}
        return {name: bool(val_opt.get(name, True) if value is None else value) for name, value in given.items()}

    def head_scores(self, heads, gt, metrics_opt, flags=None):
        """``{name: (B, K')}`` for the ``val.metrics`` entries; ``flags`` (:meth:`validation_flags`, default the
        ``val`` options) set ``rgb2bgr`` and ``use_image``.

        ``rgb2bgr: false`` evaluates the RGB images as BGR ones (as the forks' ``tensor2img(rgb2bgr=False)``; it
        matters for ``test_y_channel``). ``use_image: false`` computes ``calculate_psnr`` without ``test_y_channel`` on
        the float outputs (peak 1) instead of the uint8 images; other metrics stay on uint8 images.
        """
        flags = flags or self.validation_flags()
        if not flags['rgb2bgr'] and heads.shape[-3] == 3:
            heads, gt = heads.flip(-3), gt.flip(-3)
        use_image = flags['use_image']
        scores, on_images = {}, {}
        for name, metric_opt in metrics_opt.items():
            if not use_image and metric_opt.get('type') == 'calculate_psnr' and not metric_opt.get('test_y_channel'):
                scores[name] = float_psnr_per_head(heads, gt, metric_opt.get('crop_border', 0))
            else:
                on_images[name] = metric_opt
        scores.update(per_head_many(heads, gt, on_images))  # a PSNR and an SSIM entry share one pass
        return {name: scores[name] for name in metrics_opt}

    def _named_head_scores(self, heads, metrics_opt, flags, dataset_name, val_data):
        """:meth:`head_scores` on ``self.gt``; a metric that fails raises a RuntimeError naming the metric, the dataset
        and the image (a metric inside BasicSR, e.g. NIQE on a small image, fails with no such context)."""
        try:
            return self.head_scores(heads, self.gt, metrics_opt, flags)
        except Exception as err:  # noqa: BLE001  (re-raised with the context below)
            failing = next(iter(metrics_opt))
            for name in metrics_opt:  # which one: each alone
                try:
                    self.head_scores(heads, self.gt, {name: metrics_opt[name]}, flags)
                except Exception:  # noqa: BLE001
                    failing = name
                    break
            image = (val_data.get('lq_path') or ['?'])[0]
            raise RuntimeError(f'val.metrics.{failing} ({metrics_opt[failing].get("type")}) failed on dataset '
                               f'{dataset_name}, image {image}: {type(err).__name__}: {err}. Fix: check that metric\'s '
                               'options, or remove it from val.metrics for this dataset.') from err

    def _shard(self, dataloader):
        """(dataset, this rank's batches (indices rank::world_size), their count): the sums are reduced afterwards,
        so all ranks agree."""
        dataset = dataloader.dataset
        rank, world = self.opt['rank'], self.opt['world_size']
        batches = ((idx, default_collate([dataset[idx]])) for idx in range(rank, len(dataset), world))
        return dataset, batches, math.ceil(len(dataset) / world)

    def dist_validation(self, dataloader, current_iter, tb_logger, save_img):
        """BasicSR's entry point: :meth:`validation` when distributed."""
        self._validate(*self._shard(dataloader), current_iter, tb_logger, save_img, self.validation_flags())

    def nondist_validation(self, dataloader, current_iter, tb_logger, save_img):
        """BasicSR's entry point: :meth:`validation` in one process."""
        self._validate(dataloader.dataset, enumerate(dataloader), len(dataloader), current_iter, tb_logger, save_img,
                       self.validation_flags())

    def _validate(self, dataset, batches, num_batches, current_iter, tb_logger, save_img, flags):
        dataset_name = dataset.opt['name']
        val_opt = self.opt['val']
        metrics_opt = val_opt.get('metrics') or {}
        with_metrics = bool(metrics_opt)
        if with_metrics:
            self._initialize_best_metric_results(dataset_name)
        accumulator = HeadMetricAccumulator(metrics_opt, self.num_outputs)
        save_all = val_opt.get('save_all_heads', False)
        first_metric = next(iter(metrics_opt), None)
        pbar = tqdm(total=num_batches, unit='image') if val_opt.get('pbar', False) and self.opt['rank'] == 0 else None
        for _, val_data in batches:
            self.feed_data(val_data, is_val=True)
            self.test()
            heads = self.heads_output()
            scores = {}
            if with_metrics and hasattr(self, 'gt'):
                scores = self._named_head_scores(heads, metrics_opt, flags, dataset_name, val_data)
                accumulator.add(scores)
            if save_img:
                self._save_images(val_data, heads, scores.get(first_metric), metrics_opt.get(first_metric), save_all,
                                  dataset_name, current_iter, flags['rgb2bgr'])
            del self.lq, self.output
            if hasattr(self, 'gt'):
                del self.gt
            if pbar is not None:
                pbar.update(1)
        if pbar is not None:
            pbar.close()
        if with_metrics:
            if self.opt.get('dist'):
                accumulator.all_reduce(self.device)
            if accumulator.count == 0:
                get_root_logger().warning(f'Validation {dataset_name}: no image had a ground truth; no metrics.')
                return
            self.metric_results = accumulator.results()
            self.best_head = accumulator.best_head(first_metric)
            for name in metrics_opt:
                self._update_best_metric_result(dataset_name, name, self.metric_results[name], current_iter)
            self._log_validation_metric_values(current_iter, dataset_name, tb_logger)

    def _save_images(self, val_data, heads, first_scores, first_opt, save_all, dataset_name, current_iter, rgb2bgr):
        """Save each image's best head (per-image best by the first metric; the recorded best head without GT)."""
        higher = (first_opt or {}).get('better', 'higher') == 'higher'
        for b in range(heads.shape[0]):
            img_name = osp.splitext(osp.basename(val_data['lq_path'][b]))[0]
            if first_scores is not None:
                row = first_scores[b]
                best = int(torch.argmax(row) if higher else torch.argmin(row))
            else:
                best = self.best_head
            picks = range(heads.shape[1]) if save_all else [best]
            for k in picks:
                suffix = '' if not save_all else f'_h{k}'
                image = tensor2img(heads[b, k].detach().cpu(), rgb2bgr=rgb2bgr)
                imwrite(image, self._image_path(dataset_name, img_name, current_iter, suffix))

    def _image_path(self, dataset_name, img_name, current_iter, suffix):
        vis = self.opt['path']['visualization']
        if self.opt['is_train']:
            return osp.join(vis, img_name, f'{img_name}_{current_iter}{suffix}.png')
        tag = self.opt['val'].get('suffix') or self.opt['name']
        return osp.join(vis, dataset_name, f'{img_name}_{tag}{suffix}.png')

    def _log_validation_metric_values(self, current_iter, dataset_name, tb_logger):
        lines = [f'Validation {dataset_name}']
        best = getattr(self, 'best_metric_results', {}).get(dataset_name, {})
        for metric, value in self.metric_results.items():
            line = f'\t # {metric}: {value:.4f}'
            if metric in best:
                line += f'\tBest: {best[metric]["val"]:.4f} @ {best[metric]["iter"]} iter'
            if metric == 'best_head' and self.num_outputs > 1:
                line += f'\t({head_pair_name(int(value), self.num_heads, self.combine)})'
            lines.append(line)
        get_root_logger().info('\n'.join(lines) + '\n')
        if tb_logger:
            for metric, value in self.metric_results.items():
                tb_logger.add_scalar(f'metrics/{dataset_name}/{metric}', value, current_iter)

    # ------------------------------------------------------------------ checkpoints
    def multihead_meta(self):
        """What a checkpoint records besides the weights: head count, combine, best head, backbone."""
        bare = self.get_bare_model(self.net_g)
        return {
            'num_heads': self.num_heads,
            'combine': self.combine,
            'num_outputs': self.num_outputs,
            'best_head': int(self.best_head),
            'backbone': getattr(bare, 'backbone_type',
                                type(bare).__name__),
            'head_layers': list(getattr(bare, 'head_layer_names', [])),
        }

    def save_network(self, net, net_label, current_iter, param_key='params'):
        """BasicSR's layout (``params``/``params_ema``) plus a ``multihead`` entry, written atomically.

        Refuses (:class:`NonFiniteError`, on every rank) to write parameters with NaN/inf values.
        """
        label = 'latest' if current_iter == -1 else current_iter
        save_path = os.path.join(self.opt['path']['models'], f'{net_label}_{label}.pth')
        nets = net if isinstance(net, list) else [net]
        keys = param_key if isinstance(param_key, list) else [param_key]
        save_dict = {}
        for net_, key in zip(nets, keys):
            state = self.get_bare_model(net_).state_dict()  # the module, never its compiled form: same keys
            save_dict[key] = OrderedDict(
                (k, v.detach().cpu().contiguous()) for k, v in strip_module_prefix(state).items())
            check_finite_state(save_dict[key], f'{save_path} ({key})')
        if self.opt['rank'] != 0:
            return
        save_dict[MULTIHEAD_META_KEY] = self.multihead_meta()
        atomic_torch_save(save_dict, save_path)

    def save_training_state(self, epoch, current_iter):
        """Optimizers, schedulers, head statistics and every rank's RNG states, written atomically (by rank 0) as
        tensors, numbers, strings and plain containers only, so that ``torch.load(weights_only=True)`` reads it.

        ``training_state_extras`` (set by the training loop: the position in the epoch) is added.
        """
        if current_iter == -1:
            return
        rng = [get_rng_state()]
        if self.opt.get('dist') and torch.distributed.is_available() and torch.distributed.is_initialized():
            rng = [None] * self.opt['world_size']
            torch.distributed.all_gather_object(rng, get_rng_state())
        if self.opt['rank'] != 0:
            return
        state = {
            'epoch': epoch,
            'iter': current_iter,
            'optimizers': [o.state_dict() for o in self.optimizers],
            'schedulers': [s.state_dict() for s in self.schedulers],
            'best_head': int(self.best_head),
            'win_counts': self._win_counts.detach().cpu(),
            'skipped_steps': int(self.skipped_steps),
            'rng': rng,
        }
        if self.grad_scaler is not None:
            state['grad_scaler'] = self.grad_scaler.state_dict()
        state.update(self.training_state_extras)
        if hasattr(self, 'best_metric_results'):
            state['best_metric_results'] = {
                dataset: {
                    metric: {
                        'better': str(record['better']),
                        'val': float(record['val']),
                        'iter': int(record['iter'])
                    }
                    for metric, record in records.items()
                }
                for dataset, records in self.best_metric_results.items()
            }
        atomic_torch_save(state, os.path.join(self.opt['path']['training_states'], f'{current_iter}.state'))

    def resume_training(self, resume_state):
        super().resume_training(resume_state)
        self.best_head = int(resume_state.get('best_head', 0))
        if 'win_counts' in resume_state and resume_state['win_counts'].numel() == self.num_outputs:
            self._win_counts.copy_(resume_state['win_counts'].to(self._win_counts))
        if 'best_metric_results' in resume_state:
            self.best_metric_results = resume_state['best_metric_results']
        self.skipped_steps = int(resume_state.get('skipped_steps', 0))
        if self.grad_scaler is not None and 'grad_scaler' in resume_state:
            self.grad_scaler.load_state_dict(resume_state['grad_scaler'])
