"""Bad options, checkpoints and data fail before the first iteration with an error naming the key (and the file),
and never touch an existing experiment."""
import copy
import cv2
import os
import pytest
import shutil
import torch
import warnings
from basicsr.utils.registry import ARCH_REGISTRY
from conftest import srmodel_options, write_options
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from basicsr_mh.cli_options import parse_options
from basicsr_mh.preflight import preflight
from basicsr_mh.train import train_pipeline


class SigmoidTailNet(nn.Module):
    """conv -> sigmoid: a tail that is not additive (heads cannot be carried as deltas)."""

    def __init__(self, img_channel=3):
        super().__init__()
        self.conv = nn.Conv2d(img_channel, 3, 3, padding=1)

    def forward(self, x):
        return torch.sigmoid(self.conv(x))


if 'SigmoidTailNet' not in ARCH_REGISTRY:
    ARCH_REGISTRY.register(SigmoidTailNet)


def check(tmp_path, opt):
    """parse_options + preflight of ``opt`` written to a YAML file (in-process, no folders written)."""
    path = write_options(tmp_path / f'opt_{len(os.listdir(tmp_path))}.yml', opt)
    parsed, _ = parse_options(str(tmp_path), is_train=True, argv=['-opt', path])
    preflight(parsed)
    return parsed


def expect_error(tmp_path, opt, *words):
    with pytest.raises((ValueError, FileNotFoundError)) as info:
        check(tmp_path, opt)
    for word in words:
        assert word in str(info.value), str(info.value)
    return str(info.value)


VALUES = st.one_of(st.none(), st.booleans(), st.integers(-3, 20), st.floats(-2, 20, allow_nan=False),
                   st.text(max_size=4))


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    num_heads=VALUES,
    combine=VALUES,
    head_layers=st.one_of(st.none(), st.just('ending'), st.just('intro'), st.text(max_size=6)),
    loss=st.sampled_from(['L1Loss', 'PSNRLoss', 'MSELoss', 'CharbonnierLoss', 'NoSuchLoss', 'l1loss']),
    arch=st.sampled_from(['NAFNet', 'NAFNet', 'NAFNet', 'NAFNett']))
def test_generated_options_clean_or_named_error(pair_data, tmp_path, num_heads, combine, head_layers, loss, arch):
    opt = srmodel_options(pair_data, 'gen', num_heads=None)
    opt['network_g'].update(type=arch, num_heads=num_heads, combine=combine)
    if head_layers is not None:
        opt['network_g']['head_layers'] = head_layers
    opt['train']['pixel_opt']['type'] = loss
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        try:
            check(tmp_path, opt)
        except (ValueError, FileNotFoundError) as err:
            message = str(err)
            assert any(
                key in message for key in ('num_heads', 'combine', 'head_layers', 'pixel_opt.type', 'network_g.type',
                                           'network_g.backbone.type')), message
            assert 'Traceback' not in message


def test_huge_head_count_is_refused_and_above_16_warns(pair_data, tmp_path):
    opt = srmodel_options(pair_data, 'huge', num_heads=100000)
    expect_error(tmp_path, opt, 'network_g.num_heads', 'Fix')
    opt = srmodel_options(pair_data, 'many', num_heads=17, combine=False)
    with pytest.warns(UserWarning, match='num_heads=17'):
        check(tmp_path, opt)


def test_unknown_backbone_and_loss(pair_data, tmp_path):
    opt = srmodel_options(pair_data, 'bad')
    opt['network_g']['type'] = 'NAFNett'
    expect_error(tmp_path, opt, 'network_g.type', 'NAFNet')
    opt = srmodel_options(pair_data, 'bad')
    opt['train']['pixel_opt']['type'] = 'L2Loss'
    expect_error(tmp_path, opt, 'train.pixel_opt.type')


def test_head_layers_naming_no_layer_and_non_additive_tail(pair_data, tmp_path):
    opt = srmodel_options(pair_data, 'bad', head_layers='no_such_conv')
    expect_error(tmp_path, opt, 'head_layers', 'no_such_conv')
    opt = srmodel_options(pair_data, 'bad')
    opt['network_g'] = {'type': 'SigmoidTailNet', 'num_heads': 2, 'combine': False}
    expect_error(tmp_path, opt, 'conv', 'additive')


def test_checkpoint_of_other_head_count_or_backbone(pair_data, tmp_path):
    good = check(tmp_path, srmodel_options(pair_data, 'k2', num_heads=2, combine=False))
    from basicsr.archs import build_network
    k2 = tmp_path / 'k2.pth'
    torch.save({'params': build_network(good['network_g']).state_dict()}, k2)
    opt = srmodel_options(pair_data, 'bad')
    opt['path']['pretrain_network_g'] = str(k2)
    expect_error(tmp_path, opt, 'path.pretrain_network_g', str(k2), 'num_heads')
    other = tmp_path / 'other.pth'
    torch.save({'params': SigmoidTailNet().state_dict()}, other)
    opt['path']['pretrain_network_g'] = str(other)
    expect_error(tmp_path, opt, 'path.pretrain_network_g', str(other), 'Fix')
    opt['path']['pretrain_network_g'] = str(tmp_path / 'missing.pth')
    expect_error(tmp_path, opt, 'missing.pth')
    broken = tmp_path / 'broken.pth'
    broken.write_bytes(k2.read_bytes()[:100])
    opt['path']['pretrain_network_g'] = str(broken)
    expect_error(tmp_path, opt, 'broken.pth', 'cannot be read')


def _copy_pairs(pair_data, tmp_path):
    gt, lq = tmp_path / 'data' / 'gt', tmp_path / 'data' / 'lq'
    shutil.copytree(pair_data['train'][0], gt)
    shutil.copytree(pair_data['train'][1], lq)
    first = sorted(os.listdir(lq))[0]
    return str(gt), str(lq), first


def test_bad_data_names_the_file(pair_data, tmp_path):
    opt = srmodel_options(pair_data, 'bad')
    opt['datasets']['train']['dataroot_lq'] = str(tmp_path / 'nowhere')
    expect_error(tmp_path, opt, 'datasets.train.dataroot_lq', 'nowhere')
    gt, lq, first = _copy_pairs(pair_data, tmp_path)
    opt = srmodel_options(pair_data, 'bad')
    opt['datasets']['train'].update(dataroot_gt=gt, dataroot_lq=lq)
    img = cv2.imread(os.path.join(lq, first))
    cv2.imwrite(os.path.join(lq, first), cv2.resize(img, (img.shape[1] // 2, img.shape[0])))
    expect_error(tmp_path, opt, 'datasets.train', first, 'differs in size')
    with open(os.path.join(lq, first), 'wb') as f:
        f.write(b'not a png')
    expect_error(tmp_path, opt, 'datasets.train', first, 'cannot be read')
    os.remove(os.path.join(lq, first))
    expect_error(tmp_path, opt, 'datasets.train')


def test_channel_mismatch(pair_data, tmp_path):
    opt = srmodel_options(pair_data, 'bad', img_channel=1)
    expect_error(tmp_path, opt, 'img_channel', '3-channel')


def test_existing_experiment_untouched_and_nothing_created(pair_data, tmp_path):
    opt = srmodel_options(pair_data, 'keep', num_heads=0)
    path = write_options(tmp_path / 'bad.yml', opt)
    with pytest.raises(ValueError, match='num_heads'):
        train_pipeline(str(tmp_path), ['-opt', path])
    assert not (tmp_path / 'experiments').exists()
    (tmp_path / 'experiments' / 'keep').mkdir(parents=True)
    (tmp_path / 'experiments' / 'keep' / 'marker').write_text('x')
    for bad in (dict(img_channel=1), dict(head_layers='nope')):
        opt = srmodel_options(pair_data, 'keep', **bad)
        path = write_options(tmp_path / 'bad.yml', copy.deepcopy(opt))
        with pytest.raises(ValueError):
            train_pipeline(str(tmp_path), ['-opt', path])
        assert os.listdir(tmp_path / 'experiments') == ['keep']
        assert (tmp_path / 'experiments' / 'keep' / 'marker').is_file()
    assert not (tmp_path / 'tb_logger').exists()
