"""benchmarks/speed.py's summary: ratios of MH-C over single-head with their spread, and every variant beside the
fork's single-head step (numbers made up here, so every figure can be checked by hand)."""
import os
import pytest
import sys
from conftest import REPO_ROOT

sys.path.insert(0, os.path.join(REPO_ROOT, 'benchmarks'))
import speed  # noqa: E402


def _times():
    return {
        'single': {
            'step': [1.0, 1.2, 1.1, 1.0, 1.0],
            'val': [0.5] * 5
        },
        'mhc': {
            'step': [1.1, 1.2, 1.0, 1.05, 1.0],
            'val': [0.6] * 5
        },
        'fork': {
            'step': [2.0] * 5,
            'val': []
        },
        'mhc_bf16_cl': {
            'step': [0.8] * 5,
            'val': []
        },
    }


def _memory():
    return {
        v: [{
            'train_rss_mb': mb,
            'peak_rss_mb': mb + 700,
            'base_rss_mb': 700
        }]
        for v, mb in (('single', 100.0), ('mhc', 110.0), ('fork', 100.0), ('mhc_bf16_cl', 60.0))
    }


def test_summary_ratios_spread_and_fork_columns():
    row = speed.summarize('hinet', 'cpu', _times(), _memory())
    assert row['step_s'] == {'single': 1.0, 'mhc': 1.05, 'fork': 2.0, 'mhc_bf16_cl': 0.8}
    assert row['step_ratio'] == pytest.approx(1.05)
    assert row['step_ratio_spread'] == pytest.approx([1.0 / 1.1, 1.1])  # per repeat: 1.1, 1.0, 1/1.1, 1.05, 1.0
    assert row['memory_ratio'] == pytest.approx(1.1)
    assert row['val_ratio'] == pytest.approx(1.2)
    assert row['rate_vs_fork'] == pytest.approx({'single': 2.0, 'mhc': 2.0 / 1.05, 'fork': 1.0, 'mhc_bf16_cl': 2.5})
    assert row['memory_vs_fork'] == pytest.approx({'single': 1.0, 'mhc': 1.1, 'fork': 1.0, 'mhc_bf16_cl': 0.6})
    meta = dict(device='cpu', device_name='CPU', torch='x', repeats=5, steps=2, memory_repeats=1)
    text = speed.markdown([row], meta)
    assert '| hinet | 1 x 128² | 1.000 | 1.050 | 1.050 ✗ | 0.909-1.100 | 100 | 110 | 1.100 ✗ |' in text
    assert '| hinet | MH-C, bf16 + channels_last | 0.800 | 2.50x | 60 | 0.60 |' in text
    assert '| hinet | fork single-head (FP32, L1, plain backbone) | 2.000 | 1.00x | 100 | 1.00 |' in text


def test_variants_build_with_their_options():
    net, loss, accel = speed.build('hinet', 'mhc_bf16_cl', 'cpu')
    assert (accel.amp, accel.channels_last, accel.compile) == ('bf16', True, None)
    assert getattr(net, 'num_outputs', 1) == 10 and type(loss).__name__ == 'MinHeadLoss'
    fork, fork_loss, fork_accel = speed.build('hinet', 'fork', 'cpu')
    assert not hasattr(fork, 'num_outputs') and type(fork_loss).__name__ == 'L1Loss' and not fork_accel.enabled
    assert speed.build('hinet', 'mhc_compile', 'cpu')[2].compile == 'default'
