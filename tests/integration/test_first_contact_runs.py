"""First contact, trained (subprocesses): a single-head SRModel with AdamW trains; a failing metric names itself."""
import copy
import json
import pytest
import torch
from conftest import srmodel_options, write_options

from basicsr_mh.options import upgrade_options


@pytest.mark.slow  # trains
def test_single_head_srmodel_with_adamw_trains(pair_data, tmp_path, monkeypatch):
    """BasicSR 1.4.2's SRModel builds only Adam (NotImplementedError for AdamW): such a file trains through the
    multi-head model, which with a plain network validates as SRModel (one image, plain metric names)."""
    from basicsr.models.base_model import BaseModel

    from basicsr_mh.train import train_pipeline
    monkeypatch.chdir(tmp_path)
    opt = srmodel_options(pair_data, 'adamw', num_heads=None, total_iter=2, val_freq=2)
    opt['train']['optim_g'] = {'type': 'AdamW', 'lr': 1e-3, 'weight_decay': 1e-4, 'betas': [0.9, 0.9]}
    notes = []
    upgrade_options(copy.deepcopy(opt), notes=notes)
    try:
        BaseModel.get_optimizer(None, 'AdamW', [torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
        upgraded = False  # BasicSR master builds AdamW itself: nothing to upgrade
    except NotImplementedError:
        upgraded = True
    assert any('cannot build train.optim_g.type AdamW' in n for n in notes) == upgraded
    model = train_pipeline(str(tmp_path), ['-opt', write_options(tmp_path / 'o.yml', opt)])
    assert type(model.optimizers[0]).__name__ == 'AdamW'
    metrics = json.loads((tmp_path / 'experiments' / 'adamw' / 'metrics.json').read_text())['datasets']['TinyVal']
    assert set(metrics) == {'psnr', 'ssim'}


@pytest.mark.slow  # trains
def test_a_failing_metric_names_itself_the_dataset_and_the_image(pair_data, tmp_path, monkeypatch):
    from basicsr.utils.registry import METRIC_REGISTRY

    from basicsr_mh.train import train_pipeline
    if 'calculate_always_fails' not in METRIC_REGISTRY:

        @METRIC_REGISTRY.register()
        def calculate_always_fails(img, img2, **kwargs):
            raise torch.linalg.LinAlgError('SVD did not converge')

    monkeypatch.chdir(tmp_path)
    opt = srmodel_options(pair_data, 'badmetric', total_iter=2, val_freq=2)
    opt['val']['metrics']['niqe_like'] = {'type': 'calculate_always_fails'}
    with pytest.raises(RuntimeError) as err:
        train_pipeline(str(tmp_path), ['-opt', write_options(tmp_path / 'o.yml', opt)])
    message = str(err.value)
    assert 'val.metrics.niqe_like (calculate_always_fails) failed on dataset TinyVal' in message
    assert 'SVD did not converge' in message and '.png' in message
