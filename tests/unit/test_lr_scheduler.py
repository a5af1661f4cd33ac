"""The forks' schedulers against their closed forms, and the scheduler builder (BasicSR's types, clear errors)."""
import math
import pytest
import torch

from basicsr_mh.models.lr_scheduler import (CosineAnnealingRestartCyclicLR, LinearLR, TrueCosineAnnealingLR,
                                            build_scheduler, known_scheduler_types)

BASE_LR = 1e-3


def _optimizer(lr=BASE_LR):
    return torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))], lr=lr)


def _lr_per_iter(scheduler, iters):
    """The LR each iteration 1..iters trains with, stepping as BasicSR's update_learning_rate (from iteration 2)."""
    lrs = []
    for current_iter in range(1, iters + 1):
        if current_iter > 1:
            scheduler.step()
        lrs.append(scheduler.optimizer.param_groups[0]['lr'])
    return lrs


def test_true_cosine_annealing_closed_form():
    t_max, eta_min = 10, 1e-7
    sched = build_scheduler(_optimizer(), {'type': 'TrueCosineAnnealingLR', 'T_max': t_max, 'eta_min': eta_min})
    assert isinstance(sched, TrueCosineAnnealingLR)
    lrs = _lr_per_iter(sched, 12)
    for t in (0, 1, 3, 5, 9, 10):
        expected = eta_min + (BASE_LR - eta_min) * (1 + math.cos(math.pi * t / t_max)) / 2
        assert lrs[t] == pytest.approx(expected, rel=1e-9, abs=1e-15)
    assert lrs[0] == pytest.approx(BASE_LR) and lrs[10] == pytest.approx(eta_min)


def _cyclic_closed_form(t, periods, weights, eta_mins, base_lr=BASE_LR):
    start = 0
    for period, weight, eta_min in zip(periods, weights, eta_mins):
        if t <= start + period:
            return eta_min + weight * (base_lr - eta_min) * (1 + math.cos(math.pi * (t - start) / period)) / 2
        start += period
    return eta_mins[-1]  # past the last cycle: the last floor


def test_cosine_annealing_restart_cyclic_closed_form():
    periods, weights, eta_mins = [4, 6], [1, 0.5], [2e-4, 1e-6]
    sched = build_scheduler(_optimizer(), {
        'type': 'CosineAnnealingRestartCyclicLR',
        'periods': periods,
        'restart_weights': weights,
        'eta_mins': eta_mins
    })
    assert isinstance(sched, CosineAnnealingRestartCyclicLR)
    lrs = _lr_per_iter(sched, 14)
    for t in range(14):
        assert lrs[t] == pytest.approx(_cyclic_closed_form(t, periods, weights, eta_mins), rel=1e-9), t
    assert lrs[4] == pytest.approx(2e-4)  # end of cycle 1: its floor
    assert lrs[5] < 0.5 * BASE_LR  # cycle 2 restarts at weight 0.5
    assert lrs[13] == pytest.approx(1e-6)


def test_restormer_gopro_shape_constant_then_cosine():
    """Restormer's file: eta_mins[0] = base LR makes cycle 1 constant, then a cosine to the second floor."""
    base = 3e-4
    sched = CosineAnnealingRestartCyclicLR(
        _optimizer(base), periods=[3, 5], restart_weights=[1, 1], eta_mins=[base, 1e-6])
    lrs = _lr_per_iter(sched, 9)
    assert lrs[:4] == pytest.approx([base] * 4)
    assert lrs[8] == pytest.approx(1e-6)
    assert all(a > b for a, b in zip(lrs[3:8], lrs[4:9]))


def test_linear_lr_defaults_to_total_iter():
    sched = build_scheduler(_optimizer(), {'type': 'LinearLR'}, total_iter=8)
    assert isinstance(sched, LinearLR) and sched.total_iter == 8
    lrs = _lr_per_iter(sched, 9)
    for t in (0, 2, 4, 7, 8):
        assert lrs[t] == pytest.approx(BASE_LR * (1 - t / 8), abs=1e-15)
    assert build_scheduler(_optimizer(), {'type': 'LinearLR', 'total_iter': 4}, total_iter=8).total_iter == 4


def test_state_dict_resume_continues_the_curve():
    opt = {
        'type': 'CosineAnnealingRestartCyclicLR',
        'periods': [4, 6],
        'restart_weights': [1, 1],
        'eta_mins': [1e-4, 1e-6]
    }
    full = _lr_per_iter(build_scheduler(_optimizer(), opt), 10)
    first = build_scheduler(_optimizer(), opt)
    _lr_per_iter(first, 5)
    resumed = build_scheduler(_optimizer(), opt)
    resumed.load_state_dict(first.state_dict())
    resumed.optimizer.param_groups[0]['lr'] = first.optimizer.param_groups[0]['lr']
    rest = []
    for _ in range(5):
        resumed.step()
        rest.append(resumed.optimizer.param_groups[0]['lr'])
    assert rest == pytest.approx(full[5:])


def test_basicsr_types_and_errors():
    from basicsr.models import lr_scheduler as basicsr_sched

    known = known_scheduler_types()
    for name in ('MultiStepLR', 'MultiStepRestartLR', 'CosineAnnealingRestartLR', 'TrueCosineAnnealingLR',
                 'CosineAnnealingRestartCyclicLR', 'LinearLR'):
        assert name in known
    sched = build_scheduler(_optimizer(), {'type': 'MultiStepLR', 'milestones': [2], 'gamma': 0.5})
    assert isinstance(sched, basicsr_sched.MultiStepRestartLR)
    assert _lr_per_iter(sched, 4) == pytest.approx([BASE_LR, BASE_LR, BASE_LR / 2, BASE_LR / 2])
    sched = build_scheduler(_optimizer(), {'type': 'CosineAnnealingRestartLR', 'periods': [4], 'eta_min': 0})
    assert isinstance(sched, basicsr_sched.CosineAnnealingRestartLR)
    with pytest.raises(ValueError, match='not a known scheduler. Known types: .*TrueCosineAnnealingLR'):
        build_scheduler(_optimizer(), {'type': 'TrueCosineAnealingLR', 'T_max': 4})
    with pytest.raises(ValueError, match="missing a required argument: 'T_max'"):
        build_scheduler(_optimizer(), {'type': 'TrueCosineAnnealingLR', 'T_maxx': 4})
    with pytest.raises(ValueError, match="unexpected keyword argument 'eta_mins'.*arguments of TrueCosineAnnealingLR"):
        build_scheduler(_optimizer(), {'type': 'TrueCosineAnnealingLR', 'T_max': 4, 'eta_mins': [0]})
    with pytest.raises(ValueError, match='eta_mins has 1 entries but periods has 2'):
        build_scheduler(_optimizer(), {
            'type': 'CosineAnnealingRestartCyclicLR',
            'periods': [2, 2],
            'restart_weights': [1, 1],
            'eta_mins': [0]
        })
    with pytest.raises(ValueError, match='positive total_iter'):
        build_scheduler(_optimizer(), {'type': 'LinearLR'})
    opt = {'type': 'TrueCosineAnnealingLR', 'T_max': 4}
    build_scheduler(_optimizer(), opt)
    assert opt == {'type': 'TrueCosineAnnealingLR', 'T_max': 4}  # the option section is not modified
