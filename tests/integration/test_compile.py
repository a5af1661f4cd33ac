"""A real torch.compile (inductor) of a network's forward and backward on this machine equals eager."""
import pytest
import torch
from test_acceleration import NAFNET

from basicsr_mh.acceleration import CompiledForward
from basicsr_mh.tools.common import build_net


@pytest.mark.slow  # a real inductor compile of forward and backward: about a minute on 2 CPU cores
def test_real_compile_on_this_machine_equals_eager():
    torch.manual_seed(0)
    net, _ = build_net({'network_g': dict(NAFNET, num_heads=2, combine=True)})
    x, y = torch.rand(2, 3, 32, 32), torch.rand(2, 1, 3, 32, 32)  # y broadcast over the K' = 3 heads
    forward = CompiledForward(net, 'default')
    out = forward(x)
    if forward.failed:  # no C compiler here: the fallback ran, as tested above
        pytest.skip(f'torch.compile cannot compile here: {forward.failed}')
    torch.testing.assert_close(out, net(x), rtol=0, atol=1e-5)
    (out - y).abs().mean().backward()
    assert all(p.grad is not None for p in net.parameters())
    assert not any(k.startswith('_orig_mod') for k in net.state_dict())
