"""Untrusted input (issue 14): checkpoints and training states that would run code are refused by every command
unless the user opts in; training writes files that ``weights_only=True`` reads; oversized images and output names
that would leave ``--output`` are refused."""
import copy
import cv2
import json
import numpy as np
import os
import pytest
import shlex
import struct
import torch
import zlib
from conftest import srmodel_options, write_options

import basicsr_mh_cli as cli
from basicsr_mh.models.checkpoint import UntrustedCheckpointError, read_checkpoint
from basicsr_mh.test import test_pipeline as run_test_pipeline
from basicsr_mh.tools.common import ToolError, build_net
from basicsr_mh.tools.guards import header_size, output_file
from basicsr_mh.train import train_pipeline

NAFNET = dict(type='NAFNet', img_channel=3, width=8, middle_blk_num=1, enc_blk_nums=[1, 1], dec_blk_nums=[1, 1])


class RunsCode:
    """Unpickling this object runs ``touch MARKER`` (what a malicious checkpoint does, harmlessly)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f'touch {shlex.quote(self.marker)}', )


def assert_refused(message, path):
    """The one-line refusal: the file, the offending global, both opt-ins."""
    assert f'"{path}"' in message
    assert 'posix.system' in message
    assert '--trust-checkpoint' in message and 'path.trust_checkpoint: true' in message
    assert '\n' not in message.strip()


def evil_copy(source, target, marker):
    """``source`` (a checkpoint or state) with an extra entry that runs code when unpickled."""
    content = torch.load(source, map_location='cpu', weights_only=True)
    content['payload'] = RunsCode(marker)
    torch.save(content, target)
    return str(target)


@pytest.fixture(scope='module')
def model_files(pair_data, tmp_path_factory):
    """A test option file (validation pairs, NAFNet K=3 MH-C) with a clean and a code-running checkpoint."""
    root = tmp_path_factory.mktemp('security')
    opt = srmodel_options(pair_data, 'security_test', num_heads=3, combine=True)
    del opt['datasets']['train']
    net, _ = build_net(opt)
    clean = root / 'clean.pth'
    torch.save({'params': net.state_dict(), 'multihead': {'num_heads': 3, 'combine': True, 'best_head': 2}}, clean)
    opt['is_train'] = False
    opt['path']['pretrain_network_g'] = str(clean)
    opt_clean = write_options(root / 'clean.yml', opt)
    images = root / 'images'
    images.mkdir()
    cv2.imwrite(str(images / 'a.png'), (np.random.default_rng(0).random((37, 45, 3)) * 255).astype(np.uint8))
    return {'root': root, 'opt': opt, 'opt_clean': opt_clean, 'clean': str(clean), 'images': str(images)}


def make_evil(model_files, tmp_path):
    marker = tmp_path / 'code_ran'
    evil = evil_copy(model_files['clean'], tmp_path / 'evil.pth', marker)
    opt = copy.deepcopy(model_files['opt'])
    opt['path']['pretrain_network_g'] = evil
    return evil, marker, write_options(tmp_path / 'test.yml', opt)


def test_read_checkpoint_refuses_code_and_loads_with_opt_in(model_files, tmp_path):
    evil, marker, _ = make_evil(model_files, tmp_path)
    with pytest.raises(UntrustedCheckpointError) as err:
        read_checkpoint(evil)
    assert_refused(str(err.value), evil)
    assert not marker.exists()
    assert 'params' in read_checkpoint(evil, trust=True)
    assert marker.exists()  # the opt-in really loads everything


# per tool: its arguments (after --opt) for (evil checkpoint, output path), the output name, what the run writes
TOOLS = {
    'infer': (lambda evil, out, images: ['--input', images, '--output', out, '--quiet'], 'out', 'a.png'),
    'export': (lambda evil, out, images: ['--ckpt', evil, '--head', '1', '--out', out], 'plain.pth', None),
    'analyze': (lambda evil, out, images: ['--out', out, '--quiet', '--max-images', '1'], 'analysis', 'table.json'),
}


@pytest.mark.parametrize('tool', sorted(TOOLS))
def test_tool_refuses_then_runs_with_opt_in(tool, model_files, tmp_path, capsys):
    evil, marker, opt = make_evil(model_files, tmp_path)
    make_args, out_name, written = TOOLS[tool]
    out = tmp_path / out_name
    argv = [tool, '--opt', opt] + make_args(evil, str(out), model_files['images'])
    assert cli.main(argv) == 1
    assert_refused(capsys.readouterr().err, evil)
    assert not marker.exists() and not out.exists()
    assert cli.main(argv + ['--trust-checkpoint']) == 0
    assert marker.exists() and (out / written if written else out).is_file()


def test_basicsr_test_refuses_then_runs_with_option(model_files, tmp_path, monkeypatch):
    evil, marker, opt_path = make_evil(model_files, tmp_path)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UntrustedCheckpointError) as err:
        run_test_pipeline(str(tmp_path), ['-opt', opt_path])
    assert_refused(str(err.value), evil)
    assert not marker.exists() and not (tmp_path / 'results').exists()
    run_test_pipeline(str(tmp_path), ['-opt', opt_path, '--force_yml', 'path:trust_checkpoint=true'])
    assert marker.exists()
    assert (tmp_path / 'results' / 'security_test' / 'metrics.json').is_file()


def test_trust_checkpoint_must_be_boolean(model_files, tmp_path, monkeypatch):
    _, marker, opt_path = make_evil(model_files, tmp_path)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match='path.trust_checkpoint is .yes please.; it must be true or false'):
        run_test_pipeline(str(tmp_path), ['-opt', opt_path, '--force_yml', 'path:trust_checkpoint=yes please'])
    assert not marker.exists()


def train_options(pair_data, name, total_iter=20, **train):
    opt = srmodel_options(pair_data, name, total_iter=total_iter, val_freq=10)
    opt['logger'].update(use_tb_logger=False, save_checkpoint_freq=10)
    opt['val']['save_img'] = False
    opt['train'].update(train)
    return opt


def test_train_refuses_pretrained_checkpoint_then_runs_with_option(pair_data, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    opt = train_options(pair_data, 'pretrained', total_iter=2)
    net, _ = build_net(opt)
    torch.save({'params': net.state_dict()}, tmp_path / 'clean.pth')
    marker = tmp_path / 'code_ran'
    opt['path']['pretrain_network_g'] = evil_copy(tmp_path / 'clean.pth', tmp_path / 'evil.pth', marker)
    opt_path = write_options(tmp_path / 'train.yml', opt)
    with pytest.raises(UntrustedCheckpointError) as err:
        train_pipeline(str(tmp_path), ['-opt', opt_path])
    assert_refused(str(err.value), opt['path']['pretrain_network_g'])
    assert not marker.exists() and not (tmp_path / 'experiments').exists()
    train_pipeline(str(tmp_path), ['-opt', opt_path, '--force_yml', 'path:trust_checkpoint=true'])
    assert marker.exists() and (tmp_path / 'experiments' / 'pretrained' / 'models' / 'net_g_latest.pth').is_file()


def final_metrics(root, name):
    return json.loads((root / 'experiments' / name / 'metrics.json').read_text())


@pytest.fixture(scope='module')
def trained(pair_data, tmp_path_factory):
    """A 20-iteration run (states at 10 and 20) as the uninterrupted reference, and its options."""
    root = tmp_path_factory.mktemp('trained')
    opt = train_options(pair_data, 'resumable')
    opt_path = write_options(root / 'train.yml', opt)
    cwd = os.getcwd()
    os.chdir(root)
    try:
        train_pipeline(str(root), ['-opt', opt_path])
    finally:
        os.chdir(cwd)
    return root, opt


def stopped_copy(trained, tmp_path):
    """A copy of the trained run as if it had stopped right after the 10-iteration state."""
    root, opt = trained
    exp = tmp_path / 'experiments' / 'resumable'
    (exp / 'models').mkdir(parents=True)
    (exp / 'training_states').mkdir()
    src = root / 'experiments' / 'resumable'
    (exp / 'models' / 'net_g_10.pth').write_bytes((src / 'models' / 'net_g_10.pth').read_bytes())
    (exp / 'training_states' / '10.state').write_bytes((src / 'training_states' / '10.state').read_bytes())
    return exp, write_options(tmp_path / 'train.yml', opt)


def test_auto_resume_refuses_crafted_state_then_resumes_with_option(trained, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    exp, opt_path = stopped_copy(trained, tmp_path)
    state = exp / 'training_states' / '10.state'
    marker = tmp_path / 'code_ran'
    evil_copy(state, state, marker)
    with pytest.raises(UntrustedCheckpointError) as err:
        train_pipeline(str(tmp_path), ['-opt', opt_path, '--auto_resume'])
    assert_refused(str(err.value), str(state))
    assert not marker.exists() and not list(exp.glob('train_*.log'))
    train_pipeline(str(tmp_path), ['-opt', opt_path, '--auto_resume', '--force_yml', 'path:trust_checkpoint=true'])
    assert marker.exists()
    assert final_metrics(tmp_path, 'resumable') == final_metrics(trained[0], 'resumable')


def test_state_of_previous_release_resumes_exactly_with_opt_in(trained, tmp_path, monkeypatch):
    """basicsr-mh 0.1 pickled numpy's RNG state as a tuple with an ndarray: refused by default, exact with opt-in."""
    monkeypatch.chdir(tmp_path)
    exp, opt_path = stopped_copy(trained, tmp_path)
    path = exp / 'training_states' / '10.state'
    state = torch.load(path, weights_only=True)
    for rng in state['rng']:
        new = rng['numpy']
        rng['numpy'] = (new['bit_generator'], new['key'].numpy().astype(np.uint32), new['pos'], new['has_gauss'],
                        new['gauss'])
    torch.save(state, path)
    with pytest.raises(UntrustedCheckpointError, match='numpy'):
        train_pipeline(str(tmp_path), ['-opt', opt_path, '--auto_resume'])
    train_pipeline(str(tmp_path), ['-opt', opt_path, '--auto_resume', '--force_yml', 'path:trust_checkpoint=true'])
    assert final_metrics(tmp_path, 'resumable') == final_metrics(trained[0], 'resumable')


SCHEDULERS = {
    'CosineAnnealingRestartLR': None,  # srmodel_options' default
    'MultiStepRestartLR': {
        'type': 'MultiStepRestartLR',
        'milestones': [4, 8],
        'gamma': 0.5,
        'restarts': [12],
        'restart_weights': [0.5]
    },
    'TrueCosineAnnealingLR': {
        'type': 'TrueCosineAnnealingLR',
        'T_max': 20,
        'eta_min': 1e-7
    },
    'CosineAnnealingRestartCyclicLR': {
        'type': 'CosineAnnealingRestartCyclicLR',
        'periods': [8, 12],
        'restart_weights': [1, 1],
        'eta_mins': [1e-4, 1e-6]
    },
    'LinearLR': {
        'type': 'LinearLR',
        'total_iter': 20
    },
}


@pytest.mark.parametrize('scheduler', sorted(SCHEDULERS))
def test_everything_training_writes_loads_with_weights_only(pair_data, tmp_path, monkeypatch, scheduler):
    monkeypatch.chdir(tmp_path)
    opt = train_options(pair_data, 'plain_files', total_iter=20, optim_g={'type': 'AdamW', 'lr': 1e-3})
    if SCHEDULERS[scheduler]:
        opt['train']['scheduler'] = SCHEDULERS[scheduler]
    train_pipeline(str(tmp_path), ['-opt', write_options(tmp_path / 'train.yml', opt)])
    exp = tmp_path / 'experiments' / 'plain_files'
    files = sorted(exp.glob('models/*.pth')) + sorted(exp.glob('training_states/*.state'))
    assert [f.name for f in files] == ['net_g_10.pth', 'net_g_20.pth', 'net_g_latest.pth', '10.state', '20.state']
    for path in files:
        content = torch.load(path, map_location='cpu', weights_only=True)
        assert isinstance(content, dict)
    state = torch.load(files[-1], weights_only=True)  # after a validation: best metrics and EMA-trained optimizer
    assert state['iter'] == 20 and len(state['schedulers']) == 1 and state['best_metric_results']['TinyVal']
    assert state['rng'][0]['numpy']['key'].dtype == torch.int64  # numpy's MT19937 key as a tensor, not an ndarray


# ---------------------------------------------------------------- images and output names
def png_header_only(path, width, height):
    """A PNG whose header claims ``width`` x ``height`` RGB pixels, with one tiny (wrong) data chunk."""

    def chunk(kind, data):
        return struct.pack('>I', len(data)) + kind + data + struct.pack('>I', zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack('>IIBBBBB', width, height, 8, 2, 0, 0, 0)
    data = b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', header) + chunk(b'IDAT', zlib.compress(b'\0' * 16)) + chunk(
        b'IEND', b'')
    path.write_bytes(data)


def test_oversized_image_is_skipped_before_decoding(model_files, tmp_path, capsys, monkeypatch):
    from basicsr_mh.tools import infer
    images = tmp_path / 'images'
    images.mkdir()
    png_header_only(images / 'bomb.png', 60000, 60000)
    (images / 'a.png').write_bytes((model_files['root'] / 'images' / 'a.png').read_bytes())
    assert header_size(str(images / 'bomb.png')) == (60000, 60000)
    decoded = []
    real_read = infer.read_image
    monkeypatch.setattr(infer, 'read_image', lambda path: decoded.append(os.path.basename(path)) or real_read(path))
    argv = ['infer', '--opt', model_files['opt_clean'], '--input', str(images), '--quiet']
    assert cli.main(argv + ['--output', str(tmp_path / 'out')]) == 0
    printed = capsys.readouterr().out
    assert 'skipped bomb.png: its header claims 60000x60000 = 3,600,000,000 pixels, above --max-pixels' in printed
    assert decoded == ['a.png'] and sorted(os.listdir(tmp_path / 'out')) == ['a.png']
    # the limit is the user's: lower it below a real image, or turn it off (then the bomb reaches the decoder)
    assert cli.main(argv + ['--output', str(tmp_path / 'low'), '--max-pixels', '1000']) == 1
    assert 'above --max-pixels 1,000' in capsys.readouterr().out
    decoded.clear()
    assert cli.main(argv + ['--output', str(tmp_path / 'off'), '--max-pixels', '0']) == 0
    assert decoded == ['a.png', 'bomb.png']


def test_output_names_cannot_leave_the_output_folder(model_files, tmp_path, capsys):
    out = tmp_path / 'out'
    out.mkdir()
    outside = tmp_path / 'precious.png'
    outside.write_bytes(b'my own file')
    os.symlink(outside, out / 'a.png')  # a link planted where infer would write a.png
    argv = ['infer', '--opt', model_files['opt_clean'], '--input', model_files['images'], '--output', str(out)]
    assert cli.main(argv + ['--quiet']) == 1
    err = capsys.readouterr().err
    assert 'is a symbolic link' in err and 'never written through links' in err
    assert outside.read_bytes() == b'my own file' and os.listdir(out) == ['a.png']
    for name in ('../escape.png', 'sub/a.png', '..', '', '/etc/passwd'):
        with pytest.raises(ToolError, match='not a plain file name'):
            output_file(str(out), name)
    assert output_file(str(out), 'b.png') == os.path.join(str(out), 'b.png')


def test_atomic_writes_get_plain_file_permissions(tmp_path):
    """Checkpoints, metrics and images are readable by colleagues as files written with open() would be (not 0600)."""
    from basicsr_mh.models.checkpoint import atomic_torch_save, atomic_write_json
    from basicsr_mh.tools.guards import write_atomic
    old = os.umask(0o022)
    try:
        atomic_torch_save({'params': {}}, tmp_path / 'a.pth')
        atomic_write_json({'iter': 1}, tmp_path / 'metrics.json')
        write_atomic(str(tmp_path / 'a.png'), b'png bytes')
    finally:
        os.umask(old)
    for name in ('a.pth', 'metrics.json', 'a.png'):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o644, name
    assert json.loads((tmp_path / 'metrics.json').read_text()) == {'iter': 1}
    assert sorted(os.listdir(tmp_path)) == ['a.png', 'a.pth', 'metrics.json']  # no temporary files left


def test_loading_a_multihead_checkpoint_reports_no_missing_keys(model_files, tmp_path, monkeypatch, caplog):
    """BasicSR's key report must not claim the output layer is missing from a checkpoint that has it."""
    import logging
    monkeypatch.chdir(tmp_path)
    with caplog.at_level(logging.WARNING, logger='basicsr'):
        run_test_pipeline(str(tmp_path), ['-opt', model_files['opt_clean']])
    assert not [r for r in caplog.records if 'Current net - loaded net' in r.getMessage()]
    assert (tmp_path / 'results' / 'security_test' / 'metrics.json').is_file()
