"""train.amp / train.channels_last / train.compile: option checks, bf16 training, channels_last equality, compile
fallback, infer flags (fp16 needs CUDA: skipped here without one)."""
import copy
import cv2
import numpy as np
import os
import pytest
import torch
from basicsr.models import build_model
from conftest import in_process_training, srmodel_options, write_options

import basicsr_mh_cli as cli
from basicsr_mh import acceleration as accel_module
from basicsr_mh.acceleration import Acceleration, CompiledForward, check_acceleration_options, to_float32
from basicsr_mh.options import upgrade_options
from basicsr_mh.tools.common import build_net

NAFNET = dict(type='NAFNet', img_channel=3, width=8, middle_blk_num=1, enc_blk_nums=[1, 1], dec_blk_nums=[1, 1])
BACKBONES = {
    'NAFNet': NAFNET,
    'HINet': dict(type='HINet', wf=8, depth=3),
    'Restormer': dict(type='Restormer', dim=8, num_blocks=[1, 1, 1, 1], num_refinement_blocks=1, heads=[1, 1, 1, 1]),
    'MPRNet': dict(type='MPRNet', n_feat=8, scale_unetfeats=4, scale_orsnetfeats=4),
}
CUDA = torch.cuda.is_available()


# --------------------------------------------------------------------------------------------------------------------
# options
# --------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize('section, match', [
    ({
        'amp': 'fp32x'
    }, r'train\.amp must be false, bf16 or fp16, got \'fp32x\'\. Fix: `amp: bf16`'),
    ({
        'amp': 'fp16'
    }, r'train\.amp: fp16 needs a CUDA device.*Fix: `amp: bf16`'),
    ({
        'channels_last': 'yes'
    }, r'train\.channels_last must be true or false'),
    ({
        'compile': 'fastest'
    }, r'train\.compile must be true, false or a torch\.compile mode \(default, reduce-overhead'),
])
def test_bad_values_name_the_key_and_the_fix(section, match):
    with pytest.raises(ValueError, match=match):
        check_acceleration_options(section, 'train', cuda=False)


def test_good_values():
    assert check_acceleration_options({}, cuda=False) == (None, False, None)
    assert check_acceleration_options({'amp': False, 'compile': False}, cuda=False) == (None, False, None)
    assert check_acceleration_options({
        'amp': 'bf16',
        'channels_last': True,
        'compile': True
    }, cuda=False) == ('bf16', True, 'default')
    assert check_acceleration_options({
        'amp': 'fp16',
        'compile': 'max-autotune'
    }, cuda=True) == ('fp16', False, 'max-autotune')


def test_bad_value_fails_in_the_option_upgrade_before_any_work(pair_data):
    opt = srmodel_options(pair_data, 'bad_amp')
    opt['train']['amp'] = 'fp32x'
    with pytest.raises(ValueError, match=r'train\.amp'):
        upgrade_options(opt, notes=[])
    opt = srmodel_options(pair_data, 'bad_fp16')
    opt.update(num_gpu=0)
    opt['train']['amp'] = 'fp16'
    with pytest.raises(ValueError, match=r'train\.amp: fp16 needs a CUDA device'):
        upgrade_options(opt, notes=[])
    test_opt = {'is_train': False, 'network_g': dict(NAFNET), 'val': {'compile': 'nope'}}
    with pytest.raises(ValueError, match=r'val\.compile must be'):
        upgrade_options(test_opt, notes=[])


def test_single_head_srmodel_with_amp_runs_as_the_multihead_model(pair_data):
    opt = srmodel_options(pair_data, 'plain_amp', num_heads=None)
    opt['train']['amp'] = 'bf16'
    notes = []
    upgrade_options(opt, notes=notes)
    assert opt['model_type'] == 'MultiHeadImageRestorationModel'
    assert any('for train.amp' in n for n in notes)
    plain = srmodel_options(pair_data, 'plain', num_heads=None)
    upgrade_options(plain, notes=[])
    assert plain['model_type'] == 'SRModel'


def test_to_float32_casts_tensors_lists_and_pairs():
    half = torch.ones(2, dtype=torch.bfloat16)
    out = to_float32([half, (half, torch.arange(3))])
    assert out[0].dtype == torch.float32 and out[1][0].dtype == torch.float32 and out[1][1].dtype == torch.int64
    same = torch.ones(2)
    assert to_float32(same) is same


# --------------------------------------------------------------------------------------------------------------------
# the model
# --------------------------------------------------------------------------------------------------------------------
def _model(pair_data, tmp_path, num_heads=4, num_gpu=0, **train):
    opt = srmodel_options(pair_data, 'accel', num_heads=num_heads, total_iter=4, val_freq=10**6)
    opt['model_type'] = 'MultiHeadImageRestorationModel'  # also for the plain FP32 references
    opt['num_gpu'] = num_gpu
    opt['train'].update(train)
    upgrade_options(in_process_training(opt, tmp_path))
    return build_model(opt)


def _batches(n=3, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [{
        'lq': torch.rand(2, 3, 32, 32, generator=gen),
        'gt': torch.rand(2, 3, 32, 32, generator=gen)
    } for _ in range(n)]


@pytest.mark.parametrize('num_heads', [4, None], ids=['MH-C', 'single-head'])
def test_bf16_training_runs_and_its_metrics_equal_an_fp32_evaluation(pair_data, tmp_path, num_heads):
    torch.manual_seed(0)
    model = _model(pair_data, tmp_path, num_heads, amp='bf16', channels_last=True)
    assert model.acceleration == Acceleration('bf16', True, None, 'cpu')
    before = {k: v.clone() for k, v in model.net_g.state_dict().items()}
    for it, batch in enumerate(_batches(), start=1):
        model.feed_data(batch)
        model.optimize_parameters(it)
        assert np.isfinite(model.log_dict['l_pix'])
    state = model.net_g.state_dict()
    assert all(v.dtype == torch.float32 for v in state.values())
    assert any(not torch.equal(before[k], state[k]) for k in state)  # it trained
    # validation: the network under autocast, the heads cast to FP32 before the metrics
    val = _batches(1, seed=5)[0]
    model.feed_data(val)
    model.test()
    assert model.output.dtype == torch.float32
    metrics = model.opt['val']['metrics']
    scores = model.head_scores(model.heads_output(), model.gt, metrics)
    # an FP32 evaluation of the same (EMA) weights
    fp32 = _model(pair_data, tmp_path, num_heads)
    fp32.net_g_ema.load_state_dict(model.net_g_ema.state_dict())
    fp32.feed_data(val)
    fp32.test()
    reference = fp32.head_scores(fp32.heads_output(), fp32.gt, metrics)
    # bfloat16 keeps 8 significant bits: outputs within 1e-2 (2.5 levels of 255)
    assert torch.allclose(model.output, fp32.output, rtol=0, atol=1e-2)
    for name in metrics:
        assert scores[name].shape == reference[name].shape
        # every head of every image: PSNR within 0.05 dB (issue 12's bf16 budget) and SSIM within 5e-3 of FP32
        tol = 0.05 if 'psnr' in name else 5e-3
        assert float((scores[name] - reference[name]).abs().max()) <= tol, (name, scores[name], reference[name])


def test_bf16_checkpoint_is_fp32_with_the_keys_of_an_fp32_run(pair_data, tmp_path):
    torch.manual_seed(0)
    model = _model(pair_data, tmp_path, amp='bf16', channels_last=True)
    model.feed_data(_batches(1)[0])
    model.optimize_parameters(1)
    model.save_network([model.net_g, model.net_g_ema], 'net_g', 1, param_key=['params', 'params_ema'])
    saved = torch.load(os.path.join(str(tmp_path), 'net_g_1.pth'), weights_only=True)
    plain = _model(pair_data, tmp_path).net_g.state_dict()
    for key in ('params', 'params_ema'):
        assert list(saved[key]) == list(plain)
        assert all(v.dtype == torch.float32 and v.is_contiguous() for v in saved[key].values())


@pytest.mark.parametrize('name, heads', [
    pytest.param(name, heads, id=f'{kind}-{name}') for kind, heads in (('single', {}), ('MH-C', {
        'num_heads': 3,
        'combine': True
    })) for name in BACKBONES
])  # MH-C MPRNet builds fast now (declared head layout, issue 13): it stays in the fast loop
def test_channels_last_equals_contiguous(name, heads):
    torch.manual_seed(0)
    net, _ = build_net({'network_g': dict(BACKBONES[name], **heads)})
    net.eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        expected = net(x)
        last = Acceleration(channels_last=True)
        out = last.run(copy.deepcopy(net), x, {})
    outs, refs = (out, expected) if isinstance(out, list) else ([out], [expected])
    for o, r in zip(outs, refs):
        torch.testing.assert_close(o, r, rtol=0, atol=1e-5)


def test_channels_last_training_step_equals_contiguous(pair_data, tmp_path):
    torch.manual_seed(0)
    plain = _model(pair_data, tmp_path)
    last = _model(pair_data, tmp_path, channels_last=True)
    last.net_g.load_state_dict(plain.net_g.state_dict())
    assert last.net_g.backbone.intro.weight.is_contiguous(memory_format=torch.channels_last)
    for it, batch in enumerate(_batches(2), start=1):
        for model in (plain, last):
            model.feed_data(batch)
            model.optimize_parameters(it)
        assert abs(plain.log_dict['l_pix'] - last.log_dict['l_pix']) < 1e-5
    for key, value in plain.net_g.state_dict().items():
        torch.testing.assert_close(last.net_g.state_dict()[key], value, rtol=0, atol=1e-5, msg=key)


# --------------------------------------------------------------------------------------------------------------------
# compile
# --------------------------------------------------------------------------------------------------------------------
def _failing_compile(*args, **kwargs):

    def compiled(*a, **k):
        raise RuntimeError('simulated: InductorError: CppCompileError: no working C++ compiler')

    return compiled


def test_compile_falls_back_to_eager_when_the_compiled_call_fails(monkeypatch):
    monkeypatch.setattr(torch, 'compile', _failing_compile)
    torch.manual_seed(0)
    net, _ = build_net({'network_g': dict(NAFNET, num_heads=2, combine=True)})
    x = torch.rand(1, 3, 16, 16)
    forward = CompiledForward(net, 'default', 'train.compile')
    with torch.no_grad():
        out = forward(x)
        torch.testing.assert_close(out, net(x), rtol=0, atol=0)
    assert forward.compiled is None and 'CppCompileError' in forward.failed
    # an error of the module itself is not swallowed
    with pytest.raises(RuntimeError):
        forward(torch.rand(1, 5, 16, 16))


def test_compile_falls_back_when_torch_compile_itself_raises(monkeypatch):

    def unsupported(*args, **kwargs):
        raise RuntimeError('Windows not yet supported for torch.compile')

    monkeypatch.setattr(torch, 'compile', unsupported)
    forward = CompiledForward(torch.nn.Identity(), 'max-autotune')
    x = torch.rand(2)
    assert forward(x) is x and 'Windows' in forward.failed


def test_model_with_compile_trains_through_the_fallback_and_keeps_its_keys(pair_data, tmp_path, monkeypatch):
    warnings = []
    monkeypatch.setattr(torch, 'compile', _failing_compile)
    monkeypatch.setattr(accel_module, 'get_root_logger', lambda: type('L', (), {'warning': warnings.append})())
    torch.manual_seed(0)
    eager = _model(pair_data, tmp_path)
    compiled = _model(pair_data, tmp_path, compile=True)
    compiled.net_g.load_state_dict(eager.net_g.state_dict())
    for model in (eager, compiled):
        model.feed_data(_batches(1)[0])
        model.optimize_parameters(1)
    assert eager.log_dict['l_pix'] == compiled.log_dict['l_pix']
    assert len(warnings) == 1 and 'train.compile: torch.compile cannot compile' in warnings[0]
    assert 'running eager' in warnings[0] and 'Fix: `compile: false`' in warnings[0]
    assert list(compiled.net_g.state_dict()) == list(eager.net_g.state_dict())
    compiled.feed_data(_batches(1)[0])
    compiled.test()  # the EMA network: its own fallback, warned once more
    assert len(warnings) == 2


# --------------------------------------------------------------------------------------------------------------------
# infer
# --------------------------------------------------------------------------------------------------------------------
def test_infer_amp_and_channels_last_flags(tmp_path, capsys):
    net, _ = build_net({'network_g': dict(NAFNET, num_heads=2, combine=True)})
    ckpt = str(tmp_path / 'net.pth')
    torch.save({'params': net.state_dict()}, ckpt)
    opt = write_options(tmp_path / 'test.yml', {
        'name': 'infer',
        'network_g': dict(NAFNET, num_heads=2, combine=True),
        'path': {
            'pretrain_network_g': ckpt
        }
    })
    inp = tmp_path / 'in'
    inp.mkdir()
    rng = np.random.default_rng(0)
    cv2.imwrite(str(inp / 'a.png'), (rng.random((37, 45, 3)) * 255).astype(np.uint8))
    outputs = {}
    for name, flags in (('fp32', []), ('fast', ['--amp', 'bf16', '--channels-last'])):
        out = tmp_path / name
        base = ['infer', '--opt', opt, '--input', str(inp), '--output', str(out), '--heads', 'all', '--quiet']
        assert cli.main(base + ['--device', 'cpu'] + flags) == 0
        outputs[name] = {n: cv2.imread(str(out / n)).astype(int) for n in sorted(os.listdir(out))}
    assert list(outputs['fp32']) == list(outputs['fast']) == ['a_h0.png', 'a_h1.png', 'a_h2.png']
    for n in outputs['fp32']:  # bfloat16 moves a pixel by at most a few levels of 255
        assert np.abs(outputs['fp32'][n] - outputs['fast'][n]).max() <= 3, n
    capsys.readouterr()
    code = cli.main([
        'infer', '--opt', opt, '--input',
        str(inp), '--output',
        str(tmp_path / 'x'), '--amp', 'fp16', '--device', 'cpu'
    ])
    assert code != 0 and '--amp fp16 needs a CUDA device' in capsys.readouterr().err


# --------------------------------------------------------------------------------------------------------------------
# CUDA
# --------------------------------------------------------------------------------------------------------------------
@pytest.mark.skipif(not CUDA, reason='fp16 autocast with a gradient scaler needs CUDA (none here)')
def test_fp16_training_on_cuda_with_the_scaler(pair_data, tmp_path):
    torch.manual_seed(0)
    model = _model(pair_data, tmp_path, num_gpu=1, amp='fp16', channels_last=True)
    assert model.grad_scaler is not None
    for it, batch in enumerate(_batches(), start=1):
        model.feed_data(batch)
        model.optimize_parameters(it)
        assert np.isfinite(model.log_dict['l_pix'])
    assert model.skipped_steps == 0
    assert all(v.dtype == torch.float32 for v in model.net_g.state_dict().values())
    model.feed_data(_batches(1)[0])
    model.test()
    assert model.output.dtype == torch.float32


@pytest.mark.skipif(not CUDA, reason='fp16 autocast with a gradient scaler needs CUDA (none here)')
def test_fp16_overflowing_gradient_is_skipped_by_the_scaler_not_an_error(pair_data, tmp_path):
    torch.manual_seed(0)
    model = _model(pair_data, tmp_path, num_gpu=1, amp='fp16')
    model.grad_scaler = torch.amp.GradScaler('cuda', init_scale=2.0**40)  # the first steps overflow in fp16
    before = {k: v.clone() for k, v in model.net_g.state_dict().items()}
    model.feed_data(_batches(1)[0])
    model.optimize_parameters(1)  # no NonFiniteError
    assert model.grad_scaler.get_scale() < 2.0**40
    for key, value in model.net_g.state_dict().items():
        assert torch.equal(value, before[key]), key  # the scaler skipped the step


def test_a_test_run_reads_the_val_section(pair_data, tmp_path):
    """``basicsr-mh test`` (is_train false) takes amp/channels_last/compile from ``val``; ``train`` is not read."""
    opt = srmodel_options(pair_data, 'test_amp')
    opt['model_type'] = 'MultiHeadImageRestorationModel'
    opt['train']['amp'] = 'fp16'  # would be refused on this CPU if it were read
    opt['val'].update(amp='bf16', channels_last=True)
    opt.update(is_train=False, dist=False, rank=0, world_size=1, root_path=str(tmp_path))
    upgrade_options(opt)
    model = build_model(opt)
    assert model.acceleration == Acceleration('bf16', True, None, 'cpu')
    model.feed_data(_batches(1)[0])
    model.test()
    assert model.output.dtype == torch.float32 and model.output.shape == (2, 10, 3, 32, 32)
