"""One policy for the network entry of a checkpoint (training, pre-flight and the tools): ``network_state``."""
import pytest
import torch

from basicsr_mh.models.checkpoint import network_state


def _ckpt(*keys):
    return {key: {'module.w': torch.full((1, ), float(i))} for i, key in enumerate(keys)}


def test_asked_entry_else_params_else_ema_for_deployment():
    ckpt = _ckpt('params', 'params_ema')
    state, key = network_state(ckpt, 'params_ema')
    assert key == 'params_ema' and list(state) == ['w'] and float(state['w']) == 1  # `module.` stripped
    assert network_state(ckpt)[1] == 'params'  # training's default (BasicSR's param_key_g)
    assert network_state(ckpt, prefer_ema=True)[1] == 'params_ema'  # infer / analyze
    assert network_state(_ckpt('params'), prefer_ema=True)[1] == 'params'
    assert network_state(_ckpt('params'), 'params_ema')[1] == 'params'  # BasicSR's fallback


def test_bare_state_dict_and_refusals_name_the_entries():
    state, key = network_state({'module.conv.weight': torch.zeros(1)})
    assert key is None and list(state) == ['conv.weight']
    with pytest.raises(ValueError, match=r'x.pth has no "params" entry \(it has \[\'iter\', \'optimizers\'\]\)'):
        network_state({'iter': 3, 'optimizers': []}, where='x.pth')
    with pytest.raises(ValueError, match='is a list, not a checkpoint'):
        network_state([1, 2], where='x.pth')
