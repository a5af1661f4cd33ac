"""The non-finite guard of a training step: find which loss, head, sample or input went NaN/inf, then stop (or skip).

:class:`NonFiniteGuard` is a mixin of :class:`~basicsr_mh.models.multihead_model.MultiHeadImageRestorationModel`:
``optimize_parameters`` asks :meth:`~NonFiniteGuard._finite_on_all_ranks` before ``backward()`` and checks the
gradients after it; a non-finite value raises :class:`~basicsr_mh.models.checkpoint.NonFiniteError` naming the
iteration and the culprits, or skips the step with a warning when ``train.skip_nonfinite`` is true (counted in
``skipped_steps``). In distributed training all ranks take the same decision.
"""
import torch
from basicsr.utils import get_root_logger
from collections import OrderedDict

from ..heads import head_pair_name
from .checkpoint import NonFiniteError


class NonFiniteGuard:
    """Mixin: the decisions and messages about non-finite losses and gradients (see the module docstring).

    Uses the model's ``opt``, ``device``, ``optimizer_g``, ``num_heads``/``combine``/``num_outputs``, ``lq``/``gt``
    and counts ``skipped_steps``.
    """

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
