"""Issue 15, reliability: every entry point validates before it groups, builds or writes; archive reads are bounded;
runs never mix; one seed gives bitwise-identical weights; every write path survives a SIGKILL.

Each case asserts the exception type (or the CLI's exit code 2 and one line), that the message names the culprit,
and that nothing was written or overwritten. Workloads are tiny (N=64, 16 patterns, 1 epoch)."""
import dataclasses, io, json, os, pickle, signal, struct, subprocess, sys, textwrap, zipfile
from pathlib import Path
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent


def _env(**extra):
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get('PYTHONPATH', ''))
    for k in ('PTYCHO_TORCH_DEBUG', 'PTYCHO_TORCH_NB_FAULT', 'IN_TEST'): env.pop(k, None)
    env.update(extra)
    return env


def _snapshot(folder: Path) -> dict:
    "{relative path: bytes} of every file under `folder` (to prove nothing was written or overwritten)."
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob('*')) if p.is_file()} if folder.exists() else {}


def _one_line(err: str):
    lines = [l for l in err.strip().splitlines() if l.strip()]
    assert len(lines) == 1 and 'Traceback' not in err, err
    return lines[0]


# ------------------------------------------------------------------ 1. the one validation gate
BAD_FIELDS = [  # (dataclass, field, value): each must be refused naming the field, the value and what is allowed
    ('TrainingConfig', 'nphotons', 0.0), ('TrainingConfig', 'nphotons', float('nan')), ('TrainingConfig', 'nphotons', -1e6),
    ('TrainingConfig', 'nphotons', float('inf')), ('TrainingConfig', 'nepochs', 0), ('TrainingConfig', 'n_groups', 0),
    ('TrainingConfig', 'batch_size', 3), ('TrainingConfig', 'batch_size', 0), ('ModelConfig', 'gridsize', -1),
    ('ModelConfig', 'gridsize', 0), ('ModelConfig', 'N', 48), ('ModelConfig', 'n_filters_scale', 0),
]


def _bad_training(cls_name, field, value, out=None):
    from ptycho_torch_nb.config import ModelConfig, TrainingConfig
    model = dataclasses.replace(ModelConfig(), **{field: value}) if cls_name == 'ModelConfig' else ModelConfig()
    kw = {field: value} if cls_name == 'TrainingConfig' else {}
    return TrainingConfig(model=model, n_groups=kw.pop('n_groups', 8), batch_size=kw.pop('batch_size', 4), nepochs=kw.pop('nepochs', 1),
                          backend='pytorch', output_dir=out or Path('unused'), **kw)


@pytest.mark.parametrize('cls_name,field,value', BAD_FIELDS)
def test_gate_names_field_value_and_range(cls_name, field, value):
    from ptycho_torch_nb.config import validate_run
    with pytest.raises(ValueError, match=rf"{cls_name}\.{field}={value!r}.*allowed".replace('(', r'\(').replace(')', r'\)')):
        validate_run(_bad_training(cls_name, field, value))


@pytest.mark.parametrize('cls_name,field,value', BAD_FIELDS)
def test_api_workflow_refuses_before_any_work(cls_name, field, value, tiny_files, tmp_path, monkeypatch):
    "train_cdi_model_torch / run_cdi_example_torch: ValueError naming the field; no output folder, no grouping cache."
    from ptycho_torch_nb import workflow as W
    train, _ = tiny_files
    out, cache = tmp_path / 'run', tmp_path / 'cache'
    monkeypatch.setenv('PTYCHO_TORCH_NB_CACHE', str(cache))   # the cache root a grouping of this file would write to
    cfg = dataclasses.replace(_bad_training(cls_name, field, value, out), subsample_seed=0)   # seeded: a grouping is cached
    ec = W.default_execution_config(accelerator='cpu', logger_backend=None)
    for fn in (W.train_cdi_model_torch, W.run_cdi_example_torch):
        with pytest.raises(ValueError, match=rf"{cls_name}\.{field}="):
            fn(train, None, cfg, ec) if fn is W.train_cdi_model_torch else fn(train, None, cfg, execution_config=ec)
    assert not out.exists()
    assert not cache.exists() or not any(cache.iterdir())


@pytest.mark.parametrize('text,needle', [
    ("nphotons: 0\n", 'TrainingConfig.nphotons=0'), ("nepochs: 0\n", 'TrainingConfig.nepochs=0'),
    ("n_groups: 0\n", 'TrainingConfig.n_groups=0'), ("batch_size: 3\n", 'TrainingConfig.batch_size=3'),
    ("model:\n  gridsize: -1\n", 'ModelConfig.gridsize=-1'), ("nphotons: .nan\n", 'TrainingConfig.nphotons=nan'),
])
def test_load_config_validates_naming_the_file(tmp_path, text, needle):
    from ptycho_torch_nb.config import load_config
    p = tmp_path / 'run.yaml'; p.write_text(text)
    with pytest.raises(ValueError) as e: load_config(p)
    assert str(p) in str(e.value) and needle in str(e.value)


@pytest.mark.parametrize('training_kw,needle', [(dict(epochs=0), 'nepochs=0'), (dict(batch_size=3), 'batch_size=3'),
                                                (dict(n_groups=0), 'n_groups=0')])
def test_config_bridge_validates(training_kw, needle):
    from ptycho_torch_nb.config_bridge import to_model_config, to_training_config
    from ptycho_torch_nb.config_params import DataConfig, ModelConfig, TrainingConfig
    d, m = DataConfig(), ModelConfig()
    with pytest.raises(ValueError, match=needle):
        to_training_config(to_model_config(d, m), d, m, TrainingConfig(**training_kw),
                           overrides=dict(nphotons=1e9, n_groups=training_kw.get('n_groups', 8),
                                          train_data_file=Path('t.npz'), test_data_file=Path('t.npz')))


@pytest.mark.parametrize('flags,needle', [
    (['--batch_size', '3'], 'batch_size=3'), (['--batch_size', '0'], 'batch_size'), (['--gridsize', '-1'], 'gridsize'),
    (['--gridsize', '0'], 'gridsize'), (['--nepochs', '0'], 'nepochs'), (['--n_groups', '0'], 'n_groups'),
    (['--nphotons', '0'], 'nphotons'), (['--nphotons', 'nan'], 'nphotons'), (['--nphotons', '-1e6'], 'nphotons'),
    (['--M', '0'], 'M'), (['--M', '65'], 'M=65'), (['--seed', '-1'], 'seed=-1'), (['--N', '48'], 'N'),
])
def test_train_cli_refuses_bad_values(flags, needle, tiny_files, tmp_path, capsys):
    from ptycho_torch_nb import cli
    train, _ = tiny_files
    out = tmp_path / 'run'
    try: code = cli.train_main(['--train_data_file', str(train), '--output_dir', str(out), '--accelerator', 'cpu', '--quiet', *flags])
    except SystemExit as e: code = e.code
    line = _one_line(capsys.readouterr().err)
    assert code == 2 and needle in line and line.startswith('ptycho-torch-train: error:'), line
    assert not out.exists()


@pytest.mark.parametrize('meta', [{'nphotons': 0}, {'nphotons': -1e6}, {'nphotons': float('nan')}])
def test_metadata_nphotons_checked_like_the_field(meta, tiny_files, tmp_path, capsys):
    "A file's `_metadata` nphotons goes through the same rule: from_file, and the CLI that reads it as a default."
    from ptycho_torch_nb import cli
    from ptycho_torch_nb.raw_data import RawDataTorch
    src = dict(np.load(tiny_files[0]))
    p = tmp_path / 'meta.npz'; np.savez(p, **{**src, '_metadata': np.asarray(json.dumps(meta))})
    with pytest.raises(ValueError, match=r"meta\.npz: _metadata: nphotons="): RawDataTorch.from_file(p)
    code = cli.train_main(['--train_data_file', str(p), '--output_dir', str(tmp_path / 'o'), '--accelerator', 'cpu', '--quiet'])
    line = _one_line(capsys.readouterr().err)
    assert code == 2 and 'meta.npz' in line and 'nphotons' in line
    assert not (tmp_path / 'o').exists()


@pytest.mark.parametrize('settings_kw,needle', [
    (dict(nepochs=0), 'nepochs=0'), (dict(batch_size=3), 'batch_size=3'), (dict(gridsize=0), 'gridsize=0'),
    (dict(gridsize=-1), 'gridsize=-1'), (dict(n_groups=0), 'n_groups=0'), (dict(nphotons=float('nan')), 'nphotons=nan'),
    (dict(nphotons=-1e6), 'nphotons'), (dict(stitch_crop=0), 'M=0'), (dict(seed=-1), 'seed=-1'),
])
def test_ptychodus_settings_validated_before_writing(settings_kw, needle, tiny_files, tmp_path):
    pytest.importorskip('ptychodus')
    from ptycho_torch_nb.ptychodus import ReconstructorSettings, train_model
    out = tmp_path / 'model'
    with pytest.raises(ValueError, match=needle):
        train_model(tiny_files[0], out, ReconstructorSettings(accelerator='cpu', **settings_kw))
    assert not out.exists()


def test_run_options_rules():
    from ptycho_torch_nb.config import validate_run_options
    for kw, needle in [(dict(time_budget_s=-5), 'time_budget_s=-5'), (dict(time_budget_s=float('nan')), 'time_budget_s=nan'),
                       (dict(M=0), 'M=0'), (dict(seed=2**32), 'seed='), (dict(nepochs=0), 'nepochs=0')]:
        with pytest.raises(ValueError, match=needle): validate_run_options('cli', N=64, **kw)
    validate_run_options('cli', N=64, time_budget_s=30, M=64, seed=0)


# ------------------------------------------------------------------ 2. data checks at load
def _scan(**over):
    rng = np.random.default_rng(0)
    M, N = 9, 8
    base = dict(xcoords=np.arange(M, dtype=float) * 3, ycoords=np.arange(M, dtype=float) % 3 * 3,
                diff3d=rng.random((M, N, N)).astype(np.float32), probeGuess=np.ones((N, N), np.complex64))
    base.update(over)
    return {k: v for k, v in base.items() if v is not None}


COUNTS = np.random.default_rng(1).poisson(40, (9, 8, 8))
CUBE = np.random.default_rng(2).random((8, 8, 8)).astype(np.float32)
DATA_CASES = [  # (id, arrays, needle)
    ('empty', _scan(xcoords=np.zeros(0), ycoords=np.zeros(0), diff3d=np.zeros((0, 8, 8), np.float32)), "'xcoords' is empty"),
    ('all_zero', _scan(diff3d=np.zeros((9, 8, 8), np.float32)), "'diff3d' is all zero"),
    ('nan', _scan(diff3d=np.where(np.arange(9 * 64).reshape(9, 8, 8) == 70, np.nan, 1.5).astype(np.float32)), 'NaN/Inf'),
    ('inf', _scan(diff3d=np.full((9, 8, 8), np.inf, np.float32)), 'NaN/Inf'),
    ('int_counts', _scan(diff3d=COUNTS), 'looks like intensities'),
    ('float_counts', _scan(diff3d=COUNTS.astype(np.float32)), 'whole number'),
    ('ambiguous_layout', _scan(xcoords=np.arange(8.0), ycoords=np.arange(8.0), diff3d=CUBE), 'layout is ambiguous'),
    ('negative', _scan(diff3d=-np.ones((9, 8, 8), np.float32)), 'negative'),
]


@pytest.mark.parametrize('case,arrays,needle', DATA_CASES, ids=[c[0] for c in DATA_CASES])
def test_bad_data_refused_at_load(case, arrays, needle, tmp_path):
    from ptycho_torch_nb.raw_data import RawDataTorch
    p = tmp_path / f'{case}.npz'; np.savez(p, **arrays)
    with pytest.raises(ValueError) as e: RawDataTorch.from_file(p)
    assert str(p) in str(e.value) and needle in str(e.value), str(e.value)


def test_flags_resolve_counts_and_layout(tmp_path):
    from ptycho_torch_nb.raw_data import RawDataTorch
    p = tmp_path / 'counts.npz'; np.savez(p, **_scan(diff3d=COUNTS))
    np.testing.assert_allclose(RawDataTorch.from_file(p, diffraction_is_intensity=True).diff3d, np.sqrt(COUNTS), rtol=1e-6)
    assert RawDataTorch.from_file(p, diffraction_is_intensity=False).diff3d.dtype == COUNTS.dtype
    q = tmp_path / 'cube.npz'; np.savez(q, **_scan(xcoords=np.arange(8.0), ycoords=np.arange(8.0), diff3d=CUBE))
    np.testing.assert_array_equal(RawDataTorch.from_file(q, diffraction_layout='NNM').diff3d, np.moveaxis(CUBE, 2, 0))
    raw = RawDataTorch.from_file(q, diffraction_layout='MNN')
    raw.to_file(tmp_path / 'back.npz')                       # to_file records the layout: no ambiguity on reading
    np.testing.assert_array_equal(RawDataTorch.from_file(tmp_path / 'back.npz').diff3d, CUBE)


def test_unused_keys_are_never_read(tmp_path, monkeypatch):
    from ptycho_torch_nb.raw_data import RawDataTorch
    p = tmp_path / 'big.npz'; np.savez(p, **_scan(), huge_unrelated=np.zeros((512, 512)))
    reads, orig = [], np.lib.npyio.NpzFile.__getitem__
    monkeypatch.setattr(np.lib.npyio.NpzFile, '__getitem__', lambda self, k: (reads.append(k), orig(self, k))[1])
    RawDataTorch.from_file(p)
    assert 'huge_unrelated' not in reads and 'diff3d' in reads


def test_grouping_needs_explicit_gridsize():
    from ptycho_torch_nb.raw_data import RawDataTorch
    from ptycho_torch_nb import params
    raw = RawDataTorch(**{k: v for k, v in _scan().items()})
    with params.temporary_cfg():
        params.cfg['gridsize'] = 2                            # the data layer no longer reads params.cfg
        with pytest.raises(TypeError, match='needs gridsize='): raw.generate_grouped_data(8, nsamples=4, seed=0, use_cache=False)
    with pytest.raises(ValueError, match='gridsize=0'): raw.generate_grouped_data(8, nsamples=4, seed=0, gridsize=0, use_cache=False)
    assert raw.generate_grouped_data(8, nsamples=4, seed=0, gridsize=1, use_cache=False)['X_full'].shape == (4, 8, 8, 1)


# ------------------------------------------------------------------ 3. archives
@pytest.fixture(scope='module')
def archive(tmp_path_factory):
    "A real wts.h5.zip of an untrained N=64 model (n_filters_scale 1) and its bytes."
    from ptycho_torch_nb.config import ModelConfig, TrainingConfig
    from ptycho_torch_nb.model import PtychoPINN_Lightning
    from ptycho_torch_nb.persistence import save_torch_bundle
    from ptycho_torch_nb import params
    d = tmp_path_factory.mktemp('archive')
    cfg = TrainingConfig(model=ModelConfig(N=64, gridsize=1, n_filters_scale=1), backend='pytorch')
    m = PtychoPINN_Lightning(model_config=dict(N=64, gridsize=1, n_filters_scale=1))
    with params.temporary_cfg():
        path = save_torch_bundle({'autoencoder': m, 'diffraction_to_obj': m}, d / 'wts.h5', cfg)
    return path, path.read_bytes()


def _rewrite(good: bytes, out: Path, replace=None, drop=()) -> Path:
    "A copy of the archive with members replaced/dropped."
    replace = replace or {}
    with zipfile.ZipFile(io.BytesIO(good)) as src, zipfile.ZipFile(out, 'w') as dst:
        for info in src.infolist():
            if info.filename in drop: continue
            dst.writestr(info.filename, replace.get(info.filename, src.read(info.filename)))
    return out


def _declare_size(good: bytes, member: str, size: int) -> bytes:
    "The archive with `member`'s uncompressed size in the central directory changed to `size` (a lying header)."
    data = bytearray(good); name = member.encode()
    i = 0
    while True:
        i = data.index(b'PK\x01\x02', i)
        n = struct.unpack('<H', data[i + 28:i + 30])[0]
        if data[i + 46:i + 46 + n] == name: break
        i += 4
    data[i + 24:i + 28] = struct.pack('<I', size)
    return bytes(data)


def _load(path, **kw):
    from ptycho_torch_nb.persistence import load_torch_bundle
    from ptycho_torch_nb import params
    with params.temporary_cfg(): return load_torch_bundle(path, **kw)


@pytest.mark.parametrize('member,kind', [('manifest.json', 'json'), ('diffraction_to_obj/model.ckpt', 'checkpoint'),
                                         ('diffraction_to_obj/params.json', 'json')])
def test_declared_member_size_refused_before_reading(archive, tmp_path, member, kind, monkeypatch):
    import torch
    path, good = archive
    bomb = tmp_path / 'bomb.zip'; bomb.write_bytes(_declare_size(good, member, 2**31))
    monkeypatch.setattr(torch, 'load', lambda *a, **k: pytest.fail('torch.load reached'))
    with pytest.raises(ValueError, match=rf"bomb\.zip: archive member '{member}' declares 2147483648 bytes, over the '{kind}' limit"):
        _load(bomb)


def test_limits_are_configurable_and_bound_actual_bytes(archive, tmp_path):
    path, good = archive
    with pytest.raises(ValueError, match="over the 'checkpoint' limit of 1000 bytes"): _load(path, limits={'checkpoint': 1000})
    liar = tmp_path / 'liar.zip'; liar.write_bytes(_declare_size(good, 'diffraction_to_obj/model.ckpt', 100))
    with pytest.raises(ValueError, match=r"liar\.zip: (archive member|checkpoint) 'diffraction_to_obj/model\.ckpt'"): _load(liar)
    models, params = _load(path)                              # the good archive still loads
    assert params['N'] == 64


def _with_checkpoint(good: bytes, out: Path, edit) -> Path:
    import torch
    with zipfile.ZipFile(io.BytesIO(good)) as zf: ck = torch.load(io.BytesIO(zf.read('diffraction_to_obj/model.ckpt')), weights_only=True)
    edit(ck); b = io.BytesIO(); torch.save(ck, b)
    return _rewrite(good, out, {'diffraction_to_obj/model.ckpt': b.getvalue()})


def test_huge_architecture_refused_before_allocation(archive, tmp_path):
    """n_filters_scale=1000 in the hyper-parameters (2 TB of weights): refused by the config gate; 16, the widest a config
    allows, over a 64 MiB 'model' limit: refused from the meta-device skeleton, before anything is allocated."""
    path, good = archive
    p = _with_checkpoint(good, tmp_path / 'huge.zip', lambda ck: ck['hyper_parameters']['model_config'].update(n_filters_scale=1000))
    with pytest.raises(ValueError, match=r"n_filters_scale=1000 is invalid: allowed a value in 1\.\.16"): _load(p)
    p = _with_checkpoint(good, tmp_path / 'wide.zip', lambda ck: ck['hyper_parameters']['model_config'].update(n_filters_scale=16))
    with pytest.raises(ValueError, match=r"wide\.zip: diffraction_to_obj/model\.ckpt: the hyper-parameters describe .* GiB, over the 'model' limit"):
        _load(p, limits={'model': 64 * 2**20})
    p = _with_checkpoint(good, tmp_path / 'wider.zip', lambda ck: ck['hyper_parameters']['model_config'].update(n_filters_scale=2))
    with pytest.raises(ValueError, match='shape mismatches'): _load(p)


@pytest.mark.parametrize('key,value', [('N', 128), ('gridsize', 2)])
def test_params_and_checkpoint_must_agree(archive, tmp_path, key, value):
    path, good = archive
    with zipfile.ZipFile(io.BytesIO(good)) as zf: pj = json.loads(zf.read('diffraction_to_obj/params.json'))
    pj[key] = value
    p = _rewrite(good, tmp_path / 'mixed.zip', {'diffraction_to_obj/params.json': json.dumps(pj)})
    with pytest.raises(ValueError, match=rf"params snapshot says {key}={value} but the checkpoint was built with {key}="):
        _load(p)


def test_pickle_fallback_refuses_torch_objects(archive, tmp_path):
    import torch
    path, good = archive
    with zipfile.ZipFile(io.BytesIO(good)) as zf: m = json.loads(zf.read('manifest.json'))
    m['probe'] = torch.ones(2)
    p = _rewrite(good, tmp_path / 'dill.zip', {'manifest.dill': pickle.dumps(m)}, drop=('manifest.json',))
    with pytest.raises(ValueError, match=r"manifest\.dill: refusing to unpickle torch"): _load(p)


@pytest.mark.parametrize('umask,mode', [(0o027, 0o640), (0o002, 0o664), (0o077, 0o600)])
def test_saved_files_follow_the_umask(tmp_path, umask, mode):
    "Atomic saves (configs, archives, NPZ) and cache entries get the mode of any new file/folder, not mkstemp's 0600."
    from ptycho_torch_nb.config import TrainingConfig, ModelConfig, save_config
    from ptycho_torch_nb.raw_data import RawDataTorch
    old = os.umask(umask)
    try:
        p = save_config(TrainingConfig(model=ModelConfig()), tmp_path / 'c.json')
        raw = RawDataTorch(**_scan()); q = raw.to_file(tmp_path / 's.npz')
        RawDataTorch.from_file(q).generate_grouped_data(8, nsamples=4, seed=0, gridsize=1, use_cache=True, cache_dir=tmp_path / 'cache')
    finally: os.umask(old)
    assert p.stat().st_mode & 0o777 == mode and q.stat().st_mode & 0o777 == mode
    entries = [e for e in (tmp_path / 'cache').iterdir() if not e.name.startswith('.')]
    assert len(entries) == 1 and entries[0].stat().st_mode & 0o777 == mode | (0o111 & ~umask)


# ------------------------------------------------------------------ 4. runs never mix
def test_used_output_folder_refused_unless_overwrite(tmp_path):
    from ptycho_torch_nb.core import prepare_output_dir
    out = tmp_path / 'run'; (out / 'checkpoints').mkdir(parents=True)
    (out / 'wts.h5.zip').write_bytes(b'first run'); (out / 'notes.txt').write_text('mine')
    before = _snapshot(out)
    with pytest.raises(FileExistsError, match=rf"{out}: holds a previous run \(wts\.h5\.zip, checkpoints\).*--overwrite"):
        prepare_output_dir(out)
    assert _snapshot(out) == before
    prepare_output_dir(out, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == ['.previous_run', 'notes.txt']   # only run artifacts, set aside
    assert (out / '.previous_run' / 'wts.h5.zip').read_bytes() == b'first run'      # whole, should the new run be stopped
    with pytest.raises(NotADirectoryError, match='notes.txt'): prepare_output_dir(out / 'notes.txt')


def test_overwrite_says_where_the_previous_run_went(tmp_path, caplog):
    from ptycho_torch_nb.core import prepare_output_dir
    out = tmp_path / 'run'; out.mkdir(); (out / 'metrics.json').write_text('{"run": 1}')
    prepare_output_dir(out, overwrite=True)
    assert f"{out}: the previous run (metrics.json) is set aside in {out / '.previous_run'}" in caplog.text
    assert 'removed' not in caplog.text
    (out / 'metrics.json').write_text('{"run": 2}'); caplog.clear()
    prepare_output_dir(out, overwrite=True)
    assert 'the one set aside before it is removed' in caplog.text and (out / '.previous_run' / 'metrics.json').read_text() == '{"run": 2}'


def _train_cli(train, out, *extra):
    from ptycho_torch_nb import cli
    return cli.train_main(['--train_data_file', str(train), '--output_dir', str(out), '--accelerator', 'cpu', '--quiet',
                           '--gridsize', '1', '--n_groups', '8', '--batch_size', '4', '--nepochs', '1',
                           '--n_filters_scale', '1', '--logger', 'none', *extra])


def test_second_run_into_a_used_folder(tiny_files, tmp_path, capsys):
    "Refused (exit 2, one line, first run untouched); with --overwrite one run's files only: last.ckpt, no last-v1.ckpt."
    train, _ = tiny_files
    out = tmp_path / 'run'
    assert _train_cli(train, out) == 0
    capsys.readouterr()
    first = _snapshot(out)
    assert 'wts.h5.zip' in first and 'checkpoints/last.ckpt' in first
    assert _train_cli(train, out, '--seed', '1') == 2
    line = _one_line(capsys.readouterr().err)
    assert str(out) in line and 'previous run' in line and '--overwrite' in line
    assert _snapshot(out) == first
    assert _train_cli(train, out, '--seed', '1', '--overwrite') == 0
    ckpts = sorted(p.name for p in (out / 'checkpoints').iterdir())
    assert 'last.ckpt' in ckpts and not any('-v1' in n for n in ckpts), ckpts
    assert _snapshot(out)['wts.h5.zip'] != first['wts.h5.zip']
    other = tmp_path / 'other'
    assert _train_cli(train, other) == 0
    capsys.readouterr()
    # --resume takes only this run's checkpoints
    assert _train_cli(train, out, '--resume', str(other / 'checkpoints' / 'last.ckpt'), '--nepochs', '2') == 2
    line = _one_line(capsys.readouterr().err)
    assert 'last.ckpt' in line and "another run's checkpoint" in line


# ------------------------------------------------------------------ 5. determinism in fresh processes
def _in_process(script: str, name: str):
    "The function `name` of a child script, run in this process (the runs around the killed one need no fresh interpreter)."
    here = {'__name__': 'in_process'}; exec(script, here)
    return here[name]


DET_SCRIPT = textwrap.dedent('''
    import hashlib, sys
    from pathlib import Path

    def digest(train_file, out, seed):
        import torch
        from ptycho_torch_nb import workflow as W
        from ptycho_torch_nb.config import ModelConfig, TrainingConfig
        cfg = TrainingConfig(model=ModelConfig(N=64, gridsize=1, n_filters_scale=1), n_groups=8, nepochs=1, batch_size=4,
                             output_dir=out, backend='pytorch')           # n_groups < 16 positions, no subsample_seed
        ec = W.default_execution_config(accelerator='cpu', logger_backend=None, enable_checkpointing=False)
        res = W.train_cdi_model_torch(train_file, None, cfg, ec, seed=seed)
        h = hashlib.sha256()
        for k, v in sorted(res['models']['diffraction_to_obj'].state_dict().items()): h.update(k.encode()); h.update(v.numpy().tobytes())
        h.update(res['train_container'].nn_indices.numpy().tobytes() if hasattr(res['train_container'].nn_indices, 'numpy') else b'')
        return h.hexdigest()

    if __name__ == '__main__':
        import warnings, logging
        warnings.filterwarnings('ignore'); logging.getLogger('lightning.pytorch').setLevel(logging.ERROR)
        import torch; torch.set_num_threads(1)
        print('DIGEST', digest(sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])))
''')


def test_same_seed_same_weights_in_fresh_processes(tiny_files, tmp_path):
    script = tmp_path / 'det.py'; script.write_text(DET_SCRIPT)
    def digest(run, seed):
        p = subprocess.run([sys.executable, str(script), str(tiny_files[0]), str(tmp_path / run), str(seed)],
                           env=_env(), capture_output=True, text=True, timeout=300)
        assert p.returncode == 0, p.stderr[-2000:]
        return next(l.split()[1] for l in p.stdout.splitlines() if l.startswith('DIGEST'))
    a, b = digest('a', 5), digest('b', 5)
    assert a == b                 # bitwise: grouping, weights and shuffling all follow the one seed
    assert _in_process(DET_SCRIPT, 'digest')(tiny_files[0], tmp_path / 'c', 6) != a    # and the seed matters (here: no fresh process needed)


# ------------------------------------------------------------------ 6. fault tests: SIGKILL inside each write path
SAVE_SCRIPT = textwrap.dedent('''
    import sys
    from pathlib import Path

    def save(folder, seed):
        import torch
        from ptycho_torch_nb.config import ModelConfig, TrainingConfig
        from ptycho_torch_nb.model import PtychoPINN_Lightning
        from ptycho_torch_nb.persistence import save_torch_bundle
        with torch.random.fork_rng():   # run in the test's process too: its random state stays as it was
            torch.manual_seed(seed)
            m = PtychoPINN_Lightning(model_config=dict(N=64, gridsize=1, n_filters_scale=1))
        save_torch_bundle({'autoencoder': m, 'diffraction_to_obj': m}, Path(folder) / 'wts.h5',
                          TrainingConfig(model=ModelConfig(N=64, gridsize=1, n_filters_scale=1), backend='pytorch'))

    if __name__ == '__main__': save(sys.argv[1], int(sys.argv[2]))
''')


def _temps(folder: Path):
    return sorted(p.name for p in folder.iterdir() if p.name.endswith('.tmp') or p.name.startswith('.tmp-'))


@pytest.mark.parametrize('fault', ['archive-write#3', 'before-rename:wts.h5.zip'])
def test_kill_during_save_keeps_previous_archive(tmp_path, fault):
    script = tmp_path / 'save.py'; script.write_text(SAVE_SCRIPT)
    save = _in_process(SAVE_SCRIPT, 'save')
    save(tmp_path, 1)                                             # the previous run (the killed one is a fresh process)
    previous = (tmp_path / 'wts.h5.zip').read_bytes()
    p = subprocess.run([sys.executable, str(script), str(tmp_path), '2'], env=_env(PTYCHO_TORCH_NB_FAULT=fault),
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == -signal.SIGKILL, p.stderr[-2000:]
    assert (tmp_path / 'wts.h5.zip').read_bytes() == previous     # the previous state, byte for byte
    assert _temps(tmp_path)                                       # the killed writer left its temporary behind
    models, params = _load(tmp_path / 'wts.h5.zip')               # ... which loading ignores
    save(tmp_path, 3)                                             # the next run
    assert _temps(tmp_path) == []                                 # cleans it
    _load(tmp_path / 'wts.h5.zip')


PTY_SCRIPT = textwrap.dedent('''
    import sys

    def train(data, out):
        from ptycho_torch_nb.ptychodus import ReconstructorSettings, train_model
        train_model(data, out, ReconstructorSettings(nepochs=1, batch_size=4, n_groups=8, n_filters_scale=1, accelerator='cpu',
                                                     nphotons=1e9))

    if __name__ == '__main__':
        import warnings, logging
        warnings.filterwarnings('ignore'); logging.getLogger('lightning.pytorch').setLevel(logging.ERROR)
        train(sys.argv[1], sys.argv[2])
''')


def test_kill_during_ptychodus_history_write(tiny_files, tmp_path):
    "A Train killed at its final save (the archive with the history) leaves the previous model whole; the next one succeeds."
    pytest.importorskip('ptychodus')
    from ptycho_torch_nb.ptychodus import HISTORY_MEMBER, TRAIN_STAGE, archive_history
    script = tmp_path / 'pty.py'; script.write_text(PTY_SCRIPT)
    out = tmp_path / 'model'
    train = lambda: _in_process(PTY_SCRIPT, 'train')(tiny_files[0], out)   # the runs around the killed one, here
    train()
    previous = (out / 'wts.h5.zip').read_bytes()
    p = subprocess.run([sys.executable, str(script), str(tiny_files[0]), str(out)],  # the 2nd save of wts.h5.zip has the history
                       env=_env(PTYCHO_TORCH_NB_FAULT='before-rename:wts.h5.zip#2'), capture_output=True, text=True, timeout=600)
    assert p.returncode == -signal.SIGKILL, p.stderr[-2000:]
    assert (out / 'wts.h5.zip').read_bytes() == previous            # the previous model, untouched
    assert _temps(out) and (out / TRAIN_STAGE).is_dir()            # the killed run's temporary and its stage are left
    train()
    assert _temps(out) == [] and not (out / TRAIN_STAGE).exists() and set(archive_history(out)) == {'train_loss', 'val_loss'}
    with zipfile.ZipFile(out / 'wts.h5.zip') as zf: assert HISTORY_MEMBER in zf.namelist() and zf.testzip() is None
    assert (out / 'checkpoints').is_dir()                              # the run's checkpoints moved up from its stage


CACHE_SCRIPT = textwrap.dedent('''
    import sys
    from ptycho_torch_nb.raw_data import RawDataTorch
    raw = RawDataTorch.from_file(sys.argv[1])
    raw.generate_grouped_data(64, K=4, nsamples=8, seed=1, gridsize=2, use_cache=True, cache_dir=sys.argv[2])
''')


def test_kill_during_cache_write(tiny_files, tmp_path):
    from ptycho_torch_nb.raw_data import RawDataTorch
    script = tmp_path / 'cache.py'; script.write_text(CACHE_SCRIPT)
    cache = tmp_path / 'cache'
    run = lambda **env: subprocess.run([sys.executable, str(script), str(tiny_files[0]), str(cache)], env=_env(**env),
                                       capture_output=True, text=True, timeout=300)
    p = run(PTYCHO_TORCH_NB_FAULT='cache-write#2')
    assert p.returncode == -signal.SIGKILL, p.stderr[-2000:]
    assert [q.name for q in cache.iterdir() if not q.name.startswith('.')] == []   # no entry: nothing half-valid
    assert _temps(cache)
    assert run().returncode == 0
    assert _temps(cache) == []
    raw = RawDataTorch.from_file(tiny_files[0])
    want = raw.generate_grouped_data(64, K=4, nsamples=8, seed=1, gridsize=2, use_cache=False)
    got = raw.generate_grouped_data(64, K=4, nsamples=8, seed=1, gridsize=2, use_cache=True, cache_dir=cache)
    np.testing.assert_array_equal(got['nn_indices'], want['nn_indices']); np.testing.assert_array_equal(got['X_full'], want['X_full'])


# ------------------------------------------------------------------ 7. CLI: one line naming the file, exit 2
def test_cli_file_errors_are_one_line(tiny_files, tmp_path, capsys, archive):
    from ptycho_torch_nb import cli
    train, test = tiny_files
    bad = tmp_path / 'corrupt.npz'; bad.write_bytes(train.read_bytes()[:200])
    cases = [
        (cli.train_main, ['--train_data_file', str(bad), '--output_dir', str(tmp_path / 'a'), '--accelerator', 'cpu', '--quiet'], 'corrupt.npz'),
        (cli.train_main, ['--train_data_file', str(train), '--output_dir', str(train), '--accelerator', 'cpu', '--quiet'], str(train)),
    ]
    mdir = tmp_path / 'm'; mdir.mkdir(); (mdir / 'wts.h5.zip').write_bytes(_declare_size(archive[1], 'manifest.json', 2**31))
    cases.append((cli.infer_main, ['--model_path', str(mdir), '--test_data', str(test), '--output_dir', str(tmp_path / 'i'),
                                   '--accelerator', 'cpu', '--quiet'], 'manifest.json'))
    for fn, argv, needle in cases:
        code = fn(argv)
        line = _one_line(capsys.readouterr().err)
        assert code == 2 and needle in line, line
    assert not (tmp_path / 'a').exists() and not (tmp_path / 'i').exists()


@pytest.mark.parametrize('flags,needle', [(['--time_budget', '-5'], 'time_budget_s=-5.0'), (['--time_budget', 'nan'], 'time_budget_s=nan'),
                                          (['--M', '0'], "argument --M: expected a positive integer, got '0'"), (['--epochs', '0'], 'nepochs=0'), (['--seed', '-1'], 'seed=-1'),
                                          (['--batch_size', '0'], 'argument --batch_size/--batch-size: expected a positive integer'),
                                          (['--gridsize', '0'], 'argument --gridsize: expected a positive integer'),
                                          (['--time_budget', 'soon'], 'time_budget')])
def test_reconstruct_cli_refuses_bad_values(flags, needle, tiny_files, tmp_path, capsys):
    from ptycho_torch_nb import cli
    out = tmp_path / 'rec'
    code = cli.reconstruct_main([str(tiny_files[0]), '--output_dir', str(out), '--accelerator', 'cpu', '--quiet', *flags])
    line = _one_line(capsys.readouterr().err)
    assert code == 2 and needle in line and line.startswith('ptycho-torch-reconstruct: error:'), line
    assert not out.exists()


def test_deeply_nested_json_is_a_clean_error(archive, tmp_path):
    path, good = archive
    p = _rewrite(good, tmp_path / 'deep.zip', {'diffraction_to_obj/params.json': '[' * 100000 + ']' * 100000})
    with pytest.raises(ValueError, match=r"deep\.zip: archive member 'diffraction_to_obj/params\.json' is not valid JSON"): _load(p)


@pytest.mark.parametrize('kw,needle', [(dict(time_budget_s=-5), 'time_budget_s=-5'), (dict(M=0), 'M=0'),
                                       (dict(M=65), 'M=65'), (dict(M=48.0), 'M=48.0'), (dict(seed=-1), 'seed=-1'),
                                       (dict(nepochs=0), 'nepochs=0')])
def test_reconstruct_scan_gate_before_any_work(kw, needle, tiny_files, tmp_path):
    from ptycho_torch_nb.reconstruct import reconstruct_scan
    out = tmp_path / 'rec'
    with pytest.raises(ValueError, match=needle):
        reconstruct_scan(tiny_files[0], output_dir=out, progress=False, **kw)
    assert not out.exists()


def test_reconstruct_refuses_a_used_folder(tiny_files, tmp_path, capsys):
    from ptycho_torch_nb import cli
    out = tmp_path / 'rec'; out.mkdir(); (out / 'reconstruct.json').write_text('{}')
    before = _snapshot(out)
    code = cli.reconstruct_main([str(tiny_files[0]), '--output_dir', str(out), '--accelerator', 'cpu', '--quiet', '--epochs', '1'])
    line = _one_line(capsys.readouterr().err)
    assert code == 2 and 'previous run' in line and '--overwrite' in line and _snapshot(out) == before


@pytest.mark.parametrize('flags,needle', [(['--N', '48'], 'argument --N: invalid choice: 48 (choose from 64, 128, 256)'), (['--seed', '-1'], 'seed=-1'), (['--time_budget', '-5'], 'time_budget'),
                                          (['--steps', '0'], 'steps'), (['--corpus_workers', '0'], 'corpus_workers')])
def test_pretrain_cli_refuses_bad_values(flags, needle, tmp_path, capsys):
    from ptycho_torch_nb import cli
    out = tmp_path / 'pre'
    code = cli.pretrain_main(['--output_dir', str(out), '--accelerator', 'cpu', '--quiet', *flags])
    line = _one_line(capsys.readouterr().err)
    assert code == 2 and needle in line and line.startswith('ptycho-torch-pretrain: error:'), line
    assert not out.exists()


@pytest.mark.parametrize('exc', [RecursionError('maximum recursion depth exceeded'), IndexError('tuple index out of range'),
                                 AttributeError("'NoneType' object has no attribute 'shape'"), PermissionError(13, 'Permission denied', '/data/x.npz')])
def test_cli_never_prints_a_traceback(exc, tiny_files, tmp_path, capsys, monkeypatch):
    "Whatever fails inside a command: one line; a user error (OSError: the file named) exits 2, anything else 1; --debug re-raises."
    from ptycho_torch_nb import cli, workflow
    def boom(*a, **k): raise exc
    monkeypatch.setattr(workflow, 'run_cdi_example_torch', boom)
    argv = ['--train_data_file', str(tiny_files[0]), '--output_dir', str(tmp_path / 'o'), '--accelerator', 'cpu', '--quiet']
    code = cli.train_main(argv)
    line = _one_line(capsys.readouterr().err)
    assert line.startswith('ptycho-torch-train: error:') and code == (2 if isinstance(exc, OSError) else 1), line
    if isinstance(exc, OSError): assert '/data/x.npz' in line
    else: assert type(exc).__name__ in line and '--debug' in line
    with pytest.raises(type(exc)): cli.train_main(argv + ['--debug'])


def test_simulation_and_corpus_arguments_are_named():
    "A probe of another size than N, photons out of range, a NaN in the object and a pattern size no model takes: named before any work."
    from ptycho_torch_nb.simulation import simulated_scan, simulate_diffraction
    from ptycho_torch_nb.pretrain import build_corpus
    with pytest.raises(ValueError, match=r'probe has shape \(64, 64\) but N=32'):   # was: N ignored, 64x64 patterns returned
        simulated_scan(n=8, N=32, probe=np.ones((64, 64), np.complex64))
    obj, probe = np.ones((96, 96), np.complex64), np.ones((16, 16), np.complex64)
    for bad in (-1, 0, float('nan'), float('inf')):   # were: a math domain error, a torch error, a NaN diff3d, 'all zero'
        with pytest.raises(ValueError, match=f'simulate_diffraction: nphotons={bad!r} is invalid'):
            simulate_diffraction(obj, probe, [40.0], [40.0], nphotons=bad)
    o = obj.copy(); o[45, 45] = np.nan   # was: 'the illuminated object has zero energy'
    with pytest.raises(ValueError, match=r'simulate_diffraction: obj holds 1 non-finite value\(s\)'):
        simulate_diffraction(o, probe, [40.0], [40.0])
    with pytest.raises(ValueError, match='build_corpus: N=50 is invalid'): build_corpus(1, N=50)   # was: a 50x50 corpus


def test_a_file_in_the_way_of_an_output_folder_is_named(tmp_path):
    "A file where a folder of the output path must be made, next to it or further up, is named before any work."
    from ptycho_torch_nb.core import output_folder
    (tmp_path / 'notes.txt').write_text('x')
    for out in (tmp_path / 'notes.txt' / 'run', tmp_path / 'notes.txt' / 'a' / 'run'):   # the second was found only at mkdir
        with pytest.raises(NotADirectoryError, match=f"cannot be made, {tmp_path / 'notes.txt'} is a file"): output_folder(out)


def test_check_scan_names_a_scan_without_diffraction():
    from ptycho_torch_nb.data_container import check_scan
    from ptycho_torch_nb.simulation import simulated_scan, simulate_diffraction
    raw = simulated_scan(n=4, seed=0); raw.diff3d = None
    with pytest.raises(ValueError, match="reconstruct_scan: scan <memory>: key 'diff3d' is missing"): check_scan(raw, 'reconstruct_scan')
    probe = np.ones((16, 16), np.complex64); probe[2, 3] = np.nan
    with pytest.raises(ValueError, match=r'simulate_diffraction: probe holds 1 non-finite value\(s\) of 256, first at index \(2, 3\)'):
        simulate_diffraction(np.ones((96, 96), np.complex64), probe, [40.0], [40.0])
