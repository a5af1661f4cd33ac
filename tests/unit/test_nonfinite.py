"""A NaN loss stops training with an error naming the iteration and the head, or is skipped; no NaN checkpoint."""
import glob
import os
import pytest
import torch
from conftest import srmodel_options, write_options

from basicsr_mh.models.checkpoint import NonFiniteError
from basicsr_mh.models.multihead_model import MultiHeadImageRestorationModel
from basicsr_mh.train import train_pipeline

BAD_ITER, BAD_HEAD = 3, 2


@pytest.fixture
def nan_at_iter3(monkeypatch):
    """Make extended head h2 of the network output NaN during training iteration 3."""
    original = MultiHeadImageRestorationModel.optimize_parameters

    def optimize(self, current_iter, tb_logger=None):
        handle = None
        if current_iter == BAD_ITER:

            def hook(module, args, output):
                output = output.clone()
                output[:, BAD_HEAD] = float('nan')
                return output

            handle = self.net_g.register_forward_hook(hook)
        try:
            return original(self, current_iter, tb_logger)
        finally:
            if handle is not None:
                handle.remove()

    monkeypatch.setattr(MultiHeadImageRestorationModel, 'optimize_parameters', optimize)


def _options(pair_data, tmp_path, **train):
    opt = srmodel_options(pair_data, 'nan_run', total_iter=6, val_freq=6)
    opt['logger'].update(print_freq=1, save_checkpoint_freq=2, use_tb_logger=False)
    opt['val']['save_img'] = False
    opt['train'].update(train)
    return write_options(tmp_path / 'train.yml', opt)


def _finite(path):
    ckpt = torch.load(path, map_location='cpu', weights_only=True)
    return all(bool(torch.isfinite(t).all()) for key in ('params', 'params_ema') for t in ckpt[key].values())


def test_nan_loss_stops_with_iteration_and_head(pair_data, tmp_path, nan_at_iter3):
    opt_path = _options(pair_data, tmp_path)
    with pytest.raises(NonFiniteError) as info:
        train_pipeline(str(tmp_path), ['-opt', opt_path])
    message = str(info.value)
    assert f'iteration {BAD_ITER}' in message
    assert f'head h{BAD_HEAD}' in message and 'sample 0' in message
    assert 'skip_nonfinite' in message
    models = glob.glob(str(tmp_path / 'experiments' / 'nan_run' / 'models' / '*.pth'))
    assert [os.path.basename(p) for p in models] == ['net_g_2.pth']  # saved before the NaN; nothing after
    assert all(_finite(p) for p in models)


def test_skip_nonfinite_finishes_and_never_saves_nan(pair_data, tmp_path, nan_at_iter3):
    opt_path = _options(pair_data, tmp_path, skip_nonfinite=True)
    model = train_pipeline(str(tmp_path), ['-opt', opt_path])
    assert model.skipped_steps == 1
    exp = tmp_path / 'experiments' / 'nan_run'
    log = next(exp.glob('train_nan_run_*.log')).read_text()
    assert f'Non-finite loss at iteration {BAD_ITER}' in log and 'Step skipped' in log
    models = sorted(glob.glob(str(exp / 'models' / '*.pth')))
    assert len(models) == 4 and all(_finite(p) for p in models)  # 2, 4, 6, latest
    # a diverged network is never written
    with torch.no_grad():
        next(model.get_bare_model(model.net_g).parameters()).fill_(float('nan'))
    with pytest.raises(NonFiniteError, match='Refusing to save'):
        model.save(epoch=9, current_iter=99)
    assert not (exp / 'models' / 'net_g_99.pth').exists()
    assert not (exp / 'training_states' / '99.state').exists()
