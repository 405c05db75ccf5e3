"""CLI tests: every flag reaches its config field; bad paths and bad values give one clean line; a tiny
train -> infer round trip writes the expected files (in-process, N=64, 16 patterns, 1 epoch)."""
import json, os, subprocess, sys
from pathlib import Path
import pytest
from ptycho_torch_nb import cli

ROOT = Path(__file__).resolve().parent.parent

def _env():
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get('PYTHONPATH', ''))
    env.pop('PTYCHO_TORCH_DEBUG', None)
    return env

def _parse(train_file, *extra):
    return cli.build_train_configs(cli.train_parser().parse_args(['--train_data_file', str(train_file), *extra]))

def test_every_training_flag_reaches_its_field(tiny_files, tmp_path):
    train, test = tiny_files
    tc, ec = _parse(train, '--test_data_file', str(test), '--output_dir', str(tmp_path), '--n_groups', '12',
                    '--gridsize', '2', '--batch_size', '4', '--nepochs', '9', '--accelerator', 'cpu',
                    '--no-deterministic', '--num-workers', '1', '--learning-rate', '3e-4', '--scheduler', 'WarmupCosine',
                    '--accumulate-grad-batches', '2', '--logger', 'csv', '--disable-checkpointing',
                    '--checkpoint-save-top-k', '2', '--checkpoint-monitor', 'train_loss', '--checkpoint-mode', 'max',
                    '--early-stop-patience', '4', '--quiet', '--inference-batch-size', '64', '--nphotons', '1e6',
                    '--n_subsample', '14', '--subsample_seed', '3', '--neighbor_count', '6', '--n_filters_scale', '1',
                    '--gradient-clip-val', '1.5', '--gradient-clip-algorithm', 'value', '--precision', 'bf16-mixed',
                    '--strategy', 'ddp', '--devices', '2', '--num-nodes', '3', '--pin-memory')
    assert (tc.train_data_file, tc.test_data_file, tc.output_dir) == (train, test, tmp_path)
    assert (tc.n_groups, tc.model.gridsize, tc.model.object_big, tc.batch_size, tc.nepochs) == (12, 2, True, 4, 9)
    assert (tc.nphotons, tc.n_subsample, tc.subsample_seed, tc.neighbor_count, tc.model.n_filters_scale) == (1e6, 14, 3, 6, 1)
    assert (tc.scheduler, tc.gradient_clip_val, tc.gradient_clip_algorithm, tc.backend, tc.model.N) == \
           ('WarmupCosine', 1.5, 'value', 'pytorch', 64)
    assert (ec.accelerator, ec.deterministic, ec.num_workers, ec.learning_rate, ec.scheduler, ec.accum_steps) == \
           ('cpu', False, 1, 3e-4, 'WarmupCosine', 2)
    assert (ec.logger_backend, ec.enable_checkpointing, ec.checkpoint_save_top_k, ec.checkpoint_monitor_metric,
            ec.checkpoint_mode, ec.early_stop_patience) == ('csv', False, 2, 'train_loss', 'max', 4)
    assert (ec.enable_progress_bar, ec.inference_batch_size, ec.gradient_clip_val, ec.gradient_clip_algorithm) == \
           (False, 64, 1.5, 'value')
    assert (ec.precision, ec.strategy, ec.devices, ec.num_nodes, ec.pin_memory) == ('bf16-mixed', 'ddp', 2, 3, True)

def test_aliases_and_defaults(tiny_files):
    train, _ = tiny_files
    tc, ec = _parse(train, '--n_images', '7', '--max_epochs', '3', '--accelerator', 'cpu')
    assert (tc.n_groups, tc.nepochs) == (7, 3)
    assert _parse(train, '--epochs', '4', '--accelerator', 'cpu')[0].nepochs == 4   # the name ptycho-torch-reconstruct takes too
    tc, ec = _parse(train, '--accelerator', 'cpu')
    assert (tc.model.gridsize, tc.batch_size, tc.nepochs, tc.n_groups) == (2, 16, 100, 16)   # one group per position
    tc, ec = _parse(train, '--accelerator', 'cpu', '--n_subsample', '10')
    assert tc.n_groups == 10
    assert (ec.logger_backend, ec.enable_checkpointing, ec.deterministic, ec.enable_progress_bar) == ('csv', True, True, True)
    tc, ec = _parse(train, '--accelerator', 'cpu', '--enable-checkpointing', '--logger', 'none')
    assert ec.enable_checkpointing is True and ec.logger_backend is None

def test_deprecated_flags_warn_and_map(tiny_files):
    train, _ = tiny_files
    with pytest.warns(DeprecationWarning, match='--device is deprecated'):
        tc, ec = _parse(train, '--device', 'cpu')
    assert ec.accelerator == 'cpu'
    with pytest.warns(DeprecationWarning, match='--disable_mlflow is deprecated'):
        tc, ec = _parse(train, '--accelerator', 'cpu', '--disable_mlflow')
    assert ec.logger_backend is None and ec.enable_progress_bar is False

def _run(fn, argv, capsys):
    try: code = fn(argv)
    except SystemExit as e: code = e.code
    return code, capsys.readouterr().err.strip()

@pytest.mark.parametrize('argv,needle', [
    (['--train_data_file', '/no/such/train.npz'], '/no/such/train.npz'),
    (['--batch_size', '0'], 'batch_size'),
    (['--batch_size', 'many'], 'batch_size'),
    (['--learning-rate', '-1'], 'learning-rate'),
    (['--gridsize', '1.5'], 'gridsize'),
    (['--accelerator', 'tpu'], 'tpu'),
    (['--accelerator', 'abacus'], 'accelerator'),
    (['--logger', 'wandb'], 'logger'),
    (['--checkpoint-mode', 'median'], 'checkpoint-mode'),
    (['--resume', '/no/such/last.ckpt', '--nepochs', '1'], '/no/such/last.ckpt'),
])
def test_bad_input_is_one_clean_line(tiny_files, argv, needle, capsys):
    train, _ = tiny_files
    full = argv if argv[0] == '--train_data_file' else ['--train_data_file', str(train), '--accelerator', 'cpu', *argv] \
        if '--accelerator' not in argv else ['--train_data_file', str(train), *argv]
    code, err = _run(cli.train_main, full, capsys)
    assert code not in (0, None), err
    last = err.splitlines()[-1]
    assert needle in err and 'Traceback' not in err
    assert last.startswith('ptycho-torch-train: error:')

def test_missing_test_file_and_model(tiny_files, tmp_path, capsys):
    train, test = tiny_files
    code, err = _run(cli.train_main, ['--train_data_file', str(train), '--test_data_file', str(tmp_path / 'x.npz')], capsys)
    assert code == 2 and str(tmp_path / 'x.npz') in err and len(err.splitlines()) == 1
    code, err = _run(cli.infer_main, ['--model_path', str(tmp_path), '--test_data', str(test)], capsys)
    assert code == 2 and 'wts.h5.zip' in err and len(err.splitlines()) == 1
    code, err = _run(cli.infer_main, ['--model_path', str(tmp_path / 'none'), '--test_data', str(test)], capsys)
    assert code == 2 and str(tmp_path / 'none') in err

def test_help_documents_every_flag_subprocess():
    p = subprocess.run([sys.executable, '-m', 'ptycho_torch_nb.cli', 'train', '--help'], capture_output=True, text=True,
                       env=_env(), cwd=ROOT, timeout=60)
    assert p.returncode == 0, p.stderr
    for flag in ('--train_data_file', '--test_data_file', '--output_dir', '--n_groups', '--n_images', '--gridsize',
                 '--batch_size', '--nepochs', '--max_epochs', '--accelerator', '--deterministic', '--no-deterministic',
                 '--num-workers', '--learning-rate', '--scheduler', '--accumulate-grad-batches', '--logger',
                 '--enable-checkpointing', '--disable-checkpointing', '--checkpoint-save-top-k', '--checkpoint-monitor',
                 '--checkpoint-mode', '--early-stop-patience', '--quiet', '--inference-batch-size', '--device',
                 '--disable_mlflow', '--resume'):
        assert flag in p.stdout, flag
    for parser in (cli.train_parser(), cli.infer_parser()):
        assert all(a.help for a in parser._actions)
    top = subprocess.run([sys.executable, '-m', 'ptycho_torch_nb.cli', '--help'], capture_output=True, text=True,
                         env=_env(), cwd=ROOT, timeout=60)
    assert top.returncode == 0 and all(c in top.stdout for c in ('train', 'infer', 'reconstruct'))

def _as_hdf5(npz, path):
    "An NPZ scan rewritten as an HDF5 file: entry/data/data (float32 amplitudes), entry/x, entry/y, entry/probe."
    import numpy as np, h5py
    with np.load(npz) as d, h5py.File(path, 'w') as f:
        f.create_dataset('entry/data/data', data=d['diff3d'].astype(np.float32), chunks=(1,) + d['diff3d'].shape[1:])
        f['entry/x'], f['entry/y'], f['entry/probe'] = d['xcoords'], d['ycoords'], d['probeGuess']
    return path

def test_hdf5_input_flags(tiny_files, tmp_path, capsys):
    "train/infer/reconstruct read an HDF5 scan named by the HDF5 flags; the pattern size comes from its probe."
    import numpy as np
    train, _ = tiny_files
    h5 = _as_hdf5(train, tmp_path / 'train.h5')
    flags = ['--data', 'amplitude', '--positions', 'entry/x', 'entry/y', '--probe', 'entry/probe']
    args = cli.train_parser().parse_args(['--train_data_file', str(h5), '--gridsize', '1', *flags])
    args.train_scan = cli._check_scan(args.train_data_file, 'training data file', args)
    with np.load(train) as d: n, N = len(d['xcoords']), d['probeGuess'].shape[-1]
    np.testing.assert_allclose(args.train_scan.diff3d, np.load(train)['diff3d'])
    tc, _ = cli.build_train_configs(args)
    assert (tc.model.N, tc.n_groups) == (N, n)
    for main, argv in ((cli.train_main, ['--train_data_file', str(h5)]),
                       (cli.reconstruct_main, [str(h5), '--output_dir', str(tmp_path / 'r')])):
        code, err = _run(main, argv + flags[:-2], capsys)   # no --probe
        assert code == 2 and 'a probe is required' in err and '\n' not in err, err
        code, err = _run(main, argv + ['--positions', 'entry/nothing'], capsys)
        assert code == 2 and 'entry/nothing' in err, err

def test_npz_input_flags(tiny_files, tmp_path, capsys):
    "An NPZ takes --data (counts become amplitudes) and --diffraction_layout; an HDF5-only flag on an NPZ is one line, not ignored."
    import numpy as np
    train, _ = tiny_files
    with np.load(train) as d: arrays = {k: d[k] for k in d.files if k != '_metadata'}
    counts = np.round(arrays['diff3d'].astype(np.float64) ** 2)
    np.savez(tmp_path / 'counts.npz', **{**arrays, 'diff3d': counts})
    for main, argv in ((cli.train_main, ['--train_data_file', str(tmp_path / 'counts.npz')]),
                       (cli.reconstruct_main, [str(tmp_path / 'counts.npz'), '--output_dir', str(tmp_path / 'r')])):
        code, err = _run(main, argv, capsys)                     # counts read as amplitudes: refused, naming the flag
        assert code == 2 and '--data intensity' in err and '\n' not in err, err
        code, err = _run(main, argv + ['--crop', '32', '--probe', 'p.npz'], capsys)
        assert code == 2 and err.endswith('drop them') and '--probe, --crop' in err and '\n' not in err, err
    args = cli.train_parser().parse_args(['--train_data_file', str(tmp_path / 'counts.npz'), '--data', 'counts'])
    raw = cli._check_scan(args.train_data_file, 'training data file', args)   # loaded with the flag, and used so
    np.testing.assert_allclose(raw.diff3d, np.sqrt(counts), rtol=1e-6)
    assert cli._check_scan(train, 'training data file', cli.train_parser().parse_args(['--train_data_file', str(train)])) == train


def test_reconstruct_says_its_route_first_and_warns_of_a_poor_fit(tiny_files, tmp_path, capsys):
    "The route is named before any work; intensities passed off as amplitudes (not whole numbers: no refusal) fit poorly, and it says so."
    import numpy as np
    train, _ = tiny_files
    with np.load(train) as d: arrays = {k: d[k] for k in d.files}
    a = arrays['diff3d'].astype(np.float64)
    np.savez(tmp_path / 'intensities.npz', **{**arrays, 'diff3d': (a ** 2 / a.max()).astype(np.float32)})
    code, err = _run(cli.reconstruct_main, [str(tmp_path / 'intensities.npz'), '--output_dir', str(tmp_path / 'r'), '--polish', '30'], capsys)
    lines = err.splitlines()
    assert code == 0 and lines[0].startswith('ptycho-torch-reconstruct: route pretrained ('), err
    assert 'warning: the image fits the data poorly' in lines[-1] and '--data' in lines[-1], err
    fit = json.loads((tmp_path / 'r' / 'reconstruct.json').read_text())['data_misfit']
    assert fit['final'] > 1000 * fit['photon_noise'], fit
    code, err = _run(cli.infer_main, ['--model_path', str(tmp_path / 'r'), '--test_data', str(train)], capsys)   # no network in it
    assert code == 2 and 'holds no trained network' in err and 'ptycho-torch-reconstruct SCAN' in err and '\n' not in err, err


def test_overwrite_never_removes_the_model_the_run_reads(tiny_files, tmp_path, capsys):
    "--overwrite sets a previous run aside (and deletes the one before): a model read from there is refused, not moved or deleted."
    import shutil
    _, test = tiny_files
    model = tmp_path / 'model'; shutil.copytree(Path(cli.__file__).resolve().parent.parent / 'data' / 'pretrained_N64', model)
    run = tmp_path / 'run'; shutil.copytree(model, run / '.previous_run'); (run / 'reconstruct.json').write_text('{}')
    for out, reads in ((model, model), (run, run / '.previous_run')):   # the model's own folder; the run set aside in the folder
        before = {p.name: p.read_bytes() for p in reads.iterdir()}
        code, err = _run(cli.reconstruct_main, [str(test), '--output_dir', str(out), '--pretrained', str(reads), '--polish', '0', '--overwrite'], capsys)
        last = err.splitlines()[-1]
        assert code == 2 and last.startswith('ptycho-torch-reconstruct: error: ') and 'which this run reads; write to another output folder' in last, err
        assert {p.name: p.read_bytes() for p in reads.iterdir()} == before

def test_train_then_infer_round_trip(tiny_files, tmp_path, capsys):
    train, test = tiny_files
    out = tmp_path / 'train_out'
    code = cli.train_main(['--train_data_file', str(train), '--test_data_file', str(test), '--output_dir', str(out),
                           '--gridsize', '1', '--n_groups', '16', '--nepochs', '1', '--batch_size', '8',
                           '--n_filters_scale', '1', '--accelerator', 'cpu', '--quiet'])
    assert code == 0, capsys.readouterr().err
    for name in ('wts.h5.zip', 'reconstructed_amplitude.png', 'reconstructed_phase.png', 'comparison.png',
                 'loss_curve.png', 'metrics.json', 'stitched_object.npy', 'reconstruction.npz', 'checkpoints/last.ckpt'):
        assert (out / name).is_file() and (out / name).stat().st_size > 100, name
    m = json.loads((out / 'metrics.json').read_text())
    assert m['backend'] == 'pytorch' and len(m['history']['train_loss']) == 1 and 'ssim' in m['amplitude']
    assert 'ssim' in m['reference_metrics'] and m['loss']['final_train'] == m['history']['train_loss'][-1]
    assert list((out / 'lightning_logs').glob('version_*/metrics.csv'))
    inf = tmp_path / 'infer_out'
    code = cli.infer_main(['--model_path', str(out), '--test_data', str(test), '--output_dir', str(inf),
                           '--accelerator', 'cpu', '--inference-batch-size', '4'])
    assert code == 0, capsys.readouterr().err
    assert 'outputs in' in capsys.readouterr().out
    for name in ('reconstructed_amplitude.png', 'reconstructed_phase.png', 'metrics.json', 'stitched_object.npy'):
        assert (inf / name).is_file(), name
    import numpy as np
    np.testing.assert_allclose(np.load(inf / 'stitched_object.npy'), np.load(out / 'stitched_object.npy'), atol=1e-5)
    # the same test scan as an HDF5 detector file (amplitudes, positions and probe as datasets): the same object
    h5 = _as_hdf5(test, tmp_path / 'test.h5')
    code = cli.infer_main(['--model_path', str(out), '--test_data', str(h5), '--output_dir', str(tmp_path / 'infer_h5'),
                           '--accelerator', 'cpu', '--inference-batch-size', '4', '--quiet', '--data', 'amplitude',
                           '--positions', 'entry/x', 'entry/y', '--probe', 'entry/probe'])
    assert code == 0, capsys.readouterr().err
    np.testing.assert_allclose(np.load(tmp_path / 'infer_h5' / 'stitched_object.npy'), np.load(inf / 'stitched_object.npy'), atol=1e-5)
    mi = json.loads((inf / 'metrics.json').read_text())   # same model, data and default grouping seed: same scores
    core = {'schema', 'backend', 'amplitude', 'phase', 'alignment', 'conventions', 'loss', 'reference_metrics', 'history'}
    assert core <= set(mi) and core <= set(m) and mi['schema'] == m['schema'] and mi['history'] is None
    for side in ('amplitude', 'phase'):
        for k, v in m[side].items(): assert abs(mi[side][k] - v) <= 1e-4 * max(1.0, abs(v)), (side, k, v, mi[side][k])
    # a flat objectGuess (an initial guess, not a truth) is not scored, by infer as by reconstruct
    with np.load(test) as d: arrays = {k: d[k] for k in d.files}
    np.savez(tmp_path / 'flat.npz', **{**arrays, 'objectGuess': np.ones_like(arrays['objectGuess'])})
    code = cli.infer_main(['--model_path', str(out), '--test_data', str(tmp_path / 'flat.npz'), '--output_dir', str(tmp_path / 'flat'),
                           '--accelerator', 'cpu', '--quiet'])
    assert code == 0 and json.loads((tmp_path / 'flat' / 'metrics.json').read_text())['amplitude'] is None
