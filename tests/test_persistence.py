"""Persistence tests that need other processes: fresh-process round trip, resume after SIGKILL, refusals.

The notebook `nbs/04a_persistence.ipynb` holds the in-process checks; these cover what a notebook cell cannot
(a new interpreter with no state, a training process killed mid-epoch).
"""
import io, json, math, os, pickle, signal, subprocess, sys, time, uuid, zipfile
from pathlib import Path
import numpy as np
import pytest
import torch
from torch import nn
import lightning as L

from ptycho_torch_nb import params as legacy
from ptycho_torch_nb import persistence as P

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
ENV = {**os.environ, 'OMP_NUM_THREADS': '1', 'PYTHONPATH': os.pathsep.join([str(ROOT), str(HERE)])}


class TinyCDI(L.LightningModule):
    "Small stand-in LightningModule with the model's shape contract (diffraction_to_obj -> complex patches)."
    def __init__(self, N: int = 8, gridsize: int = 1, hidden: int = 4, lr: float = 1e-2):
        super().__init__()
        self.save_hyperparameters()
        C = gridsize ** 2
        self.encoder = nn.Conv2d(C, hidden, 3, padding=1)
        self.amp, self.phase = nn.Conv2d(hidden, C, 3, padding=1), nn.Conv2d(hidden, C, 3, padding=1)
        self.register_buffer('probe', torch.ones(N, N, dtype=torch.complex64))
    def diffraction_to_obj(self, X, coords_relative=None):
        h = torch.relu(self.encoder(X))
        return torch.polar(torch.sigmoid(self.amp(h)), math.pi * torch.tanh(self.phase(h)))  # [B, C, N, N]
    def forward(self, X, coords_relative=None):
        obj = self.diffraction_to_obj(X, coords_relative)
        amp = torch.fft.fftshift(torch.fft.fft2(obj * self.probe, norm='ortho').abs(), dim=(-2, -1))
        return obj, amp, amp ** 2
    def training_step(self, batch, batch_idx):
        loss = torch.mean((self(batch['X'])[1] - batch['X']) ** 2)
        self.log('train_loss', loss)
        return loss
    def configure_optimizers(self): return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)


P.register_model_class(TinyCDI)


class _DictData(torch.utils.data.Dataset):
    def __init__(self, X): self.X = X
    def __len__(self): return len(self.X)
    def __getitem__(self, i): return {'X': self.X[i]}


def tiny_loader(n=20, N=8, batch_size=4, seed=0):
    X = torch.rand(n, 1, N, N, generator=torch.Generator().manual_seed(seed))
    return torch.utils.data.DataLoader(_DictData(X), batch_size=batch_size, shuffle=False)


def _run(code, timeout=120):
    r = subprocess.run([sys.executable, '-c', code], env=ENV, cwd=str(HERE), capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"subprocess failed:\n{r.stdout}\n{r.stderr}"
    return r.stdout


def _save_good(tmp_path, N=8):
    torch.manual_seed(0)
    model = TinyCDI(N=N)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    X = torch.rand(4, 1, N, N, generator=torch.Generator().manual_seed(1))
    for _ in range(3):
        opt.zero_grad(); torch.mean((model(X)[1] - X) ** 2).backward(); opt.step()
    with legacy.temporary_cfg():
        legacy.cfg.update({'N': N, 'gridsize': 1, 'nphotons': 1e6, 'model_type': 'pinn',
                           'probe': (np.arange(N * N).reshape(N, N) * (1 - 0.5j)).astype(np.complex64)})
        path = P.save_torch_bundle({'autoencoder': model, 'diffraction_to_obj': model}, tmp_path / 'wts.h5', intensity_scale=42.25)
        cfg = dict(legacy.cfg)
    return model.eval(), X, path, cfg


def _real_model(gridsize=2, n_groups=4, steps=2, seed=0):
    "PtychoPINN_Lightning (N=64) trained a few steps on groups simulated from Run1084; returns (model, batch, config)."
    from ptycho_torch_nb.model import PtychoPINN_Lightning
    from ptycho_torch_nb.simulation import simulate_groups
    from ptycho_torch_nb.config import ModelConfig, TrainingConfig
    from ptycho_torch_nb.core import data_path
    run = np.load(data_path())
    probe = torch.as_tensor(run['probeGuess'])
    config = TrainingConfig(model=ModelConfig(N=64, gridsize=gridsize), nphotons=1e9)
    torch.manual_seed(seed)
    model = PtychoPINN_Lightning.from_configs(config.model, config, probe=probe)
    batch = simulate_groups(run['objectGuess'], probe, n_groups, gridsize=gridsize, seed=seed + 1)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(steps):
        opt.zero_grad(); model.compute_losses(batch)['loss'].backward(); opt.step()
    return model.eval(), batch, config


def test_fresh_process_roundtrip_bitwise(tmp_path):
    "train (tiny) -> save -> load in a new interpreter: bitwise-identical diffraction_to_obj and params.cfg values."
    from ptycho_torch_nb.config import update_legacy_dict
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # same kernels as the child process (OMP_NUM_THREADS=1)
    try:
        model, batch, config = _real_model()
        with torch.no_grad(): expected = model.diffraction_to_obj(batch['X'], batch['coords_relative'])
    finally: torch.set_num_threads(threads)
    with legacy.temporary_cfg():
        legacy.reset()   # independent of what earlier tests in this process left in params.cfg
        update_legacy_dict(legacy.cfg, config)
        P.save_torch_bundle({'autoencoder': model, 'diffraction_to_obj': model}, tmp_path / 'wts.h5', config)
        cfg = dict(legacy.cfg)
    torch.save({'X': batch['X'], 'coords_relative': batch['coords_relative'], 'expected': expected}, tmp_path / 'io.pt')
    out = _run(f"""
import pickle, torch, numpy as np
torch.set_num_threads(1)
from ptycho_torch_nb import params as legacy
from ptycho_torch_nb.persistence import load_inference_bundle_torch
from ptycho_torch_nb.model import PtychoPINN_Lightning
legacy.reset()
models, params = load_inference_bundle_torch({str(tmp_path)!r})
io_ = torch.load({str(tmp_path / 'io.pt')!r}, weights_only=True)
m = models['diffraction_to_obj']
assert type(m) is PtychoPINN_Lightning and m is models['autoencoder'] and not m.training
with torch.no_grad(): got = m.diffraction_to_obj(io_['X'], io_['coords_relative'])
assert got.dtype == torch.complex64 and torch.equal(got, io_['expected']), (got - io_['expected']).abs().max()
pickle.dump(dict(legacy.cfg), open({str(tmp_path / 'cfg.pkl')!r}, 'wb'))
print('bitwise-identical', tuple(got.shape))
""")
    assert 'bitwise-identical (4, 4, 64, 64)' in out
    restored = pickle.load(open(tmp_path / 'cfg.pkl', 'rb'))
    assert restored['intensity_scale'] == float(torch.exp(model.model.log_scale.detach()))  # the trained value
    assert np.array_equal(restored['probe'], model.model.probe.numpy())
    for key, value in cfg.items():
        assert restored[key] == value and type(restored[key]) is type(value), (key, restored[key], value)
    assert '_version' not in restored


def test_extracted_checkpoint_loads_with_lightning(tmp_path):
    model, X, path, _ = _save_good(tmp_path)
    out = P.extract_torch_bundle(path, tmp_path / 'x')
    again = TinyCDI.load_from_checkpoint(out / 'diffraction_to_obj' / 'model.ckpt', map_location='cpu', weights_only=True).eval()
    with torch.no_grad(): assert torch.equal(again.diffraction_to_obj(X), model.diffraction_to_obj(X))
    assert (out / 'manifest.json').exists() and not (out / 'autoencoder' / 'model.ckpt').exists()


def _forge(src, dst, drop=(), replace=None, extra=None):
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, 'w') as zout:
        for n in zin.namelist():
            if n in drop or any(n.startswith(d) for d in drop if d.endswith('/')): continue
            zout.writestr(n, (replace or {}).get(n, zin.read(n)))
        for n, data in (extra or {}).items(): zout.writestr(n, data)
    return dst


class _Evil:
    def __reduce__(self): return (os.system, ('echo pwned',))


def _error_cases(path, tmp):
    "name -> (callable, exception type, message fragment): every refusal the issue lists."
    man = json.loads(zipfile.ZipFile(path).read('manifest.json'))
    params = json.loads(zipfile.ZipFile(path).read('diffraction_to_obj/params.json'))
    (tmp / 'text.zip').write_text('not a zip')
    (tmp / 'trunc.zip').write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    (tmp / 'empty').mkdir()
    tf = tmp / 'tf.zip'
    with zipfile.ZipFile(tf, 'w') as zf:
        zf.writestr('manifest.dill', pickle.dumps({'models': ['autoencoder', 'diffraction_to_obj'], 'version': '1.0'}))
        for n in ('autoencoder', 'diffraction_to_obj'): zf.writestr(f'{n}/model.keras', b'keras')
    no_n = {k: v for k, v in params.items() if k != 'N'}
    no_g = {k: v for k, v in params.items() if k != 'gridsize'}
    evil = pickle.dumps({**man, 'x': _Evil()})
    evil_params = pickle.dumps({**params, 'x': _Evil()})
    hdr = io.BytesIO(); np.lib.format.write_array_header_1_0(hdr, {'descr': '<c16', 'fortran_order': False, 'shape': (2**40,)})
    huge_npy = hdr.getvalue()   # declares 16 TiB, carries no data: refused before anything is allocated
    ld = P.load_torch_bundle
    return {
        'missing_dir': (lambda: P.load_inference_bundle_torch(tmp / 'nodir'), FileNotFoundError, 'nodir'),
        'missing_file_in_dir': (lambda: P.load_inference_bundle_torch(tmp / 'empty'), FileNotFoundError, 'no wts.h5.zip in model directory'),
        'missing_file': (lambda: ld(tmp / 'absent'), FileNotFoundError, 'absent.zip'),
        'not_a_zip': (lambda: ld(tmp / 'text.zip'), ValueError, 'not a valid zip archive'),
        'truncated': (lambda: ld(tmp / 'trunc.zip'), ValueError, 'not a valid zip archive (truncated'),
        'no_manifest': (lambda: ld(_forge(path, tmp / 'a.zip', drop=('manifest.json', 'manifest.dill'))), ValueError, 'archive has no manifest'),
        'no_model_folder': (lambda: ld(_forge(path, tmp / 'b.zip', drop=('diffraction_to_obj/',))), ValueError,
                            "model folder 'diffraction_to_obj/' listed in the manifest is missing"),
        'tensorflow_keras': (lambda: ld(tf), ValueError, 'archive backend: tensorflow, loader backend: pytorch (Keras payload'),
        'tensorflow_tag': (lambda: ld(_forge(path, tmp / 'c.zip', replace={'manifest.json': json.dumps({**man, 'backend': 'tensorflow'})})),
                           ValueError, 'archive backend: tensorflow, loader backend: pytorch'),
        'zip_slip': (lambda: ld(_forge(path, tmp / 'd.zip', extra={'../../escape.txt': b'x'})), ValueError, 'escapes the extraction folder (zip-slip)'),
        'zip_slip_absolute': (lambda: ld(_forge(path, tmp / 'e.zip', extra={'/tmp/escape.txt': b'x'})), ValueError, 'zip-slip'),
        'unsafe_manifest': (lambda: ld(_forge(path, tmp / 'f.zip', drop=('manifest.json',), replace={'manifest.dill': evil})),
                            ValueError, 'refusing to unpickle'),
        'unsafe_params': (lambda: ld(_forge(path, tmp / 'g.zip', drop=('diffraction_to_obj/params.json',),
                                            replace={'diffraction_to_obj/params.dill': evil_params})), ValueError, 'refusing to unpickle'),
        'params_without_N': (lambda: ld(_forge(path, tmp / 'h.zip', replace={'diffraction_to_obj/params.json': json.dumps(no_n)})),
                             ValueError, "missing required fields: ['N']. Cannot reconstruct model architecture"),
        'params_without_gridsize': (lambda: ld(_forge(path, tmp / 'i.zip', replace={'diffraction_to_obj/params.json': json.dumps(no_g)})),
                                    ValueError, "missing required fields: ['gridsize']. Cannot reconstruct model architecture"),
        'newer_format': (lambda: ld(_forge(path, tmp / 'j.zip', replace={'manifest.json': json.dumps({**man, 'version': '4.0-pytorch'})})),
                         ValueError, 'archive format version 4.0-pytorch is newer than this loader supports'),
        'upstream_torch': (lambda: ld(_forge(path, tmp / 'k.zip', replace={'manifest.json': json.dumps({'models': man['models'], 'version': '2.0-pytorch'})})),
                           ValueError, 'upstream ptycho_torch shim'),
        'npy_header_lies': (lambda: ld(_forge(path, tmp / 'o.zip', replace={'diffraction_to_obj/params_arrays/probe.npy': huge_npy})),
                            ValueError, "is not a plain .npy array: its header declares shape (1099511627776,) of complex128"),
        'unknown_class': (lambda: ld(_forge(path, tmp / 'l.zip', replace={'diffraction_to_obj/model.json': json.dumps(
                              {'model_class': 'os.system', 'checkpoint': 'diffraction_to_obj/model.ckpt'})})), ValueError, "'os.system' is not registered"),
    }


@pytest.fixture(scope='module')
def good_archive(tmp_path_factory):
    tmp = tmp_path_factory.mktemp('good')
    return _save_good(tmp)[2], tmp


@pytest.mark.parametrize('case', ['missing_dir', 'missing_file_in_dir', 'missing_file', 'not_a_zip', 'truncated', 'no_manifest',
                                  'no_model_folder', 'tensorflow_keras', 'tensorflow_tag', 'zip_slip', 'zip_slip_absolute',
                                  'unsafe_manifest', 'unsafe_params', 'params_without_N', 'params_without_gridsize',
                                  'newer_format', 'upstream_torch', 'unknown_class', 'npy_header_lies'])
def test_refusals(good_archive, case):
    path, tmp = good_archive
    work = tmp / case; work.mkdir()
    fn, exc, fragment = _error_cases(path, work)[case]
    with pytest.raises(exc) as info: fn()
    assert fragment in str(info.value), str(info.value)


@pytest.mark.parametrize('kind', ['relative', 'absolute', 'sorted_last'])
def test_extract_refuses_zip_slip(good_archive, tmp_path, kind):
    "extract_torch_bundle writes members to disk: a zip-slip member is refused before any file is written, inside or outside."
    path, _ = good_archive
    dest = tmp_path / 'a' / 'x'                                  # '../../' from here is tmp_path
    outside = tmp_path / f'escape_{uuid.uuid4().hex}.txt'       # unique: no stale file can make the test pass or fail
    member = {'relative': f'../../{outside.name}', 'absolute': str(outside),
              'sorted_last': f'zz/../../../{outside.name}'}[kind]  # sorts after every real member
    forged = _forge(path, tmp_path / 'slip.zip', extra={member: b'escaped'})
    with pytest.raises(ValueError) as info: P.extract_torch_bundle(forged, dest)
    assert f"refusing archive member {member!r}: its path escapes the extraction folder (zip-slip)" in str(info.value), str(info.value)
    assert not outside.exists()
    assert not dest.exists() or not any(dest.iterdir()), sorted(dest.rglob('*'))


def test_mismatched_weights_are_an_error(tmp_path):
    model, X, path, _ = _save_good(tmp_path)
    ck = torch.load(io.BytesIO(zipfile.ZipFile(path).read('diffraction_to_obj/model.ckpt')), weights_only=True)
    ck['state_dict']['encoder.weight'] = ck['state_dict']['encoder.weight'][:2]
    b = io.BytesIO(); torch.save(ck, b)
    with pytest.raises(ValueError, match=r"shape mismatches \['encoder.weight: saved \(2, 1, 3, 3\) vs model \(4, 1, 3, 3\)'\]"):
        P.load_torch_bundle(_forge(path, tmp_path / 'm.zip', replace={'diffraction_to_obj/model.ckpt': b.getvalue()}))
    del ck['state_dict']['encoder.weight']; ck['state_dict']['extra'] = torch.zeros(1)
    b = io.BytesIO(); torch.save(ck, b)
    with pytest.raises(ValueError, match=r"missing tensors \['encoder.weight'\], unexpected tensors \['extra'\]"):
        P.load_torch_bundle(_forge(path, tmp_path / 'n.zip', replace={'diffraction_to_obj/model.ckpt': b.getvalue()}))


def test_interrupted_save_keeps_previous_archive(tmp_path):
    model, X, path, _ = _save_good(tmp_path)
    before = path.read_bytes()
    code = f"""
import os, zipfile, numpy as np, torch
import test_persistence as tp
from ptycho_torch_nb import params as legacy, persistence as P
orig = zipfile.ZipFile.writestr
def dying(self, name, *a, **k):
    if name.endswith('model.ckpt'): os.kill(os.getpid(), 9)   # SIGKILL in the middle of writing the archive
    return orig(self, name, *a, **k)
zipfile.ZipFile.writestr = dying
legacy.cfg.update({{'N': 8, 'gridsize': 1}})
m = tp.TinyCDI(N=8, hidden=6)
P.save_torch_bundle({{'autoencoder': m, 'diffraction_to_obj': m}}, {str(tmp_path / 'wts.h5')!r})
"""
    r = subprocess.run([sys.executable, '-c', code], env=ENV, cwd=str(HERE), capture_output=True, text=True, timeout=120)
    assert r.returncode == -signal.SIGKILL, (r.returncode, r.stderr)
    assert path.read_bytes() == before
    models, _ = P.load_torch_bundle(path, restore_params=False)
    assert models['diffraction_to_obj'].hparams.hidden == 4


TRAIN_SCRIPT = """
import sys, time, torch, lightning as L
from pathlib import Path
from lightning.pytorch.callbacks import ModelCheckpoint, Callback
import test_persistence as tp
out = Path(sys.argv[1]); kill_after = int(sys.argv[2])
class Marker(Callback):
    "Once the step checkpoint is on disk and `kill_after` steps are done, say so and stall mid-batch until killed."
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step >= kill_after and (out / 'checkpoints' / 'last.ckpt').exists():
            (out / 'marker').write_text(f"{trainer.current_epoch} {trainer.global_step} {batch_idx}")
            time.sleep(600)
model, loader = tp.resume_setup()
trainer = tp.resume_trainer(callbacks=[Marker(), ModelCheckpoint(dirpath=out / 'checkpoints', every_n_train_steps=2,
                                                                 save_last=True, save_top_k=-1)])
trainer.fit(model, loader)
"""

STEPS_PER_EPOCH, MAX_EPOCHS, KILL_AFTER = 3, 3, 5  # killed at the start of batch 2 of epoch 1; last.ckpt is from step 4


def resume_setup():
    "The real model (N=64, gridsize 1, untrained) and a 6-group loader of batch 2 (3 steps per epoch)."
    from ptycho_torch_nb.model import PtychoPINN_Lightning
    from ptycho_torch_nb.simulation import simulate_groups
    from ptycho_torch_nb.config import ModelConfig, TrainingConfig
    from ptycho_torch_nb.core import data_path
    run = np.load(data_path())
    probe = torch.as_tensor(run['probeGuess'])
    config = TrainingConfig(model=ModelConfig(N=64, gridsize=1), nphotons=1e9, nepochs=MAX_EPOCHS)
    torch.manual_seed(0)
    model = PtychoPINN_Lightning.from_configs(config.model, config, probe=probe)
    data = simulate_groups(run['objectGuess'], probe, 2 * STEPS_PER_EPOCH, gridsize=1, seed=3)
    rows = [{'X': data['X'][i], 'coords_relative': data['coords_relative'][i]} for i in range(len(data['X']))]
    return model, torch.utils.data.DataLoader(rows, batch_size=2, shuffle=False)


def resume_trainer(**kw):
    return L.Trainer(max_epochs=MAX_EPOCHS, accelerator='cpu', devices=1, logger=False, enable_progress_bar=False,
                     enable_model_summary=False, num_sanity_val_steps=0, **kw)


@pytest.mark.filterwarnings('ignore:Be aware that when using `ckpt_path`', 'ignore:You.re resuming from a checkpoint that ended before the epoch ended')
def test_resume_after_sigkill(tmp_path):
    "SIGKILL a training run mid-epoch, resume from last.ckpt, finish: right epoch/step counts and a valid, archivable model."
    proc = subprocess.Popen([sys.executable, '-c', TRAIN_SCRIPT, str(tmp_path), str(KILL_AFTER)], env=ENV, cwd=str(HERE),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 300
    try:
        while not (tmp_path / 'marker').exists():
            assert proc.poll() is None, f"training ended before the kill point:\n{proc.stderr.read().decode()[-3000:]}"
            assert time.time() < deadline, 'training did not reach the kill point in 300 s'
            time.sleep(0.2)
        proc.send_signal(signal.SIGKILL)
    finally:
        if proc.poll() is None: proc.kill()
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    epoch, step, batch = map(int, (tmp_path / 'marker').read_text().split())
    assert (epoch, step, batch) == (1, KILL_AFTER, 2)   # killed mid-epoch
    last = tmp_path / 'checkpoints' / 'last.ckpt'
    killed_state = torch.load(last, map_location='cpu', weights_only=True)
    assert (killed_state['epoch'], killed_state['global_step']) == (1, 4)
    model, loader = resume_setup()
    trainer = resume_trainer(enable_checkpointing=False)
    trainer.fit(model, loader, ckpt_path=str(last))
    assert trainer.current_epoch == MAX_EPOCHS
    assert trainer.global_step == MAX_EPOCHS * STEPS_PER_EPOCH
    state = model.state_dict()
    assert all(torch.isfinite(t).all() for t in state.values() if t.is_floating_point() or t.is_complex())
    moved = [k for k in state if not torch.equal(state[k], killed_state['state_dict'][k])]
    assert any(k.startswith('model.generator.') for k in moved)   # training continued from the checkpoint
    # the final model archives and reloads bit for bit
    model.eval()
    with legacy.temporary_cfg():
        legacy.cfg.update({'N': 64, 'gridsize': 1})
        path = P.save_torch_bundle({'autoencoder': model, 'diffraction_to_obj': model}, tmp_path / 'wts.h5')
        models, _ = P.load_torch_bundle(path)
    b = next(iter(loader))
    with torch.no_grad():
        assert torch.equal(models['diffraction_to_obj'].diffraction_to_obj(b['X'], b['coords_relative']),
                           model.diffraction_to_obj(b['X'], b['coords_relative']))
    ck = torch.load(io.BytesIO(zipfile.ZipFile(path).read('diffraction_to_obj/model.ckpt')), weights_only=True)
    assert (ck['epoch'], ck['global_step']) == (MAX_EPOCHS, MAX_EPOCHS * STEPS_PER_EPOCH)


def test_cli_train_writes_archive_and_infer_loads_it(tmp_path, monkeypatch, capsys):
    "ptycho-torch-train leaves output_dir/wts.h5.zip (this format); ptycho-torch-infer --model_path DIR reconstructs from it."
    from ptycho_torch_nb import workflow as W, cli
    train, test = W.simulate_run1084(16, 8, seed=3)
    train.to_file(tmp_path / 'train.npz'); test.to_file(tmp_path / 'test.npz')
    monkeypatch.chdir(tmp_path)
    with legacy.temporary_cfg():
        rc = cli.train_main(['--train_data_file', str(tmp_path / 'train.npz'), '--output_dir', str(tmp_path / 'run'),
                             '--N', '64', '--gridsize', '1', '--nepochs', '1', '--n_groups', '16', '--batch_size', '8',
                             '--n_filters_scale', '1', '--accelerator', 'cpu', '--quiet'])
    assert rc in (0, None)
    archive = tmp_path / 'run' / 'wts.h5.zip'
    manifest = json.loads(zipfile.ZipFile(archive).read('manifest.json'))
    assert (manifest['backend'], manifest['version']) == ('pytorch', P.ARCHIVE_VERSION)
    assert manifest['model_class']['diffraction_to_obj'] == 'ptycho_torch_nb.model.PtychoPINN_Lightning'
    with legacy.temporary_cfg():
        models, params = P.load_inference_bundle_torch(tmp_path / 'run')
        assert (params['N'], params['gridsize'], params['n_filters_scale']) == (64, 1, 1)
        rc = cli.infer_main(['--model_path', str(tmp_path / 'run'), '--test_data', str(tmp_path / 'test.npz'),
                             '--output_dir', str(tmp_path / 'inf'), '--accelerator', 'cpu', '--quiet'])
    assert rc in (0, None)
    assert (tmp_path / 'inf' / 'reconstructed_amplitude.png').exists()
    # the CLI refuses a folder without an archive and a TensorFlow archive: user errors, exit code 2, one line
    (tmp_path / 'empty').mkdir()
    args = ['--test_data', str(tmp_path / 'test.npz'), '--output_dir', str(tmp_path / 'inf2'), '--accelerator', 'cpu', '--quiet']
    capsys.readouterr()
    assert cli.infer_main(['--model_path', str(tmp_path / 'empty')] + args) == 2
    assert 'wts.h5.zip' in capsys.readouterr().err
    (tmp_path / 'tf').mkdir()
    with zipfile.ZipFile(tmp_path / 'tf' / 'wts.h5.zip', 'w') as zf:
        zf.writestr('manifest.dill', pickle.dumps({'models': ['autoencoder', 'diffraction_to_obj'], 'version': '1.0'}))
        zf.writestr('diffraction_to_obj/model.keras', b'keras')
    assert cli.infer_main(['--model_path', str(tmp_path / 'tf')] + args) == 2
    assert 'archive backend: tensorflow, loader backend: pytorch' in capsys.readouterr().err
