"""Option upgrades (short form -> MultiHeadArch, SRModel -> multi-head model) and early, clear option errors."""
import copy
import os
import pytest
from conftest import REPO_ROOT, srmodel_options, write_options

from basicsr_mh.cli_options import parse_options
from basicsr_mh.options import upgrade_network_options, upgrade_options


def test_short_form_becomes_long_form():
    net, heads = upgrade_network_options({'type': 'NAFNet', 'width': 8, 'num_heads': 4, 'combine': True})
    assert heads
    assert net == {'type': 'MultiHeadArch', 'num_heads': 4, 'combine': True, 'backbone': {'type': 'NAFNet', 'width': 8}}
    # idempotent
    assert upgrade_network_options(net) == (net, True)


def test_one_head_without_combine_is_the_plain_backbone():
    net, heads = upgrade_network_options({'type': 'NAFNet', 'width': 8, 'num_heads': 1, 'combine': False})
    assert not heads and net == {'type': 'NAFNet', 'width': 8}


def test_srmodel_upgraded_with_one_log_line(pair_data):
    opt = srmodel_options(pair_data, 'x')
    notes = []
    upgrade_options(opt, notes=notes)
    assert opt['model_type'] == 'MultiHeadImageRestorationModel'
    assert sum('upgraded to MultiHeadImageRestorationModel' in n for n in notes) == 1
    single = srmodel_options(pair_data, 'y', num_heads=None)
    upgrade_options(single, notes=[])
    assert single['model_type'] == 'SRModel' and single['network_g']['type'] == 'NAFNet'


@pytest.mark.parametrize('net_update, fragment', [
    ({
        'num_heads': 0
    }, 'num_heads must be >= 1'),
    ({
        'num_heads': 2.5
    }, 'num_heads must be an integer'),
    ({
        'num_heads': 'four'
    }, 'num_heads must be an integer'),
    ({
        'num_heads': True
    }, 'num_heads must be an integer'),
    ({
        'combine': 'yes'
    }, 'combine must be true or false'),
    ({
        'type': 'NAFNett'
    }, '"NAFNett" is not a registered architecture (did you mean NAFNet?)'),
])
def test_bad_network_options_name_the_key(pair_data, net_update, fragment):
    opt = srmodel_options(pair_data, 'bad')
    opt['network_g'].update(net_update)
    with pytest.raises(ValueError) as err:
        upgrade_options(opt, notes=[])
    assert fragment in str(err.value)


def test_unknown_loss_and_model_type(pair_data):
    opt = srmodel_options(pair_data, 'bad')
    opt['train']['pixel_opt']['type'] = 'L1Los'
    with pytest.raises(ValueError, match='train.pixel_opt.type "L1Los"'):
        upgrade_options(opt, notes=[])
    opt = srmodel_options(pair_data, 'bad')
    opt['model_type'] = 'SRGANModel'
    with pytest.raises(ValueError, match='SRGANModel trains with its own init_training_settings, optimize_parameters'):
        upgrade_options(opt, notes=[])


def test_parse_options_fails_before_writing(pair_data, tmp_path):
    opt = srmodel_options(pair_data, 'missing_data')
    opt['datasets']['train']['dataroot_lq'] = str(tmp_path / 'nope')
    path = write_options(tmp_path / 'o.yml', opt)
    with pytest.raises(FileNotFoundError, match='datasets.train.dataroot_lq'):
        parse_options(str(tmp_path), True, ['-opt', path])
    assert not (tmp_path / 'experiments').exists()


def test_force_yml_and_debug(pair_data, tmp_path):
    opt = srmodel_options(pair_data, 'forced')
    path = write_options(tmp_path / 'o.yml', opt)
    parsed, _ = parse_options(str(tmp_path), True, ['-opt', path, '--debug', '--force_yml', 'train:ema_decay=0.5'])
    assert parsed['train']['ema_decay'] == 0.5
    assert parsed['name'] == 'debug_forced'
    assert parsed['path']['experiments_root'] == os.path.join(str(tmp_path), 'experiments', 'debug_forced')
    assert parsed['model_type'] == 'MultiHeadImageRestorationModel'
    original = copy.deepcopy(opt)
    assert original['network_g']['num_heads'] == 4  # the file's dict is untouched


def test_option_files_with_duplicate_keys_are_refused_naming_both_lines(pair_data, tmp_path):
    from basicsr_mh.cli_options import load_option_file, parse_options
    path = tmp_path / 'dup.yml'
    path.write_text('name: dup\nnetwork_g:\n  type: NAFNet\n  width: 16\n  num_heads: 4\n  width: 32\n')
    with pytest.raises(ValueError, match=r'key "width" appears twice in the same mapping, on lines 4 and 6'):
        load_option_file(str(path))
    with pytest.raises(ValueError, match='appears twice'):
        parse_options(str(tmp_path), argv=['-opt', str(path)])
    # the same key in different mappings, and YAML merge keys overridden on purpose, are fine
    path.write_text('base: &b {type: NAFNet, width: 16}\nnetwork_g:\n  <<: *b\n  width: 32\nnetwork_d: {width: 8}\n')
    assert load_option_file(str(path))['network_g'] == {'type': 'NAFNet', 'width': 32}


def test_every_shipped_option_file_loads_as_basicsr_loads_it():
    import glob
    import yaml
    from basicsr.utils.options import ordered_yaml

    from basicsr_mh.cli_options import load_option_file
    root = os.path.join(REPO_ROOT, 'options')
    paths = sorted(glob.glob(os.path.join(root, '**', '*.yml'), recursive=True))
    assert len(paths) > 20
    for path in paths:
        with open(path) as f:
            assert load_option_file(path) == yaml.load(f, Loader=ordered_yaml()[0]), path
