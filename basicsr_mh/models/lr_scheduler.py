"""Learning-rate schedulers named by NAFNet/HINet and Restormer option files, and a builder for all known ones.

BasicSR 1.4.2's ``setup_schedulers`` knows only ``MultiStepLR``/``MultiStepRestartLR`` and
``CosineAnnealingRestartLR`` and raises for anything else. :func:`build_scheduler` builds those (and any other
scheduler class a newer BasicSR defines in ``basicsr.models.lr_scheduler``) plus:

* ``TrueCosineAnnealingLR`` (NAFNet/HINet/Restormer forks): torch's ``CosineAnnealingLR``,
  ``lr(t) = eta_min + (base_lr - eta_min) * (1 + cos(pi * t / T_max)) / 2``.
* ``CosineAnnealingRestartCyclicLR`` (Restormer): cosine cycles of lengths ``periods``, cycle ``i`` annealing from
  ``restart_weights[i] * base_lr`` towards its own floor ``eta_mins[i]``.
* ``LinearLR`` (NAFNet fork): ``lr(t) = base_lr * (1 - t / total_iter)``; ``total_iter`` defaults to
  ``train.total_iter`` as in the fork (this is not torch's ``LinearLR``).

``t`` is the scheduler's step count: the model steps every scheduler once per iteration from iteration 2 on
(BasicSR's ``update_learning_rate``), so iteration ``i`` trains with ``lr(i - 1)``.
"""
import inspect
import math
from torch.optim import lr_scheduler as torch_lr_scheduler

try:
    _BaseScheduler = torch_lr_scheduler.LRScheduler
except AttributeError:  # torch < 2.0
    _BaseScheduler = torch_lr_scheduler._LRScheduler

__all__ = [
    'TrueCosineAnnealingLR', 'CosineAnnealingRestartCyclicLR', 'LinearLR', 'build_scheduler', 'known_scheduler_types'
]


class TrueCosineAnnealingLR(torch_lr_scheduler.CosineAnnealingLR):
    """Plain cosine annealing over ``T_max`` steps (the forks' name for torch's ``CosineAnnealingLR``).

    Args:
        optimizer (torch.optim.Optimizer): the optimizer.
        T_max (int): steps from ``base_lr`` down to ``eta_min``.
        eta_min (float): the floor. Default: 0.
        last_epoch (int): index of the last step (-1: start). Default: -1.

    At step ``t``: ``eta_min + (base_lr - eta_min) * (1 + cos(pi * t / T_max)) / 2``.
    """

    def __init__(self, optimizer, T_max, eta_min=0, last_epoch=-1):  # noqa: N803 (option-file key)
        if not isinstance(T_max, (int, float)) or isinstance(T_max, bool) or T_max <= 0:
            raise ValueError(f'train.scheduler.T_max must be a positive number of iterations, got {T_max!r}.')
        super().__init__(optimizer, T_max=T_max, eta_min=eta_min, last_epoch=last_epoch)


def _check_lengths(periods, named):
    if not periods or any(not isinstance(p, (int, float)) or isinstance(p, bool) or p <= 0 for p in periods):
        raise ValueError(f'train.scheduler.periods must be a non-empty list of positive iteration counts, got '
                         f'{periods!r}.')
    for key, values in named.items():
        if len(values) != len(periods):
            raise ValueError(f'train.scheduler.{key} has {len(values)} entries but periods has {len(periods)}. Fix: '
                             f'give one {key} entry per period.')


class CosineAnnealingRestartCyclicLR(_BaseScheduler):
    """Restormer's cosine annealing with restarts, each cycle with its own floor.

    Args:
        optimizer (torch.optim.Optimizer): the optimizer.
        periods (list[int]): length of each cycle in steps.
        restart_weights (list[float]): the cycle's peak as a fraction of ``base_lr``. Default: (1,).
        eta_mins (list[float]): the cycle's floor. Default: (0,).
        last_epoch (int): index of the last step (-1: start). Default: -1.

    With ``c_i`` the cumulative periods and cycle ``i`` the first with ``t <= c_i`` (``r = c_{i-1}``, 0 for the
    first): ``lr(t) = eta_mins[i] + restart_weights[i] * (base_lr - eta_mins[i]) * (1 + cos(pi (t - r) / periods[i]))
    / 2``. Restormer's GoPro file uses ``periods: [92000, 208000]``, ``eta_mins: [3e-4, 1e-6]``: a constant 3e-4,
    then a cosine down to 1e-6. Past the last cycle the rate stays at the last floor (the fork fails there).
    """

    def __init__(self, optimizer, periods, restart_weights=(1, ), eta_mins=(0, ), last_epoch=-1):
        periods, restart_weights, eta_mins = list(periods), list(restart_weights), list(eta_mins)
        _check_lengths(periods, {'restart_weights': restart_weights, 'eta_mins': eta_mins})
        self.periods = periods
        self.restart_weights = restart_weights
        self.eta_mins = eta_mins
        self.cumulative_period = [sum(periods[:i + 1]) for i in range(len(periods))]
        super().__init__(optimizer, last_epoch)

    def get_lr(self):
        t = self.last_epoch
        idx = next((i for i, c in enumerate(self.cumulative_period) if t <= c), len(self.periods) - 1)
        restart = 0 if idx == 0 else self.cumulative_period[idx - 1]
        progress = min(t - restart, self.periods[idx]) / self.periods[idx]
        weight, eta_min = self.restart_weights[idx], self.eta_mins[idx]
        return [
            eta_min + weight * 0.5 * (base_lr - eta_min) * (1 + math.cos(math.pi * progress))
            for base_lr in self.base_lrs
        ]


class LinearLR(_BaseScheduler):
    """NAFNet fork's linear decay to zero: ``lr(t) = base_lr * (1 - t / total_iter)``.

    Args:
        optimizer (torch.optim.Optimizer): the optimizer.
        total_iter (int): steps to reach zero (the fork passes ``train.total_iter``; so does the builder when the
            scheduler section does not name it).
        last_epoch (int): index of the last step (-1: start). Default: -1.

    Not torch's ``LinearLR`` (whose arguments are ``start_factor``/``end_factor``/``total_iters``).
    """

    def __init__(self, optimizer, total_iter, last_epoch=-1):
        if not isinstance(total_iter, (int, float)) or isinstance(total_iter, bool) or total_iter <= 0:
            raise ValueError(f'LinearLR needs a positive total_iter (train.scheduler.total_iter or train.total_iter), '
                             f'got {total_iter!r}.')
        self.total_iter = total_iter
        super().__init__(optimizer, last_epoch)

    def get_lr(self):
        weight = 1 - self.last_epoch / self.total_iter
        return [weight * base_lr for base_lr in self.base_lrs]


_OURS = {
    'TrueCosineAnnealingLR': TrueCosineAnnealingLR,
    'CosineAnnealingRestartCyclicLR': CosineAnnealingRestartCyclicLR,
    'LinearLR': LinearLR,
}


def _basicsr_schedulers():
    """BasicSR's own scheduler classes by name (``MultiStepLR`` is its alias of ``MultiStepRestartLR``)."""
    from basicsr.models import lr_scheduler as basicsr_lr_scheduler

    found = {
        name: obj
        for name, obj in vars(basicsr_lr_scheduler).items()
        if inspect.isclass(obj) and issubclass(obj, _BaseScheduler) and obj.__module__ == basicsr_lr_scheduler.__name__
    }
    if 'MultiStepRestartLR' in found:
        found.setdefault('MultiStepLR', found['MultiStepRestartLR'])
    return found


def known_scheduler_types():
    """Sorted names accepted as ``train.scheduler.type``."""
    return sorted(set(_basicsr_schedulers()) | set(_OURS))


def build_scheduler(optimizer, scheduler_opt, total_iter=None):
    """Build one scheduler for ``optimizer`` from a ``train.scheduler`` section (not modified).

    Args:
        optimizer (torch.optim.Optimizer): the optimizer to schedule.
        scheduler_opt (dict): ``{type: <name>, **kwargs}``; see :func:`known_scheduler_types`.
        total_iter (int | None): ``train.total_iter``, the default ``total_iter`` of ``LinearLR``.

    Returns:
        torch.optim.lr_scheduler.LRScheduler

    Raises:
        ValueError: an unknown type (the message lists the known ones) or arguments the scheduler does not take.
    """
    if not isinstance(scheduler_opt, dict):
        raise ValueError(f'train.scheduler must be a mapping with a `type`, got {scheduler_opt!r}.')
    kwargs = dict(scheduler_opt)
    sched_type = kwargs.pop('type', None)
    classes = dict(_basicsr_schedulers())
    classes.update(_OURS)
    if sched_type not in classes:
        raise ValueError(f'train.scheduler.type "{sched_type}" is not a known scheduler. Known types: '
                         f'{", ".join(sorted(classes))}.')
    if sched_type == 'LinearLR' and 'total_iter' not in kwargs:
        kwargs['total_iter'] = total_iter
    try:
        inspect.signature(classes[sched_type]).bind(optimizer, **kwargs)
    except TypeError as err:
        raise ValueError(f'train.scheduler ({sched_type}): {err}. Fix: use the arguments of '
                         f'{sched_type}{inspect.signature(classes[sched_type])}.') from err
    return classes[sched_type](optimizer, **kwargs)
