"""Bad option files through the CLI (subprocess): one clear error line, nothing written."""
import os
import pytest
import subprocess
import sys
from conftest import srmodel_options, write_options


@pytest.mark.slow
def test_cli_prints_clear_error_and_touches_nothing(pair_data, tmp_path):
    opt = srmodel_options(pair_data, 'cli_bad')
    opt['network_g']['num_heads'] = -2
    path = write_options(tmp_path / 'o.yml', opt)
    exe = os.path.join(os.path.dirname(sys.executable), 'basicsr-mh')
    proc = subprocess.run([exe, 'train', '-opt', path], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert 'network_g.num_heads must be >= 1' in proc.stderr and 'Traceback' not in proc.stderr
    assert not (tmp_path / 'experiments').exists() and not (tmp_path / 'tb_logger').exists()
