"""Config, legacy params and bridge: file round trips, the invalid-value matrix, import cost, params isolation.

The golden parity (reference snapshots) lives in nbs/01_config.ipynb and nbs/01a_params.ipynb; these
tests cover what is clumsy in a notebook: files on disk, subprocess imports and a wide parametrised matrix.
"""
import dataclasses, subprocess, sys, warnings
from pathlib import Path

import pytest

from ptycho_torch_nb import params
from ptycho_torch_nb.config import (InferenceConfig, ModelConfig, PyTorchExecutionConfig, TrainingConfig,
                                    dataclass_to_legacy_dict, load_config, save_config, update_legacy_dict,
                                    validate_inference_config, validate_model_config, validate_training_config)

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _fresh_params():
    "Every test starts from the legacy defaults and leaves params.cfg as it found it."
    with params.temporary_cfg(dict(params.DEFAULT_CFG)):
        params.unseal()
        yield


# ---------------------------------------------------------------- files
@pytest.mark.parametrize('ext', ['yaml', 'yml', 'json'])
def test_training_round_trip(tmp_path, ext):
    cfg = TrainingConfig(model=ModelConfig(N=128, gridsize=2, probe_mask=True, probe_mask_diameter=30.0),
                         train_data_file=Path('data/train.npz'), test_data_file=Path('data/test.npz'),
                         output_dir=tmp_path / 'out', nphotons=1e6, n_groups=64, batch_size=8, backend='pytorch',
                         gradient_clip_val=1.0, scheduler='WarmupCosine')
    back = load_config(save_config(cfg, tmp_path / f'c.{ext}'))
    assert back == cfg
    assert isinstance(back.train_data_file, Path) and isinstance(back.output_dir, Path)
    assert isinstance(back.model, ModelConfig)
    # the bridged legacy dict is identical too (types included)
    a, b = dict(params.DEFAULT_CFG), dict(params.DEFAULT_CFG)
    update_legacy_dict(a, cfg); update_legacy_dict(b, back)
    assert a == b and {k: type(v) for k, v in a.items()} == {k: type(v) for k, v in b.items()}


def test_inference_and_execution_round_trip(tmp_path):
    inf = InferenceConfig(model=ModelConfig(gridsize=2), model_path=Path('runs/m'), test_data_file=Path('t.npz'),
                          n_groups=None, debug=True)
    assert load_config(save_config(inf, tmp_path / 'i.yaml')) == inf
    ex = PyTorchExecutionConfig(accelerator='cpu', devices='auto', recon_log_fixed_indices=[1, 2], logger_backend=None)
    assert load_config(save_config(ex, tmp_path / 'e.json')) == ex


def test_saved_yaml_is_nested_and_plain(tmp_path):
    p = save_config(TrainingConfig(model=ModelConfig(), train_data_file=Path('a.npz')), tmp_path / 'c.yaml')
    import yaml
    d = yaml.safe_load(p.read_text())
    assert d['config_type'] == 'training' and d['model']['N'] == 64 and d['train_data_file'] == 'a.npz'
    assert 'N' not in d   # model fields live under model:


def test_hand_written_yaml(tmp_path):
    p = tmp_path / 'hand.yaml'
    p.write_text("N: 128\nmodel:\n  gridsize: 2\nmodel_path: runs/m\ntest_data_file: t.npz\n")
    cfg = load_config(p)
    assert isinstance(cfg, InferenceConfig)                 # model_path present -> inference
    assert (cfg.model.N, cfg.model.gridsize, cfg.model_path) == (128, 2, Path('runs/m'))
    p.write_text(p.read_text() + "nphotons: 1e6\n")
    with pytest.raises(ValueError, match='nphotons'):       # not an InferenceConfig field
        load_config(p)
    t = tmp_path / 'train.yaml'; t.write_text("nphotons: 1e6\ngridsize: 2\n")
    cfg = load_config(t)                                    # YAML reads 1e6 as a string; it comes back a float
    assert isinstance(cfg, TrainingConfig) and cfg.nphotons == 1e6 and cfg.model.gridsize == 2


@pytest.mark.parametrize('text,match', [("nepoch: 3\n", "nepoch"), ("- 1\n- 2\n", "mapping"),
                                        ("model: 3\n", "'model' must be a mapping"), ("config_type: other\n", "config_type")])
def test_bad_files(tmp_path, text, match):
    p = tmp_path / 'bad.yaml'; p.write_text(text)
    with pytest.raises(ValueError, match=match): load_config(p)


def test_missing_and_unknown_suffix(tmp_path):
    with pytest.raises(FileNotFoundError, match='nope.yaml'): load_config(tmp_path / 'nope.yaml')
    with pytest.raises(ValueError, match=r'\.ini'): save_config(ModelConfig(), tmp_path / 'c.ini')


# ---------------------------------------------------------------- invalid-value matrix
MODEL_BAD = [('N', 100), ('N', 32), ('N', '64'), ('N', 64.0), ('N', None), ('gridsize', 0), ('gridsize', -1),
             ('gridsize', 1.5), ('gridsize', '2'), ('gridsize', True), ('n_filters_scale', 0), ('model_type', 'gan'),
             ('architecture', 'unet'), ('amp_activation', 'silu'), ('fno_input_transform', 'log'),
             ('generator_output_mode', 'complex'), ('object_big', 1), ('probe_big', None), ('probe_mask', 'no'),
             ('probe_scale', 0.0), ('probe_scale', -4.0), ('gaussian_smoothing_sigma', -1.0), ('fno_modes', 0),
             ('fno_width', -3), ('fno_blocks', 0), ('fno_cnn_blocks', -1), ('learned_input_channels', 0),
             ('max_hidden_channels', 0), ('resnet_width', -1), ('probe_mask_sigma', 0.0), ('probe_mask_diameter', 0.0),
             ('pad_object', 'yes')]
TRAINING_BAD = [('batch_size', 0), ('batch_size', -16), ('batch_size', 12), ('batch_size', 24), ('batch_size', 16.0),
                ('batch_size', '16'), ('nepochs', 0), ('nepochs', -5), ('nphotons', 0), ('nphotons', -1.0),
                ('nphotons', '1e9'), ('nphotons', float('nan')), ('nphotons', None), ('mae_weight', -0.1),
                ('mae_weight', 1.1), ('nll_weight', 2), ('backend', 'jax'), ('backend', 'torch'), ('backend', None),
                ('backend', 1), ('n_groups', 0), ('n_groups', -1), ('n_subsample', 0), ('subsample_seed', -1),
                ('neighbor_count', 0), ('neighbor_pool_size', 0), ('torch_loss_mode', 'l1'), ('optimizer', 'lion'),
                ('scheduler', 'MultiStage'), ('gradient_clip_algorithm', 'x'), ('gradient_clip_val', -1.0),
                ('momentum', -0.5), ('weight_decay', -1e-4), ('adam_beta1', 1.0), ('lr_warmup_epochs', -1),
                ('lr_min_ratio', 2.0), ('plateau_factor', 1.0), ('plateau_patience', -1), ('plateau_min_lr', -1.0),
                ('output_dir', 7), ('train_data_file', 3), ('enable_oversampling', 'no'), ('realspace_weight', -1.0)]
INFERENCE_BAD = [('n_groups', 0), ('n_images', -3), ('neighbor_count', 0), ('backend', 'keras'), ('debug', 'yes'),
                 ('model_path', None), ('output_dir', 1.5)]


@pytest.mark.parametrize('name,value', MODEL_BAD, ids=[f'{n}={v!r}' for n, v in MODEL_BAD])
def test_invalid_model_field(name, value):
    m = dataclasses.replace(ModelConfig(), **{name: value})
    with pytest.raises(ValueError, match=rf'ModelConfig\.{name}='): validate_model_config(m)
    with pytest.raises(ValueError, match=rf'ModelConfig\.{name}='): validate_training_config(TrainingConfig(model=m))


@pytest.mark.parametrize('name,value', TRAINING_BAD, ids=[f'{n}={v!r}' for n, v in TRAINING_BAD])
def test_invalid_training_field(name, value):
    with pytest.raises(ValueError, match=rf'TrainingConfig\.{name}=') as e:
        validate_training_config(TrainingConfig(model=ModelConfig(), **{name: value}))
    assert 'allowed' in str(e.value)


@pytest.mark.parametrize('name,value', INFERENCE_BAD, ids=[f'{n}={v!r}' for n, v in INFERENCE_BAD])
def test_invalid_inference_field(name, value):
    kw = dict(model_path=Path('m'), test_data_file=Path('t.npz')); kw[name] = value
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', DeprecationWarning)
        cfg = InferenceConfig(model=ModelConfig(), **kw)
    with pytest.raises(ValueError, match=rf'InferenceConfig\.{name}='): validate_inference_config(cfg, check_model_path=False)


def test_literal_errors_list_the_allowed_values():
    with pytest.raises(ValueError, match=r"\[64, 128, 256\]"): validate_model_config(ModelConfig(N=100))
    with pytest.raises(ValueError, match=r"\['tensorflow', 'pytorch'\]"):
        validate_training_config(TrainingConfig(model=ModelConfig(), backend='jax'))
    with pytest.raises(ValueError, match='power of two'):
        validate_training_config(TrainingConfig(model=ModelConfig(), batch_size=12))


@pytest.mark.parametrize('N', [64, 128, 256])
@pytest.mark.parametrize('bs', [1, 2, 16, 64])
def test_valid_values_pass(N, bs):
    validate_training_config(TrainingConfig(model=ModelConfig(N=N, gridsize=2), batch_size=bs, nphotons=1e4))


def test_model_path_lookup(tmp_path):
    inf = lambda p: InferenceConfig(model=ModelConfig(), model_path=p, test_data_file=tmp_path / 't.npz')
    with pytest.raises(ValueError, match='model_path'): validate_inference_config(inf(tmp_path / 'none'))
    (tmp_path / 'd').mkdir()
    with pytest.raises(ValueError, match='wts.h5.zip'): validate_inference_config(inf(tmp_path / 'd'))
    (tmp_path / 'd' / 'wts.h5.zip').write_bytes(b'')
    validate_inference_config(inf(tmp_path / 'd'))
    validate_inference_config(inf(tmp_path / 'd' / 'wts.h5'))        # wts.h5 -> wts.h5.zip
    with pytest.raises(ValueError, match='wts.zip'): validate_inference_config(inf(tmp_path / 'd' / 'wts'))


# ---------------------------------------------------------------- execution config
def test_execution_auto_without_torch(monkeypatch):
    monkeypatch.setitem(sys.modules, 'torch', None)        # import torch -> ImportError
    with pytest.warns(UserWarning, match='POLICY-001'):
        assert PyTorchExecutionConfig().accelerator == 'cpu'


def test_execution_never_bridged():
    with pytest.raises(TypeError, match='never bridged'):
        update_legacy_dict({}, PyTorchExecutionConfig(accelerator='cpu'))


# ---------------------------------------------------------------- legacy params
def test_params_reset_keeps_the_same_dict():
    d = params.cfg
    params.set('N', 64); params.seal()
    params.reset()
    assert params.cfg is d and params.cfg == dict(params.DEFAULT_CFG) and not params.is_sealed()


def test_default_cfg_is_read_only():
    with pytest.raises(TypeError): params.DEFAULT_CFG['N'] = 1


def test_sealed_write_is_logged(caplog):
    params.seal()
    with caplog.at_level('WARNING', logger='ptycho_torch_nb.params'):
        params.set('gridsize', 1); params.set('intensity_scale', 2.0)
    msgs = [r.getMessage() for r in caplog.records]
    assert len(msgs) == 1 and 'gridsize' in msgs[0]        # the whitelisted key is not reported


def test_update_legacy_dict_into_params_then_derived():
    update_legacy_dict(params.cfg, TrainingConfig(model=ModelConfig(N=128, gridsize=2)))
    assert (params.get('bigN'), params.get_padding_size(), params.get_padded_size()) == (132, 14, 142)
    assert 'bigN' in params.params()


def test_model_path_stays_a_path_before_update():
    inf = InferenceConfig(model=ModelConfig(), model_path=Path('m'), test_data_file=Path('t.npz'))
    assert isinstance(dataclass_to_legacy_dict(inf)['model_path'], Path)   # reference quirk, kept
    d = {}; update_legacy_dict(d, inf)
    assert d['model_path'] == 'm' and 'n_groups' not in d


# ---------------------------------------------------------------- import cost
def test_config_imports_are_cheap():
    code = ("import sys; import ptycho_torch_nb.config, ptycho_torch_nb.params, ptycho_torch_nb.config_params, "
            "ptycho_torch_nb.config_bridge; "
            "print(sorted(m for m in ('torch', 'lightning', 'matplotlib', 'yaml', 'numpy') if m in sys.modules))")
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, cwd=REPO, check=True).stdout
    assert out.strip() == '[]', out
