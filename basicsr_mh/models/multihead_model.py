"""MultiHeadImageRestorationModel: train K heads with the min-head loss and validate every head (Eq. 7a/7b)."""
import os
import torch
import torch.nn.functional as F
from basicsr.losses import build_loss
from basicsr.models.sr_model import SRModel
from basicsr.utils import get_root_logger
from basicsr.utils.registry import MODEL_REGISTRY
from collections import OrderedDict
from copy import deepcopy
from torch.nn.parallel import DataParallel, DistributedDataParallel

from ..acceleration import Acceleration
from ..archs.multihead_arch import MultiHeadArch
from ..archs.multihead_layers import image_scores
from ..heads import MULTIHEAD_META_KEY, strip_module_prefix
from ..inference import GridTiling, InferenceRunner
from ..losses.min_head_loss import ASSIGNMENT_KEYS, MinHeadLoss, MinHeadResult, log_loss_upgrade
from ..options import acceleration_section, check_score_weight
from .checkpoint import (atomic_torch_save, check_finite_state, checkpoint_trust, get_rng_state, network_state,
                         read_checkpoint)
from .lr_scheduler import build_scheduler
from .nonfinite import NonFiniteGuard
from .train_augment import MixingAugment, ProgressiveTraining
from .validation import HeadValidation


@MODEL_REGISTRY.register()
class MultiHeadImageRestorationModel(HeadValidation, NonFiniteGuard, SRModel):
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
        """``opt``: options upgraded by :func:`basicsr_mh.options.upgrade_options` (our CLI and BasicSR's
        ``build_model``, hooked by ``import basicsr_mh``, do it first)."""
        self.scale = int(opt.get('scale', 1))
        self.best_head = 0
        self._win_counts = None
        self.progressive = None
        self.mixing = None
        self._progressive_stage = None
        self.final_index = -1
        #: Steps skipped for a non-finite loss or gradient (``train.skip_nonfinite: true``).
        self.skipped_steps = 0
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
            # a copy of net_g, not a second build (a build runs the backbone to measure the heads' start)
            self.net_g_ema = self.acceleration.prepare_network(
                deepcopy(self.get_bare_model(self.net_g)).to(self.device))
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
        state, used = network_state(checkpoint, param_key, where=load_path)
        if param_key is not None and used != param_key:
            logger.info(f'Loading: {param_key} does not exist in {load_path}, use {used}.')
        param_key = used
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
        grads = [] if self.grad_scaler is not None else [p.grad for p in self.net_g.parameters() if p.grad is not None]
        if grads and not bool(torch.stack([torch.isfinite(g).all() for g in grads]).all()):
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
        """``net`` on ``lq`` (B, C, h, w) with the ``val`` options (``grids`` tiling, ``window_size`` padding,
        ``max_minibatch``) through the one :class:`~basicsr_mh.inference.InferenceRunner`: the final stage's heads
        (B, K', C, H, W), or (B, C, H, W) for a plain network."""
        val_opt = self.opt.get('val') or {}
        tiling = GridTiling(val_opt, (self.opt.get('datasets') or {}).get('train'), self.scale) if val_opt.get(
            'grids', False) else None
        runner = InferenceRunner(
            net,
            val_opt.get('window_size'),
            tiling=tiling,
            max_minibatch=val_opt.get('max_minibatch'),
            acceleration=self.acceleration,
            compiled=self._compiled,
            where=f'{acceleration_section(self.opt)}.compile')
        heads = runner(lq)
        return heads if isinstance(self.get_bare_model(net), MultiHeadArch) else heads[:, 0]

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

    def save(self, epoch, current_iter, extras=None):
        """BasicSR's ``save``: ``net_g`` (and ``net_g_ema``) and the training state; ``extras`` (a dict of numbers:
        the training loop's position in the epoch) go into the training state."""
        if hasattr(self, 'net_g_ema'):
            self.save_network([self.net_g, self.net_g_ema], 'net_g', current_iter, param_key=['params', 'params_ema'])
        else:
            self.save_network(self.net_g, 'net_g', current_iter)
        self.save_training_state(epoch, current_iter, extras)

    def save_training_state(self, epoch, current_iter, extras=None):
        """Optimizers, schedulers, head statistics and every rank's RNG states, written atomically (by rank 0) as
        tensors, numbers, strings and plain containers only, so that ``torch.load(weights_only=True)`` reads it.
        ``extras`` (from :meth:`save`) are added.
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
        state.update(extras or {})
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
