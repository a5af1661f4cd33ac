"""--auto_resume after SIGKILL ends with the same metrics as an uninterrupted run; broken latest states are skipped."""
import torch

from basicsr_mh.train import find_resume_state

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
