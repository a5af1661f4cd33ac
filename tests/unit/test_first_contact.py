"""What a new user meets first: a CLI that answers at once, option keys that cannot be misread (a backbone's own
``num_heads``, misspellings, ``combine`` alone), model types that subclass SRModel, an optimizer BasicSR 1.4.2's
SRModel cannot build, a failing metric named with its dataset, a K=4 checkpoint in a plain network, and BasicSR's own
``build_network`` / ``build_model`` after ``import basicsr_mh``."""
import dataclasses
import pytest
import subprocess
import sys
import torch
from conftest import srmodel_options

from basicsr_mh.options import MULTIHEAD_MODEL, upgrade_network_options, upgrade_options

SWINIR = dict(
    type='SwinIR',
    upscale=1,
    img_size=16,
    window_size=4,
    embed_dim=12,
    depths=[2],
    num_heads=[2],
    mlp_ratio=2,
    upsampler='',
    resi_connection='1conv')
NAFNET = dict(type='NAFNet', width=8, enc_blk_nums=[1], dec_blk_nums=[1])


def test_cli_parses_and_prints_help_without_importing_torch_or_basicsr():
    code = ('import sys, basicsr_mh_cli\n'
            'for argv in (["--help"], ["infer", "--help"], ["train", "--help"], ["make-data", "--help"]):\n'
            '    try:\n'
            '        basicsr_mh_cli.main(argv)\n'
            '    except SystemExit:\n'
            '        pass\n'
            'print(sorted(m for m in ("torch", "basicsr", "basicsr_mh", "cv2") if m in sys.modules))')
    result = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == '[]'
    assert '--select {consensus,mean,sharpness,scores,scored-mean}' in result.stdout
    assert '--import MODULE' in result.stdout and 'KEY:SUB=VALUE' in result.stdout


def test_make_data_defaults_are_the_synthesis_defaults():
    from basicsr_mh.data.camera_trajectory import TrajectoryConfig
    from basicsr_mh.data.gopro_synth import SynthConfig
    from basicsr_mh_cli.parsers import MAKE_DATA_DEFAULTS
    both = {**dataclasses.asdict(SynthConfig()), **dataclasses.asdict(TrajectoryConfig())}
    assert {k: both[k] for k in MAKE_DATA_DEFAULTS} == MAKE_DATA_DEFAULTS


def test_multihead_block_leaves_the_backbone_its_own_num_heads():
    net, has_heads = upgrade_network_options(dict(SWINIR, multihead={'num_heads': 4, 'combine': True}))
    assert has_heads and net['num_heads'] == 4 and net['combine'] is True
    assert net['backbone'] == SWINIR  # num_heads [2] stays SwinIR's attention heads
    assert upgrade_network_options(dict(SWINIR)) == (SWINIR, False)  # a plain SwinIR file is untouched
    block, _ = upgrade_network_options(dict(NAFNET, multihead={'num_heads': 4, 'combine': True}))
    bare, _ = upgrade_network_options(dict(NAFNET, num_heads=4, combine=True))
    assert block == bare  # the block works for every backbone and means the bare form


@pytest.mark.parametrize(
    'net_opt,fragments',
    [
        (dict(SWINIR, combine=True), [
            'network_g.num_heads is ambiguous', 'SwinIR has its own `num_heads`',
            '`multihead: {num_heads: 4, combine: true}`'
        ]),
        (dict(NAFNET, num_head=4), ['network_g.num_head is neither an argument of NAFNet', 'did you mean num_heads?']),
        (dict(SWINIR, num_heads=4), ['network_g.num_heads is ambiguous']),  # an int where SwinIR has a list
        (dict(SWINIR, num_head=4), ['did you mean num_heads?']),  # SwinIR takes **kwargs: it would swallow the typo
        (dict(NAFNET, multihead={'num_head': 4}), ['network_g.multihead.num_head', 'did you mean num_heads?']),
        (dict(NAFNET, multihead={'num_heads': 4}, combine=True), ['network_g.combine stands beside the']),
        (dict(NAFNET, multihead=4), ['network_g.multihead must be a mapping']),
        (dict(NAFNET, widht=8), ['network_g.widht is not an argument of NAFNet (did you mean width?)']),
        (dict(NAFNET, combine=True), ['combine: true without num_heads']),
        (dict(NAFNET, num_heads=1, combine=True), ['combine: true with num_heads 1']),
    ])
def test_ambiguous_or_misspelled_keys_name_the_fix(net_opt, fragments):
    with pytest.raises(ValueError) as err:
        upgrade_network_options(net_opt)
    for fragment in fragments:
        assert fragment in str(err.value)
    assert str(err.value).count('Fix:') <= 1


def test_srmodel_subclasses_upgrade_like_srmodel_or_name_what_they_would_lose(pair_data):
    opt = srmodel_options(pair_data, 'swinir', num_heads=None)
    opt.update(model_type='SwinIRModel', network_g=dict(SWINIR, multihead={'num_heads': 2}))
    notes = []
    upgrade_options(opt, notes=notes)
    assert opt['model_type'] == MULTIHEAD_MODEL and opt['val']['window_size'] == 4
    assert any('val.window_size set to 4' in n for n in notes)
    opt = srmodel_options(pair_data, 'esrgan')
    opt['model_type'] = 'ESRGANModel'
    with pytest.raises(ValueError, match='ESRGANModel trains with its own .*optimize_parameters.*subclass basicsr_mh'):
        upgrade_options(opt, notes=[])
    opt['model_type'] = 'SRModell'
    with pytest.raises(ValueError, match=r'"SRModell" is not a registered model \(did you mean SRModel\?\)'):
        upgrade_options(opt, notes=[])


def test_k4_checkpoint_into_a_plain_network_points_to_export(pair_data, tmp_path):
    from basicsr_mh.options import build_network
    from basicsr_mh.preflight import check_pretrained
    multi = build_network(dict(NAFNET, num_heads=4, combine=True))
    path = tmp_path / 'k4.pth'
    torch.save({
        'params': multi.state_dict(),
        'multihead': {
            'backbone': 'NAFNet',
            'num_heads': 4,
            'combine': True
        }
    }, path)
    opt = {'path': {'pretrain_network_g': str(path)}}
    with pytest.raises(ValueError) as err:
        check_pretrained(opt, build_network(dict(NAFNET)))
    message = str(err.value)
    assert message.count('Fix:') == 1 and 'basicsr-mh export' in message and str(path) in message
    with pytest.raises(ValueError) as err:  # another head count: our load check's Fix, once
        check_pretrained(opt, build_network(dict(NAFNET, num_heads=2, combine=True)))
    assert str(err.value).count('Fix:') == 1


def test_basicsr_build_network_and_build_model_accept_the_short_form(pair_data):
    import basicsr.archs
    import basicsr.models
    import basicsr.models.sr_model

    from basicsr_mh.archs.multihead_arch import MultiHeadArch
    net = basicsr.archs.build_network(dict(NAFNET, num_heads=4, combine=True))
    assert isinstance(net, MultiHeadArch) and net.num_heads == 4
    assert basicsr.models.sr_model.build_network is basicsr.archs.build_network  # bound names replaced too
    opt = srmodel_options(pair_data, 'hooked', total_iter=2)
    opt.update(is_train=False, dist=False, rank=0, world_size=1)
    model = basicsr.models.build_model(opt)
    assert type(model).__name__ == MULTIHEAD_MODEL and model.num_outputs == 10
