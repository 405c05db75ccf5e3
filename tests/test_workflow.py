"""Integration tests of ptycho_torch_nb.workflow: DDP on CPU, resume, outputs (tiny data, a few seconds each)."""
import json, os, subprocess, sys, textwrap, dataclasses
from pathlib import Path
import numpy as np
import pytest
from ptycho_torch_nb.config import TrainingConfig, ModelConfig
from ptycho_torch_nb import training as T

ROOT = Path(__file__).resolve().parent.parent

def _env():
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get('PYTHONPATH', ''))
    env.pop('IN_TEST', None)
    return env

def _configs(W, out, batch_size, nepochs=2, n=16):
    TC, MC = TrainingConfig, ModelConfig
    return TC(model=MC(N=64, gridsize=1, n_filters_scale=1), n_groups=n, nepochs=nepochs, batch_size=batch_size,
              output_dir=Path(out), backend='pytorch')

DDP_SCRIPT = textwrap.dedent('''
    import json, sys, logging, warnings
    from pathlib import Path
    warnings.filterwarnings('ignore')
    logging.getLogger('lightning.pytorch').setLevel(logging.ERROR)
    from ptycho_torch_nb import workflow as W, training as T
    from ptycho_torch_nb.config import TrainingConfig, ModelConfig
    train_file, out = sys.argv[1], Path(sys.argv[2])
    TC, MC = TrainingConfig, ModelConfig
    cfg = TC(model=MC(N=64, gridsize=1, n_filters_scale=1), n_groups=16, nepochs=2, batch_size=4, output_dir=out,
             backend='pytorch')
    ec = T.default_execution_config(accelerator='cpu', strategy='ddp', devices=2, logger_backend=None,
                                    enable_checkpointing=False, deterministic=True)
    res = W.train_cdi_model_torch(train_file, None, cfg, ec, shuffle=False, seed=0)
    if res['trainer'].is_global_zero:
        (out / 'history.json').write_text(json.dumps({'train_loss': res['history']['train_loss'],
                                                      'world_size': res['trainer'].world_size}))
    # end the gloo group before exit: left to the interpreter's teardown, a rank can abort after a finished run
    # ('terminate called without an active exception', exit -6)
    from ptycho_torch_nb.core import end_process_group
    assert end_process_group()   # this rank was in a group, and ends it (what every command does on its way out)
''')

def test_ddp_two_processes_match_one(tiny_files, tmp_path):
    "2-process DDP (gloo, CPU), batch 4 per rank, follows the same loss trajectory as 1 process with batch 8."
    from ptycho_torch_nb import workflow as W
    train_file, _ = tiny_files
    script = tmp_path / 'ddp_train.py'; script.write_text(DDP_SCRIPT)
    out = tmp_path / 'ddp'; out.mkdir()
    proc = subprocess.Popen([sys.executable, str(script), str(train_file), str(out)], env=_env(), cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    # meanwhile: the same global batch in one process
    ec = T.default_execution_config(accelerator='cpu', logger_backend=None, enable_checkpointing=False)
    one = W.train_cdi_model_torch(train_file, None, _configs(W, tmp_path / 'one', 8), ec, shuffle=False, seed=0)
    log, _ = proc.communicate(timeout=240)
    assert proc.returncode == 0, log[-3000:]
    ddp = json.loads((out / 'history.json').read_text())
    assert ddp['world_size'] == 2
    print('1 process:', one['history']['train_loss'], ' 2 processes:', ddp['train_loss'])
    np.testing.assert_allclose(ddp['train_loss'], one['history']['train_loss'], rtol=1e-4)

def test_resume_continues_history_and_epochs(tiny_files, tmp_path):
    from ptycho_torch_nb import workflow as W
    train_file, test_file = tiny_files
    ec = T.default_execution_config(accelerator='cpu', logger_backend='csv')
    cfg = _configs(W, tmp_path / 'run', 8, nepochs=1)
    first = W.train_cdi_model_torch(train_file, test_file, cfg, ec)
    assert (tmp_path / 'run' / 'checkpoints' / 'last.ckpt').is_file()
    second = W.train_cdi_model_torch(train_file, test_file, dataclasses.replace(cfg, nepochs=2), ec, resume='last')
    assert second['trainer'].current_epoch == 2
    assert len(second['history']['train_loss']) == 2 and len(second['history']['val_loss']) == 2
    assert second['history']['train_loss'][0] == pytest.approx(first['history']['train_loss'][0])
    assert second['trainer'].global_step == 2 * first['trainer'].global_step

@pytest.mark.parametrize('step', ['reassemble_cdi_image_torch', 'evaluate_reconstruction'])
def test_archive_survives_a_failure_after_training(tiny_files, tmp_path, monkeypatch, step):
    "run_cdi_example_torch archives the trained model before stitching and scoring: a failure there keeps wts.h5.zip."
    from ptycho_torch_nb import workflow as W
    train_file, test_file = tiny_files
    def fail(*args, **kwargs): raise RuntimeError(f'{step} failed')
    monkeypatch.setattr(W, step, fail)
    ec = T.default_execution_config(accelerator='cpu', logger_backend=None, enable_checkpointing=False,
                                    enable_progress_bar=False)
    with pytest.raises(RuntimeError, match=f'{step} failed'):   # the step ran (the test scan has its truth) and failed
        W.run_cdi_example_torch(train_file, test_file, _configs(W, tmp_path / 'run', 8, nepochs=1), execution_config=ec,
                                do_stitching=True)
    assert (tmp_path / 'run' / 'wts.h5.zip').is_file()

def test_logger_choices(tmp_path, monkeypatch):
    "Each backend's logger, writing under the output folder; a missing optional package is a clear ImportError."
    find_spec = T.importlib.util.find_spec                   # as training looks the packages up
    assert T._logger(None, tmp_path) is False and T._logger('none', tmp_path) is False
    assert type(T._logger('csv', tmp_path)).__name__ == 'CSVLogger'
    if find_spec('mlflow') is not None:
        monkeypatch.delenv('MLFLOW_ALLOW_FILE_STORE', raising=False)   # _logger sets it; not left to this environment
        lg = T._logger('mlflow', tmp_path / 'run')
        assert type(lg).__name__ == 'MLFlowLogger' and Path(lg.save_dir) == tmp_path / 'run' / 'mlruns'
    if find_spec('tensorboard') is not None or find_spec('tensorboardX') is not None:
        lg = T._logger('tensorboard', tmp_path / 'run')
        assert type(lg).__name__ == 'TensorBoardLogger' and Path(lg.root_dir).is_relative_to(tmp_path / 'run')
    with pytest.raises(ValueError, match='logger_backend'): T._logger('wandb', tmp_path)
    missing = {'mlflow', 'tensorboard', 'tensorboardX'}       # the packages absent: the install hint, whatever is installed
    monkeypatch.setattr(T.importlib.util, 'find_spec', lambda name, *a, **k: None if name in missing else find_spec(name, *a, **k))
    with pytest.raises(ImportError, match='pip install mlflow'): T._logger('mlflow', tmp_path)
    with pytest.raises(ImportError, match='pip install tensorboard'): T._logger('tensorboard', tmp_path)

def test_trainer_maps_execution_config(tmp_path):
    ec = T.default_execution_config(accelerator='cpu', accum_steps=3, gradient_clip_val=0.5, precision='bf16-mixed',
                                    checkpoint_save_top_k=2, checkpoint_mode='max', early_stop_patience=5,
                                    logger_backend=None, deterministic=False)
    t = T.build_trainer(ec, tmp_path, 7, has_validation=True)   # the monitor: checkpoint_monitor_metric ('val_loss')
    from lightning.pytorch.callbacks import ModelCheckpoint, EarlyStopping
    ck = [c for c in t.callbacks if isinstance(c, ModelCheckpoint)][0]
    es = [c for c in t.callbacks if isinstance(c, EarlyStopping)][0]
    assert (t.max_epochs, t.accumulate_grad_batches, t.gradient_clip_val) == (7, 3, 0.5)
    assert 'bf16' in str(t.precision)
    assert (ck.save_top_k, ck.mode, ck.monitor, ck.save_last) == (2, 'max', 'val_loss', True)
    assert Path(ck.dirpath) == tmp_path / 'checkpoints'
    assert (es.patience, es.monitor) == (5, 'val_loss')

def test_batches_are_indexed_once(tiny_files):
    "The DataLoader hands whole index lists to ContainerDataset.__getitems__ (no per-item calls)."
    from ptycho_torch_nb import workflow as W
    train_file, _ = tiny_files
    TC, MC = TrainingConfig, ModelConfig
    c = W.as_container(train_file, TC(model=MC(N=64, gridsize=1), n_groups=16))
    dl = T.make_dataloader(c, 8, shuffle=False)
    calls = []
    orig = T.ContainerDataset.__getitem__
    T.ContainerDataset.__getitem__ = lambda self, i: calls.append(i) or orig(self, i)
    try: batches = list(dl)
    finally: T.ContainerDataset.__getitem__ = orig
    assert calls == [] and len(batches) == 2
    np.testing.assert_array_equal(batches[1]['X'].numpy(), np.asarray(c.X[8:16]))


def test_an_object_guess_is_scored_only_where_it_is_a_truth():
    """The train CLI's held-out scan: an objectGuess of one value throughout is an initial guess, one that does not hold
    the stitched positions (a crop) would be scored against zeros; both are left out. A real one is kept."""
    from types import SimpleNamespace as NS
    import numpy as np
    from ptycho_torch_nb import workflow as W
    inside = np.array([[[5.0, 5.0]], [[30.0, 34.0]]])   # [n, 1, 2] absolute [x, y], as the stitch's global offsets
    assert W._ground_truth_object(None, NS(objectGuess=np.ones((40, 40), np.complex64)), inside) is None
    real = np.exp(1j * np.linspace(0, 1, 1600)).reshape(40, 40).astype(np.complex64)
    assert W._ground_truth_object(None, NS(objectGuess=real), inside) is real
    assert W._ground_truth_object(None, NS(objectGuess=real[:30, :30]), inside) is None   # y = 34 lies outside the crop
