"""MinHeadLoss: the multi-head loss of the paper (Eq. 4 and 5) over any registered pixel loss."""
import torch
from basicsr.utils import get_root_logger
from basicsr.utils.registry import LOSS_REGISTRY
from copy import deepcopy
from torch import nn
from typing import NamedTuple, Optional

from ..heads import registered

_REDUCTIONS = ('mean', 'sum')


def build_inner_loss(loss_opt, where='MinHeadLoss.loss'):
    """Build a pixel loss from its option dict through BasicSR's LOSS_REGISTRY, with a clear error."""
    if isinstance(loss_opt, nn.Module):
        return loss_opt
    if not isinstance(loss_opt, dict) or 'type' not in loss_opt:
        raise ValueError(f'{where} must be a loss option dict like `{{type: PSNRLoss, loss_weight: 1}}`, got '
                         f'{loss_opt!r}.')
    opt = deepcopy(loss_opt)
    loss_type = opt.pop('type')
    if loss_type == 'MinHeadLoss':
        raise ValueError(f'{where}: MinHeadLoss cannot wrap another MinHeadLoss. Fix: give the pixel loss itself.')
    loss_class = registered(LOSS_REGISTRY, loss_type, f'{where}.type', 'loss')
    try:
        return loss_class(**opt)
    except TypeError as err:
        raise ValueError(f'{where}: cannot build {loss_type} with {opt}: {err}') from err


ASSIGNMENTS = ('hard', 'relaxed', 'annealed')
#: MinHeadLoss's own keys, which may stand next to a plain loss's under ``train.pixel_opt`` (the short form).
ASSIGNMENT_KEYS = ('assignment', 'epsilon', 'temperature', 'anneal_iters')


def _check_number(value, name, low, high=None):
    if isinstance(value, bool) or not isinstance(value,
                                                 (int, float)) or value < low or (high is not None and value > high):
        bound = f'in [{low}, {high}]' if high is not None else f'>= {low}'
        raise ValueError(f'train.pixel_opt.{name} must be a number {bound}, got {value!r}.')
    return float(value)


def check_assignment_options(assignment='annealed', epsilon=0.05, temperature=1.0, anneal_iters=1000):
    """Validate MinHeadLoss's assignment keys; returns ``(assignment, epsilon, temperature, anneal_iters)``.

    Raises:
        ValueError: naming the ``train.pixel_opt`` key and the allowed values.
    """
    if assignment not in ASSIGNMENTS:
        raise ValueError(f'train.pixel_opt.assignment must be one of {", ".join(ASSIGNMENTS)}, got {assignment!r}. '
                         'Fix: `assignment: hard` (the paper), `relaxed` or `annealed`.')
    return (assignment, _check_number(epsilon, 'epsilon', 0.0,
                                      0.999), _check_number(temperature, 'temperature',
                                                            0.0), int(_check_number(anneal_iters, 'anneal_iters', 0)))


def assignment_weights(losses, assignment='hard', epsilon=0.05, temperature=0.0):
    """How much each head of each sample is trained: (B, K') per-head losses -> (B, K') weights, rows summing to 1.

    * ``hard`` (the paper, Eq. 4-5): 1 for the head with the smallest loss, 0 elsewhere.
    * ``relaxed`` (Rupprecht et al., ICCV 2017): ``1 - epsilon`` for the winner, ``epsilon / (K' - 1)`` for every
      other head; ``epsilon = 0`` is ``hard``.
    * ``annealed`` (annealed MCL, Perera et al., NeurIPS 2024): ``softmin(L / (temperature * gap))`` where ``gap``
      is the sample's mean distance of the head losses to the smallest one (so ``temperature`` is free of the loss's
      units); ``temperature = 0`` is ``hard``.

    Ties go to the lowest index, as ``argmin``. Computed without gradient.
    """
    with torch.no_grad():
        winners = losses.argmin(dim=1)
        hard = torch.zeros_like(losses).scatter_(1, winners.unsqueeze(1), 1.0)
        k = losses.shape[1]
        if assignment == 'hard' or k == 1:
            return hard
        if assignment == 'relaxed':
            if epsilon == 0:
                return hard
            return hard * (1.0 - epsilon) + (1.0 - hard) * (epsilon / (k - 1))
        if assignment == 'annealed':
            if temperature <= 0:
                return hard
            excess = losses - losses.min(dim=1, keepdim=True).values
            gap = excess.sum(dim=1, keepdim=True) / (k - 1)
            scaled = excess / (temperature * gap.clamp_min(torch.finfo(losses.dtype).tiny))
            return torch.softmax(-scaled, dim=1)
        raise ValueError(f'assignment {assignment!r} is not one of {ASSIGNMENTS}.')


class MinHeadResult(NamedTuple):
    """What :meth:`MinHeadLoss.assign` gives the training step.

    Attributes:
        loss (Tensor): the scalar loss (``loss_weight`` applied), with gradient.
        winners (Tensor | None): (B,) each sample's extended head with the smallest loss; None for a 4-D ``pred``.
        losses (Tensor | None): (B, K') the per-head losses, without gradient; None for a 4-D ``pred``.
    """
    loss: torch.Tensor
    winners: Optional[torch.Tensor] = None
    losses: Optional[torch.Tensor] = None


#: Elements of ``pred`` per batched :meth:`MinHeadLoss.per_sample` call of the no-grad per-head losses (16 M floats,
#: 64 MB): large enough for few kernel launches on a GPU, small enough that the CPU's temporaries stay in cache-sized
#: pieces instead of K' full images.
HEAD_CHUNK_ELEMENTS = 1 << 24


@LOSS_REGISTRY.register()
class MinHeadLoss(nn.Module):
    """Each sample back-propagates only through the head with the smallest loss (the paper's Eq. 4-5), or, with
    ``assignment: relaxed | annealed``, through every head with the weights of :func:`assignment_weights`.

    For sample ``b`` and (extended) head ``k`` the inner loss ``L[b, k]`` is computed; the winner
    ``k_b = argmin_k L[b, k]`` is chosen without gradient, and the loss is the mean over samples of
    ``L[b, k_b]``, so the other heads get exactly zero gradient from that sample. ``MinHeadLoss(PSNRLoss)`` equals
    the reference ``MultiHeadPSNRLoss``. Only the winners' images enter the autograd graph, so memory does not grow
    with the number of heads. With ``relaxed``/``annealed`` the loss is the mean over samples of
    ``sum_k w[b, k] L[b, k]`` (every head in the graph); head ``k`` gets exactly ``w[b, k]`` of sample ``b``'s
    gradient.

    Args:
        loss (dict | nn.Module): the inner pixel loss (any BasicSR-registered loss: L1Loss, MSELoss,
            CharbonnierLoss, PSNRLoss, ...), with its own ``loss_weight``.
        loss_weight (float): an extra multiplier. Default 1.
        assignment (str): ``annealed`` (default: it keeps every head alive and gave the best heads and the best mean
            of the heads in ``benchmarks/results/heads_small.md``), ``hard`` (the paper) or ``relaxed``. Without an
            iteration (``current_iter`` None) ``annealed`` is ``hard``, so the loss equals the reference code's.
        epsilon (float): ``relaxed``: the share of the non-winning heads, in [0, 1). Default 0.05.
        temperature (float): ``annealed``: the starting temperature (in units of the per-sample mean loss gap to
            the winner). Default 1.
        anneal_iters (int): ``annealed``: the temperature falls linearly from ``temperature`` to 0 over these
            iterations, pure winner-takes-all after. Default 1000; the training model passes half of
            ``train.total_iter`` unless the option file sets it.

    Forward: ``pred`` (B, K', C, H, W), ``target`` (B, C, H, W) and ``current_iter`` (int, for ``annealed``) ->
    scalar. A 4-D ``pred`` (a plain single-head output) is passed to the inner loss unchanged. :meth:`assign` gives
    the same loss with each sample's winner and the per-head losses (a :class:`MinHeadResult`).
    """

    def __init__(self,
                 loss=None,
                 loss_weight=1.0,
                 reduction='mean',
                 assignment='annealed',
                 epsilon=0.05,
                 temperature=1.0,
                 anneal_iters=1000):
        super().__init__()
        if loss is None:
            raise ValueError('MinHeadLoss needs `loss: {type: <pixel loss>, ...}` (e.g. PSNRLoss, L1Loss).')
        self.assignment, self.epsilon, self.temperature, self.anneal_iters = check_assignment_options(
            assignment, epsilon, temperature, anneal_iters)
        self.inner = build_inner_loss(loss)
        self.loss_weight = loss_weight
        inner_reduction = getattr(self.inner, 'reduction', 'mean')
        if inner_reduction not in _REDUCTIONS:
            raise ValueError(f'MinHeadLoss: the inner loss reduction must be one of {_REDUCTIONS}, got '
                             f'{inner_reduction!r}.')
        self.batch_reduction = inner_reduction
        self._elementwise = None
        if not hasattr(self.inner, 'per_sample') and hasattr(self.inner, 'reduction'):
            self._elementwise = deepcopy(self.inner)
            self._elementwise.reduction = 'none'

    def temperature_at(self, current_iter):
        """The annealing temperature at iteration ``current_iter`` (linear from ``temperature`` to 0; 0 without an
        iteration or after ``anneal_iters``)."""
        if current_iter is None or self.anneal_iters <= 0 or current_iter >= self.anneal_iters:
            return 0.0
        return self.temperature * (1.0 - max(int(current_iter) - 1, 0) / self.anneal_iters)

    def per_sample(self, pred, target):
        """Inner loss of each sample: (N, C, H, W), (N, C, H, W) -> (N,)."""
        if hasattr(self.inner, 'per_sample'):
            return self.inner.per_sample(pred, target)
        if self._elementwise is not None:
            elementwise = self._elementwise(pred, target)
            if elementwise.shape == pred.shape:
                reduce = elementwise.mean if self.batch_reduction == 'mean' else elementwise.sum
                return reduce(dim=tuple(range(1, elementwise.dim())))
        return torch.stack([self.inner(pred[n:n + 1], target[n:n + 1]) for n in range(pred.shape[0])])

    def per_head_losses(self, pred, target):
        """Inner loss of every sample and head: (B, K', C, H, W), (B, C, H, W) -> (B, K').

        An inner loss with a ``per_head`` method (:class:`PSNRLoss`) computes it itself. Otherwise batched calls of
        :meth:`per_sample` over a few heads at a time (at most :data:`HEAD_CHUNK_ELEMENTS` elements of ``pred`` per
        call, at least one head): few kernel launches, and neither ``target`` copied K' times nor K' full images of
        temporaries at once on large inputs. A loss without a per-sample form (computed sample by sample anyway) goes
        head by head.
        """
        b, k = pred.shape[:2]
        if hasattr(self.inner, 'per_head'):  # PSNRLoss: broadcast over the heads, no copies of the target
            return self.inner.per_head(pred, target)
        batched = hasattr(self.inner, 'per_sample') or self._elementwise is not None
        step = max(1, HEAD_CHUNK_ELEMENTS // max(1, pred[:, 0].numel())) if batched else 1
        columns = []
        for start in range(0, k, step):
            n = min(step, k - start)
            if n == 1:
                columns.append(self.per_sample(pred[:, start], target).unsqueeze(1))
                continue
            chunk = pred[:, start:start + n]
            flat_target = target.unsqueeze(1).expand_as(chunk).reshape(b * n, *target.shape[1:])
            columns.append(self.per_sample(chunk.reshape(b * n, *pred.shape[2:]), flat_target).view(b, n))
        return columns[0] if len(columns) == 1 else torch.cat(columns, dim=1)

    def weights(self, losses, current_iter=None):
        """(B, K') per-head losses -> (B, K') assignment weights at ``current_iter`` (:func:`assignment_weights`)."""
        return assignment_weights(losses, self.assignment, self.epsilon, self.temperature_at(current_iter))

    def forward(self, pred, target, current_iter=None, **kwargs):
        """(B, K', C, H, W), (B, C, H, W) -> scalar; 4-D ``pred`` -> the inner loss. See :meth:`assign`."""
        return self.assign(pred, target, current_iter).loss

    def assign(self, pred, target, current_iter=None):
        """The loss with what the training step needs: :class:`MinHeadResult` ``(loss, winners (B,), losses (B, K'))``.

        ``pred`` (B, K', C, H, W) and ``target`` (B, C, H, W); a 4-D ``pred`` gives the inner loss with no winners.
        With the hard assignment the per-head losses are computed without gradient and only the winners' images are
        passed to the inner loss again (with gradient), so the other heads get exactly zero gradient.
        """
        if pred.dim() == 4:
            return MinHeadResult(self.loss_weight * self.inner(pred, target))
        if pred.dim() != 5 or pred.shape[0] != target.shape[0] or pred.shape[2:] != target.shape[1:]:
            raise ValueError(f'MinHeadLoss: pred must be (B, K, C, H, W) matching target (B, C, H, W); got '
                             f'{tuple(pred.shape)} and {tuple(target.shape)}.')
        soft = self.assignment != 'hard' and pred.shape[1] > 1 and (self.assignment == 'relaxed' and self.epsilon > 0
                                                                    or self.temperature_at(current_iter) > 0)
        if soft:
            losses = self.per_head_losses(pred, target)
            weights = self.weights(losses.detach(), current_iter)
            values = (weights * losses).sum(dim=1)
            losses = losses.detach()
            winners = losses.argmin(dim=1)
        else:
            with torch.no_grad():
                losses = self.per_head_losses(pred, target)
                winners = losses.argmin(dim=1)
            chosen = pred[torch.arange(pred.shape[0], device=pred.device), winners]
            values = self.per_sample(chosen, target)
        total = values.mean() if self.batch_reduction == 'mean' else values.sum()
        return MinHeadResult(self.loss_weight * total, winners, losses)


def log_loss_upgrade(loss_type, loss):
    """Log the one line that says a plain pixel loss was wrapped into MinHeadLoss ``loss``, and how it assigns."""
    how = {
        'hard':
        'each sample trains only its nearest head',
        'relaxed':
        f'the nearest head gets 1 - {loss.epsilon:g} of each sample, the others share {loss.epsilon:g}',
        'annealed':
        f'every head learns, the nearer the more, until iteration {loss.anneal_iters}; the nearest '
        'head only after',
    }[loss.assignment]
    get_root_logger().info(f'basicsr-mh: pixel loss {loss_type} wrapped in MinHeadLoss (assignment: '
                           f'{loss.assignment}: {how}).')
