"""--auto_resume after SIGKILL ends with the same metrics as an uninterrupted run; broken latest states are skipped;
the loop's position in the epoch reaches the training state as an argument."""
import torch
from basicsr.models import build_model
from conftest import in_process_training, srmodel_options

from basicsr_mh.options import upgrade_options
from basicsr_mh.train import find_resume_state, save_checkpoint

TOTAL, FREQ = 30, 10


def _fake_experiment(root, iters):
    """training_states/<i>.state and models/net_g_<i>.pth for ``iters``, written like the model does."""
    states, models = root / 'training_states', root / 'models'
    states.mkdir(parents=True)
    models.mkdir()
    for i in iters:
        torch.save({'epoch': 0, 'iter': i, 'optimizers': [], 'schedulers': []}, states / f'{i}.state')
        torch.save({'params': {'w': torch.zeros(1)}}, models / f'net_g_{i}.pth')
    return {'auto_resume': True, 'rank': 0, 'path': {'training_states': str(states), 'models': str(models)}}


def test_tmp_file_of_interrupted_write_is_ignored(tmp_path):
    opt = _fake_experiment(tmp_path, (10, 20))
    (tmp_path / 'training_states' / '30.state.tmp').write_bytes(b'\x80garbage')
    (tmp_path / 'training_states' / '30.state.a1b2.tmp').write_bytes(b'\x80garbage')
    warnings = []
    assert find_resume_state(opt, warn=warnings.append).endswith('20.state')
    assert opt['path']['resume_state'].endswith('20.state')


def test_truncated_state_without_network_is_skipped_with_warning(tmp_path):
    opt = _fake_experiment(tmp_path, (10, 20))
    good = (tmp_path / 'training_states' / '20.state').read_bytes()
    (tmp_path / 'training_states' / '30.state').write_bytes(good[:len(good) // 2])
    warnings = []
    assert find_resume_state(opt, warn=warnings.append).endswith('20.state')
    assert len(warnings) == 1 and '30.state' in warnings[0] and 'net_g_30.pth' in warnings[0]


def test_truncated_state_or_network_is_skipped_with_warning(tmp_path):
    opt = _fake_experiment(tmp_path, (10, 20, 30))
    state = tmp_path / 'training_states' / '30.state'
    state.write_bytes(state.read_bytes()[:40])
    net = tmp_path / 'models' / 'net_g_20.pth'
    net.write_bytes(net.read_bytes()[:40])
    warnings = []
    assert find_resume_state(opt, warn=warnings.append).endswith('10.state')
    assert len(warnings) == 2
    assert '30.state' in warnings[0] and 'cannot be read' in warnings[0]
    assert 'net_g_20.pth' in warnings[1]


def test_the_position_in_the_epoch_reaches_the_state_as_an_argument(pair_data, tmp_path):
    """``save_checkpoint`` hands the loop's position to ``model.save(epoch, iter, extras)`` (no attribute is set on
    the model for it); BasicSR's two-argument ``model.save(epoch, iter)`` still writes a state, without it."""
    opt = srmodel_options(pair_data, 'extras', total_iter=4, val_freq=10**6)
    model = build_model(upgrade_options(in_process_training(opt, tmp_path)))
    before = set(vars(model))
    path = save_checkpoint(model, 1, 7, 3, opt)
    model.save(1, 8)
    assert set(vars(model)) == before
    state, plain = (torch.load(p, weights_only=True) for p in (path, tmp_path / '8.state'))
    assert path == str(tmp_path / '7.state')
    assert (state['epoch'], state['iter'], state['epoch_iter'], state['world_size']) == (1, 7, 3, 1)
    assert plain['iter'] == 8 and 'epoch_iter' not in plain and 'world_size' not in plain
