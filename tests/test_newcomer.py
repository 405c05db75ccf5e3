"""A newcomer's first hour (issue 18): the README's shell commands run as written, every CLI answers `--help` and a
bad file without importing torch, every command writes the same `metrics.json` schema, the README lists every
notebook, `make lab` works as root.

README commands (`test_readme_shell_commands`): the ```sh block under "## The same job from a shell" in README.md
is run line by line in fresh processes, in a temporary folder holding tiny versions of the demo's files
(`demo_outputs/scan.npz`: `simulated_scan(n=16)`; `demo_outputs/train.npz` / `test.npz`: `simulate_run1084(16, 8)`).
The rule that makes them tiny and runnable here, and nothing else:
- `source ...` lines and comments are skipped (the test runs this checkout's interpreter);
- `ptycho-torch-X` runs as `python -m ptycho_torch_nb.cli X` (the console script's entry point, this checkout);
- `--time_budget S` becomes `--time_budget 2` and `--nepochs N` becomes `--nepochs 1`.
"""
import json, os, re, shlex, shutil, subprocess, sys, time
from pathlib import Path
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
CLIS = ('train', 'infer', 'reconstruct')
TINY_BUDGET = {'--time_budget': '2', '--time-budget': '2', '--nepochs': '1', '--epochs': '1'}
SCHEMA_KEYS = {'schema', 'backend', 'amplitude', 'phase', 'alignment', 'conventions', 'loss', 'reference_metrics', 'history'}
SCORES = {'ssim', 'psnr', 'frc50', 'mae', 'rmse'}


def _env():
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get('PYTHONPATH', ''))
    for k in ('PTYCHO_TORCH_DEBUG', 'IN_TEST'): env.pop(k, None)
    return env


def readme_shell_commands(readme: Path = ROOT / 'README.md') -> list:
    "The commands of the ```sh block under '## The same job from a shell', as argument lists."
    text = readme.read_text(encoding='utf-8')
    section = re.search(r'^## The same job from a shell\n(.*?)(?=^## )', text, re.M | re.S)
    assert section, "README.md has no '## The same job from a shell' section"
    block = re.search(r'```sh\n(.*?)```', section.group(1), re.S)
    assert block, "the shell section has no ```sh block"
    lines = [l.split(' #')[0].strip() for l in block.group(1).splitlines()]
    return [shlex.split(l) for l in lines if l and not l.startswith(('#', 'source '))]


def runnable(argv: list) -> list:
    "The documented rule: console script -> `python -m ptycho_torch_nb.cli`, tiny budgets."
    prog = argv[0]
    assert prog.startswith('ptycho-torch-') and prog[len('ptycho-torch-'):] in CLIS, f"unexpected command {prog}"
    out = [sys.executable, '-m', 'ptycho_torch_nb.cli', prog[len('ptycho-torch-'):]]
    args = list(argv[1:])
    for i, a in enumerate(args):
        if i and args[i - 1] in TINY_BUDGET: args[i] = TINY_BUDGET[args[i - 1]]
    return out + args


def test_readme_commands_parse():
    cmds = readme_shell_commands()
    test_progs = [c[0] for c in cmds]
    assert test_progs == ['ptycho-torch-reconstruct', 'ptycho-torch-reconstruct', 'ptycho-torch-train', 'ptycho-torch-infer'], test_progs
    assert not set(cmds[0]) & {'--time_budget', '--nepochs', '--init_from'}, "the first shows the default route (no training)"
    assert '--time_budget' in cmds[1], "the training reconstruct command must carry a time budget (an hour without one)"
    assert runnable(['ptycho-torch-train', '--nepochs', '5', '--seed', '3'])[-4:] == ['--nepochs', '1', '--seed', '3']


@pytest.fixture(scope='module')
def readme_run(tmp_path_factory):
    "Run the README's commands as written (after the documented rule) on tiny demo files; {output_dir: process}."
    from ptycho_torch_nb.simulation import simulated_scan
    from ptycho_torch_nb.workflow import simulate_run1084
    work = tmp_path_factory.mktemp('newcomer')
    demo = work / 'demo_outputs'; demo.mkdir()
    simulated_scan(n=16).to_file(demo / 'scan.npz')
    train, test = simulate_run1084(16, 8, seed=3)
    train.to_file(demo / 'train.npz'); test.to_file(demo / 'test.npz')
    runs = {}
    for argv in readme_shell_commands():
        cmd = runnable(argv)
        t0 = time.perf_counter()
        p = subprocess.run(cmd, cwd=work, env=_env(), capture_output=True, text=True, timeout=900)
        print(f"{' '.join(argv)}: exit {p.returncode} in {time.perf_counter() - t0:.1f} s")
        assert p.returncode == 0, f"{' '.join(argv)} failed:\n{p.stderr[-3000:]}"
        runs[argv[argv.index('--output_dir') + 1]] = p
    return work, runs


@pytest.mark.slow
def test_readme_shell_commands(readme_run):
    work, runs = readme_run
    assert len(runs) == 4
    for out, p in runs.items():
        d = work / out
        for name in ('metrics.json', 'reconstructed_amplitude.png', 'reconstructed_phase.png', 'comparison.png',
                     'reconstruction.npz'):
            assert (d / name).is_file() and (d / name).stat().st_size > 100, (out, name)
        noise = [l for l in (p.stdout + p.stderr).splitlines()
                 if re.search(r'GPU available|TPU available|💡|Tip:|LeafSpec|does not have many workers', l)]
        assert not noise, f"{out}: Lightning's lines without --verbose: {noise}"
    assert (work / 'runs/train/wts.h5.zip').is_file() and (work / 'runs/scan_trained/wts.h5.zip').is_file()
    assert not (work / 'runs/scan/wts.h5.zip').exists() and (work / 'runs/scan/network/metrics.json').is_file()   # the default route
    assert 'route pretrained' in runs['runs/scan'].stdout and 'route train' in runs['runs/scan_trained'].stdout


@pytest.mark.slow
def test_every_command_writes_one_metrics_schema(readme_run):
    work, runs = readme_run
    records = {out: json.loads((work / out / 'metrics.json').read_text()) for out in runs}
    schemas = {r['schema'] for r in records.values()}
    assert len(schemas) == 1, schemas
    for out, r in records.items():
        assert SCHEMA_KEYS <= set(r), (out, SCHEMA_KEYS - set(r))
        for side in ('amplitude', 'phase'):     # the tiny files have their truth: every command scores
            assert set(r[side]) == SCORES, (out, side, r[side])
            assert 0 <= r[side]['frc50'] <= 1, (out, side, r[side]['frc50'])       # a fraction of Nyquist
            assert -1 <= r[side]['ssim'] <= 1 and r[side]['psnr'] < 60, (out, side, r[side])  # not a 255-peak PSNR
        assert r['loss']['name'] == 'poisson_nll' and 'lower is better' in r['loss']['meaning']
    # train and infer: same model, same data, same default grouping seed -> the same scores
    tr, inf = records['runs/train'], records['runs/infer']
    for side in ('amplitude', 'phase'):
        for k in SCORES: assert abs(tr[side][k] - inf[side][k]) <= 1e-4 * max(1, abs(tr[side][k])), (side, k)
    assert records['runs/train']['loss']['final_train'] == records['runs/train']['history']['train_loss'][-1]
    assert records['runs/scan']['reference_metrics'] is None and records['runs/train']['reference_metrics']


def test_metrics_schema_conventions(tmp_path):
    "On a known case: a perfect reconstruction scores 1, noise on data in [0, 1] gives a PSNR on the data's range."
    from ptycho_torch_nb.evaluation import save_outputs, metrics_record, METRICS_SCHEMA
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:64, :64]
    truth = ((0.5 + 0.4 * np.sin(xx / 5) * np.cos(yy / 7)) * np.exp(1j * 0.8 * np.sin(yy / 6))).astype(np.complex64)
    w = np.zeros((64, 64)); w[8:56, 8:56] = 1.0
    perfect = metrics_record(dict(stitched_obj=truth * 2 * np.exp(0.5j), ground_truth_canvas=truth, stitch_weights=w))
    for side in ('amplitude', 'phase'):
        assert perfect[side]['ssim'] > 0.999 and perfect[side]['frc50'] == 1.0 and perfect[side]['mae'] < 1e-5, perfect[side]
    noisy = truth + (0.05 * rng.normal(size=truth.shape)).astype(np.float32)
    paths = save_outputs(np.abs(noisy), np.angle(noisy), dict(stitched_obj=noisy, ground_truth_canvas=truth,
                         stitch_weights=w, history={'train_loss': [-1.0e6, -2.9e6]}), tmp_path)
    r = json.loads(paths['metrics.json'].read_text())
    assert r['schema'] == METRICS_SCHEMA and SCHEMA_KEYS <= set(r)
    rmse = r['amplitude']['rmse']
    assert 15 < r['amplitude']['psnr'] < 40, r['amplitude']           # PSNR on the truth's range (~0.8), not 255
    test_range = np.ptp(np.abs(truth)[9:55, 9:55])
    assert abs(r['amplitude']['psnr'] - 20 * np.log10(test_range / rmse)) < 1.5
    from scipy.ndimage import gaussian_filter          # resolution: a blurred textured object crosses 0.5 below Nyquist
    textured = truth * (1 + 0.2 * rng.normal(size=truth.shape)).astype(np.float32)
    frc = [metrics_record(dict(stitched_obj=gaussian_filter(textured.real, s) + 1j * gaussian_filter(textured.imag, s),
                               ground_truth_canvas=textured, stitch_weights=w))['amplitude']['frc50'] for s in (1, 2)]
    assert 1 > frc[0] > frc[1] > 0.25, frc             # more blur, lower resolution; a fraction of Nyquist, not rings
    assert 'Nyquist' in r['conventions']['frc50'] and 'range' in r['conventions']['psnr']
    assert r['loss']['final_train'] == -2.9e6 and 'negative' in r['loss']['meaning']


@pytest.mark.parametrize('cmd', CLIS + ('pretrain',))
def test_cli_answers_without_importing_torch(cmd, tmp_path):
    "Fresh process: `--help`, a file with a wrong key, a used output folder and a broken archive are answered before torch (or Lightning) is imported."
    bad = tmp_path / 'bad.npz'
    np.savez(bad, xcoordz=np.zeros(4), ycoords=np.zeros(4), diff3d=np.zeros((4, 8, 8), np.float32),
             probeGuess=np.ones((8, 8), np.complex64))
    import zipfile
    (tmp_path / 'model').mkdir(); (tmp_path / 'broken').mkdir()   # an archive opened only after the data check; a text file
    with zipfile.ZipFile(tmp_path / 'model' / 'wts.h5.zip', 'w') as z: z.writestr('manifest.json', '{}')
    (tmp_path / 'broken' / 'wts.h5.zip').write_text('not a zip')
    bad_args = {'train': ['--train_data_file', str(bad)], 'infer': ['--model_path', str(tmp_path / 'model'), '--test_data', str(bad)],
                'reconstruct': [str(bad), '--output_dir', str(tmp_path / 'out')],
                'pretrain': ['--output_dir', str(tmp_path / 'out'), '--steps', '0']}[cmd]   # no data file: a bad value
    probe = ("import sys, json, time; t0 = time.perf_counter(); from ptycho_torch_nb import cli\n"   # = the console script
             "try: rc = getattr(cli, sys.argv[1] + '_main')(sys.argv[2:])\nexcept SystemExit as e: rc = e.code\n"
             "print(json.dumps({'rc': rc, 'torch': 'torch' in sys.modules, 'lightning': 'lightning' in sys.modules,"
             " 's': time.perf_counter() - t0}), file=sys.stderr)")
    good, used = tmp_path / 'good.npz', tmp_path / 'used'   # a valid scan, and a folder that holds a previous run
    from ptycho_torch_nb.simulation import simulated_scan
    simulated_scan(n=8).to_file(good); used.mkdir(); (used / 'metrics.json').write_text('{}')
    used_args = {'train': ['--train_data_file', str(good), '--test_data_file', str(good), '--output_dir', str(used)],
                 'infer': ['--model_path', str(tmp_path / 'model'), '--test_data', str(good), '--output_dir', str(used)],
                 'reconstruct': [str(good), '--output_dir', str(used)]}.get(cmd)
    cases = [([cmd, '--help'], 0, None), ([cmd, *bad_args], 2, "'xcoords'" if cmd != 'pretrain' else '')]
    if used_args: cases.append(([cmd, *used_args], 2, 'holds a previous run (metrics.json)'))
    if cmd == 'reconstruct': cases += [([cmd, str(tmp_path), '--output_dir', str(tmp_path / 'o')], 2, 'is a folder; name the file in it'),
                                       ([cmd, str(good), '--n_filters_scale', '17', '--output_dir', str(tmp_path / 'o')], 2,
                                        'ptycho-torch-reconstruct: error: n_filters_scale=17 is invalid: allowed an int in 1..16')]
    if cmd == 'train': cases.append(([cmd, '--train_data_file', str(good), '--batch_size', '3'], 2, 'batch_size=3 is invalid'))
    if cmd == 'infer': cases.append(([cmd, '--model_path', str(tmp_path / 'broken'), '--test_data', str(good)], 2, 'not a readable model archive'))
    for argv, want_rc, says in cases:
        t0 = time.perf_counter()
        p = subprocess.run([sys.executable, '-c', probe, *argv], env=_env(), cwd=tmp_path, capture_output=True,
                           text=True, timeout=120)
        wall = time.perf_counter() - t0
        res = json.loads(p.stderr.strip().splitlines()[-1])
        print(f"ptycho-torch-{cmd} {argv[1]}: {wall:.2f} s in a fresh process (torch imported: {res['torch']})")
        assert res['rc'] == want_rc, (argv, p.stdout[-500:], p.stderr[-1500:])
        assert not res['torch'] and not res['lightning'], f"{argv}: torch imported before parsing/validating"
        if want_rc == 2:
            err = p.stderr.strip().splitlines()
            assert err[-2].startswith(f'ptycho-torch-{cmd}: error:'), err
            assert says in err[-2], (says, err)
            assert 'Traceback' not in p.stderr


def test_help_has_no_doubled_defaults():
    from ptycho_torch_nb import cli
    fmt = cli.HelpFormatter('x')
    for name, parser in (('train', cli.train_parser()), ('infer', cli.infer_parser()), ('reconstruct', cli.reconstruct_parser()),
                         ('pretrain', cli.pretrain_parser())):
        assert parser.formatter_class is cli.HelpFormatter, name
        for action in parser._actions:
            h = fmt._get_help_string(action) % {'default': action.default}
            assert h.lower().count('(default') <= 1, (name, action.option_strings, h)
            if action.nargs == 0: assert '(default: True)' not in h and '(default: False)' not in h, (name, h)
        flags = {s for a in parser._actions for s in a.option_strings}
        assert {'--output_dir', '--quiet', '--verbose', '--accelerator'} <= flags, name
        if name in ('train', 'reconstruct'): assert {'--nepochs', '--gridsize'} <= flags, name
        if name != 'infer': assert {'--seed', '--batch_size', '--n_filters_scale', '--learning_rate'} <= flags, name
    assert '--epochs' in {s for a in cli.reconstruct_parser()._actions for s in a.option_strings}   # the older name
    assert cli.reconstruct_parser().parse_args(['s.npz', '--output_dir', 'o', '--epochs', '3']).nepochs == 3


def test_readme_lists_every_notebook_with_working_links():
    readme = (ROOT / 'README.md').read_text(encoding='utf-8')
    links = re.findall(r'\]\((nbs/[^)#\s]+\.ipynb)', readme)
    for nb in sorted((ROOT / 'nbs').glob('*.ipynb')):
        if nb.name == 'index.ipynb': continue
        assert f'nbs/{nb.name}' in links, f"README.md does not link {nb.name}"
    for link in links: assert (ROOT / link).is_file(), link
    assert not re.search(r'\]\((?!https?:|nbs/|#)[^)]*\.ipynb\)', readme), "a notebook link not under nbs/"
    assert 'digest §' not in readme or '../shared/reference' in readme
    i_make, i_shell = readme.index('make demo'), readme.index('## The same job from a shell')
    assert i_make < i_shell and 'GB' in readme[:i_shell], "the two commands and the install size come first"


@pytest.mark.skipif(shutil.which('make') is None, reason='make is not installed')
def test_make_lab_allows_root():
    p = subprocess.run(['make', '-n', 'lab'], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    line = next(l for l in p.stdout.splitlines() if 'jupyter lab' in l)
    assert ('--allow-root' in line) == (os.getuid() == 0), line
