"""`pretrain` (a tiny model in seconds), its archive and card, resume, the hash and fit checks,
zero-shot reconstruction, fine-tuning from the pretrained archive, and `ptycho-torch-pretrain`.
"""
import contextlib, copy, io, json, re, shutil, time
from pathlib import Path
import numpy as np
import pytest
import torch

from ptycho_torch_nb import pretrain as PT
from ptycho_torch_nb.corpus import sample_scan, gaussian_probe, HELD_OUT_FAMILIES, TRAINING_FAMILIES

def child_env(**extra) -> dict:
    "A child python's environment that finds this checkout's package, installed or not (the device machine runs the tree uninstalled)."
    import os
    root = str(Path(__file__).resolve().parent.parent)
    return dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get('PYTHONPATH')])), **extra)

TINY = dict(n_scans=2, n=8, batch_size=4, seed=0, progress=False, checkpoint_every=2)


@pytest.fixture(scope='module')
def pretrained(tmp_path_factory):
    "(output folder, pretrain's result); the result also holds `initial_state`, the network's weights as built."
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp('pre') / 'model'
    initial, build = {}, PT._build_net
    def build_and_record(*args, **kwargs):
        net = build(*args, **kwargs); initial.update(copy.deepcopy(net.state_dict())); return net
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(PT, '_build_net', build_and_record)
        res = PT.pretrain(out, steps=3, command='pytest', **TINY)
    return out, dict(res, initial_state=initial)


@pytest.fixture(scope='module')
def held_out_scan(pretrained):
    probe = pretrained[1]['corpus'].probes[0].numpy()           # a probe of the size the tiny corpus held
    return sample_scan(np.random.default_rng(3), N=64, n=10, families=list(HELD_OUT_FAMILIES), allow_held_out=True,
                       probe=probe)


def test_outputs_and_card(pretrained):
    out, res = pretrained
    card = json.loads((out / 'model_card.json').read_text())
    assert (out / 'wts.h5.zip').is_file() and (out / 'checkpoints' / 'last.ckpt').is_file()
    assert card['sha256'] == PT._sha256(out / 'wts.h5.zip') and card['size_bytes'] == (out / 'wts.h5.zip').stat().st_size
    assert card['N'] == 64 and card['training']['steps'] == 3 and card['command'] == 'pytest'
    assert card['commit'] is None or len(card['commit'].split('-')[0]) == 40
    assert set(card['corpus']['families']) == set(TRAINING_FAMILIES)
    assert card['corpus']['held_out_families'] == list(HELD_OUT_FAMILIES)
    assert not set(card['corpus']['families_drawn']) & set(HELD_OUT_FAMILIES)
    lo, hi = card['probe']['diameter80_range']
    assert 0 < lo <= hi < 64
    for key in ('wall_s', 'train_s', 'learning_rate', 'batch_size'): assert key in card['training']
    assert card['size_bytes'] < 10e6


def test_training_changes_the_weights(pretrained):
    "Three optimiser steps move the network away from the weights it was built with, every generator conv among them."
    out, res = pretrained
    initial, trained = res['initial_state'], res['model'].state_dict()
    assert initial and set(initial) == set(trained)
    convs = [k for k, v in initial.items() if '.generator.' in k and k.endswith('.weight') and v.ndim == 4]
    assert convs, sorted(initial)
    still = [k for k in convs if torch.equal(initial[k], trained[k].to(initial[k].device))]
    assert not still, f"generator conv weights unchanged by training: {still}"


def test_never_overwrites_unasked(pretrained):
    out, _ = pretrained
    with pytest.raises(FileExistsError, match='already holds a pretrained model'):
        PT.pretrain(out, steps=1, **TINY)


def test_resume_continues_the_run(tmp_path, monkeypatch):
    out, build = tmp_path / 'm', PT.build_corpus
    def slow_build(*args, **kwargs): time.sleep(0.5); return build(*args, **kwargs)   # corpus time that shows in the wall time
    monkeypatch.setattr(PT, 'build_corpus', slow_build)
    first = PT.pretrain(out, steps=6, **TINY)['card']['training']
    saved = torch.load(out / 'checkpoints' / 'last.ckpt', map_location='cpu', weights_only=False)['callbacks']
    clock = [v for v in saved.values() if isinstance(v, dict) and 'wall_s' in v]
    assert len(clock) == 1 and clock[0]['wall_s'] == first['wall_s'] and clock[0]['sessions'] == 1   # the card's totals
    moved = tmp_path / 'moved'; shutil.move(out, moved)               # resumed where the run now lies
    res = PT.pretrain(moved, steps=7, resume=True, **TINY)
    t = res['card']['training']
    assert t['steps'] == 7                                            # 6 restored + 1 more, not 7 more
    assert sorted(p.name for p in (moved / 'checkpoints').glob('*.ckpt')) == ['last.ckpt']   # no last-v1.ckpt beside a stale last
    # the card's times are the whole run's: both sessions' wall and corpus seconds, never less than the training inside
    assert t['sessions'] == 2 and t['corpus_s'] > first['corpus_s'] and t['train_s'] > first['train_s']
    assert t['wall_s'] > first['wall_s'] and t['wall_s'] >= t['train_s'] + t['corpus_s']
    with pytest.raises(FileNotFoundError, match='nothing to resume'):
        PT.pretrain(tmp_path / 'empty', steps=1, resume=True, **TINY)


def test_hash_check_and_clear_errors(pretrained, tmp_path, held_out_scan):
    out, _ = pretrained
    model, card = PT.load_pretrained(out, held_out_scan)
    assert card['sha256'] == PT._sha256(out / 'wts.h5.zip')
    bad = tmp_path / 'bad'; shutil.copytree(out, bad)
    data = bytearray((bad / 'wts.h5.zip').read_bytes()); data[len(data) // 3] ^= 0x55
    (bad / 'wts.h5.zip').write_bytes(bytes(data))
    with pytest.raises(ValueError, match='SHA-256'): PT.load_pretrained(bad)
    with pytest.raises(FileNotFoundError, match='model card'): PT.load_pretrained(tmp_path)
    with pytest.raises(ValueError, match='is for N=64'):
        PT.load_pretrained(out, sample_scan(np.random.default_rng(0), N=32, n=6))
    with pytest.raises(ValueError, match='outside'):
        PT.load_pretrained(out, sample_scan(np.random.default_rng(0), N=64, n=6, probe=gaussian_probe(64, 3.0)))


def test_use_scan_keeps_the_learned_ratio(pretrained, held_out_scan):
    out, _ = pretrained
    model, _ = PT.load_pretrained(out)
    r = float(torch.exp(model.model.log_scale) / model.model.intensity_scale)
    PT.use_scan(model, held_out_scan)
    s = float(model.model.intensity_scale)
    assert s == pytest.approx(np.sqrt(held_out_scan.metadata['nphotons']) / 32, rel=1e-5)
    assert float(torch.exp(model.model.log_scale)) / s == pytest.approx(r, rel=1e-5)


def test_zero_shot(pretrained, held_out_scan):
    out, _ = pretrained
    res = PT.reconstruct_zero_shot(out, held_out_scan)
    img = res['stitched_obj']
    assert img.ndim == 2 and np.isfinite(img).all() and np.abs(img).max() > 0
    assert set(res['metrics']) >= {'ssim_amp', 'ssim_phase'} and res['seconds'] > 0


def test_fine_tune_from_the_pretrained_archive(pretrained, held_out_scan):
    from ptycho_torch_nb.reconstruct import reconstruct_scan
    out, _ = pretrained
    res = reconstruct_scan(held_out_scan, nepochs=1, init_from=out, batch_size=4, progress=False)
    assert np.isfinite(res['stitched_obj']).all() and res['steps'] > 0
    # the archive was pretrained at intensity scale 1; fine-tuning works in this scan's s0 (PtychoPINN.adopt_scan)
    m = res['models']['autoencoder'].model
    from ptycho_torch_nb.data_container import scan_nphotons
    s0 = np.sqrt(scan_nphotons(held_out_scan)) / (64 / 2)
    assert float(m.intensity_scale) == pytest.approx(s0, rel=1e-5) and s0 != pytest.approx(1.0)


def _cli(argv):
    from ptycho_torch_nb.cli import pretrain_main
    err, outp = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(outp): code = pretrain_main(argv)
    return code, outp.getvalue(), err.getvalue()


def test_cli(tmp_path):
    out = tmp_path / 'cli'
    code, stdout, _ = _cli(['--output_dir', str(out), '--n_scans', '2', '--positions', '8', '--steps', '2',
                            '--batch_size', '4', '--accelerator', 'cpu', '--quiet'])
    assert code == 0 and (out / 'model_card.json').is_file()
    card = json.loads((out / 'model_card.json').read_text())
    assert card['command'].startswith('ptycho-torch-pretrain --output_dir') and card['training']['steps'] == 2
    code, _, err = _cli(['--output_dir', str(out), '--steps', '1', '--quiet'])
    assert code == 2 and 'already holds' in err and 'Traceback' not in err and err.count('\n') == 1
    code, _, err = _cli(['--output_dir', str(tmp_path / 'x'), '--families', 'labyrinth'])
    assert code == 2 and 'labyrinth' in err
    # continuing from a pretrained model: recorded in the card; with --resume, or from a corrupted model: one line, exit 2
    code, _, err = _cli(['--output_dir', str(tmp_path / 'more'), '--n_scans', '2', '--positions', '8', '--steps', '1',
                         '--batch_size', '4', '--accelerator', 'cpu', '--quiet', '--init_from', str(out)])
    assert code == 0, err
    assert json.loads((tmp_path / 'more' / 'model_card.json').read_text())['training']['init_from']['sha256'] == card['sha256']
    code, _, err = _cli(['--output_dir', str(out), '--resume', '--init_from', str(out), '--quiet'])
    assert code == 2 and '--init_from with --resume' in err and err.count('\n') == 1
    bad = tmp_path / 'bad'; shutil.copytree(out, bad)
    with open(bad / 'wts.h5.zip', 'r+b') as f: f.seek(100); f.write(b'\0' * 8)
    code, _, err = _cli(['--output_dir', str(tmp_path / 'y'), '--steps', '1', '--quiet', '--init_from', str(bad)])
    assert code == 2 and 'SHA-256' in err and 'Traceback' not in err and not (tmp_path / 'y' / 'wts.h5.zip').exists()


def test_cli_label_weight(tmp_path):
    # with labels: the card says which loss made the model; a negative weight is refused before anything is simulated
    out = tmp_path / 'labelled'
    code, _, err = _cli(['--output_dir', str(out), '--n_scans', '2', '--positions', '8', '--steps', '2', '--batch_size', '4',
                         '--accelerator', 'cpu', '--quiet', '--label_weight', '0.5'])
    assert code == 0, err
    t = json.loads((out / 'model_card.json').read_text())['training']
    assert t['label_weight'] == 0.5 and 'label_loss' in t['loss']
    for bad in ('-1', 'inf'):
        code, _, err = _cli(['--output_dir', str(tmp_path / 'z'), '--label_weight', bad])
        assert code == 2 and 'label_weight' in err and err.count('\n') == 1 and not (tmp_path / 'z').exists()


def test_cli_ddp_two_processes(tmp_path):
    "`ptycho-torch-pretrain --devices 2`: Lightning's DDP (gloo, CPU), two ranks share the steps, one model, one voice."
    import os, subprocess, sys
    exe = Path(sys.executable).parent / 'ptycho-torch-pretrain'
    out = tmp_path / 'ddp'
    r = subprocess.run([str(exe), '--output_dir', str(out), '--n_scans', '8', '--positions', '16', '--steps', '6',
                        '--batch_size', '2', '--accelerator', 'cpu', '--devices', '2', '--checkpoint_every', '3',
                        '--corpus_workers', '1'], capture_output=True, text=True, timeout=240,
                       env=dict(os.environ, OMP_NUM_THREADS='1'))
    assert r.returncode == 0, r.stderr[-3000:]
    card = json.loads((out / 'model_card.json').read_text())
    assert (card['training']['devices'], card['training']['steps']) == (2, 6)
    assert r.stderr.count('simulated in') == 1 and r.stderr.count('step 1 ') <= 1, r.stderr   # rank 1 stays quiet
    assert r.stdout.count('ptycho-torch-pretrain: wrote') == 1 and 'terminate called' not in r.stderr
    model, _ = PT.load_pretrained(out)   # the archive rank 0 wrote, hash checked
    assert (out / 'checkpoints' / 'last.ckpt').is_file()

def test_polish_from_zero_shot(pretrained, held_out_scan):
    from ptycho_torch_nb.reconstruct import polish
    out, _ = pretrained
    zs = PT.reconstruct_zero_shot(out, held_out_scan)
    pol = polish(held_out_scan, zs, epochs=2)
    assert np.isfinite(pol['stitched_obj']).all() and set(pol['metrics']) >= {'ssim_amp', 'ssim_phase'}


def test_reconstruct_cli_zero_shot_and_polish(pretrained, held_out_scan, tmp_path):
    "`ptycho-torch-reconstruct --pretrained DIR [--polish EPOCHS]`: products of each route; clear errors."
    from ptycho_torch_nb.cli import reconstruct_main
    out, _ = pretrained
    held_out_scan.to_file(tmp_path / 'scan.npz')
    def run(*argv):
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            code = reconstruct_main([str(tmp_path / 'scan.npz'), *map(str, argv)])
        return code, err.getvalue()
    code, err = run('--output_dir', tmp_path / 'zs', '--pretrained', out, '--polish', 0, '--quiet')   # the network's image alone
    assert code == 0, err
    summary = json.loads((tmp_path / 'zs' / 'reconstruct.json').read_text())
    assert summary['route'] == 'zero-shot' and 'ssim' in json.loads((tmp_path / 'zs' / 'metrics.json').read_text())['amplitude']
    assert not (tmp_path / 'zs' / 'wts.h5.zip').exists()          # no network of its own
    code, err = run('--output_dir', tmp_path / 'pol', '--pretrained', out, '--polish', 2, '--quiet')
    assert code == 0, err
    assert json.loads((tmp_path / 'pol' / 'reconstruct.json').read_text())['route'] == 'polish'
    assert (tmp_path / 'pol' / 'network' / 'metrics.json').is_file() and (tmp_path / 'pol' / 'reconstructed_phase.png').is_file()
    code, err = run('--output_dir', tmp_path / 'pp', '--pretrained', out, '--polish', 500, '--polish_budget', 0.5, '--polish_probe',
                    '--polish_start', 'network', '--quiet')
    assert code == 0, err
    summary = json.loads((tmp_path / 'pp' / 'reconstruct.json').read_text())
    assert summary['options']['refine_probe'] is True and summary['options']['time_budget_s'] == 0.5
    assert summary['options']['start'] == 'network'                     # as asked, whatever the misfits say
    assert 1 <= summary['epochs'] < 500                                  # the budget stopped it
    assert np.load(tmp_path / 'pp' / 'probe.npy').shape == held_out_scan.probeGuess.shape
    for bad in (('--polish', 0, '--polish_probe'), ('--polish', 0, '--polish_budget', 5), ('--polish', 2, '--polish_budget', -1),
                ('--polish', 0, '--polish_start', 'phase'), ('--polish', 2, '--polish_start', 'truth'), ('--polish', -1)):
        code, err = run('--output_dir', tmp_path / 'bad', '--pretrained', out, *bad)
        assert code == 2 and err.count('\n') == 1 and '--polish' in err, (bad, err)
        assert not (tmp_path / 'bad').exists()
    code, err = run('--output_dir', tmp_path / 'pol', '--pretrained', out, '--quiet')   # a used folder
    assert code == 2 and 'previous run' in err and err.count('\n') == 1
    code, err = run('--output_dir', tmp_path / 'x', '--pretrained', out, '--init_from', out)
    assert code == 2 and '--init_from' in err and err.count('\n') == 1
    code, err = run('--output_dir', tmp_path / 'x', '--pretrained', out, '--route', 'train')
    assert code == 2 and 'route train' in err and not (tmp_path / 'x').exists()
    code, err = run('--output_dir', tmp_path / 'y', '--pretrained', tmp_path / 'nowhere')
    assert code == 2 and 'nowhere' in err and err.count('\n') == 1


def test_a_collapsed_network_is_flagged(pretrained, tmp_path):
    "A network whose output is the same for every input is recorded as collapsed in its card and warned about on load."
    import copy
    out, res = pretrained
    card = json.loads((out / 'model_card.json').read_text())
    assert card['training']['output_spread'] > PT.COLLAPSED_SPREAD and card['training']['collapsed'] is False
    net = copy.deepcopy(res['model'])
    with torch.no_grad():
        for mod in net.model.generator.modules():
            if isinstance(mod, torch.nn.Conv2d): mod.weight.zero_()     # only the biases remain: one output for all
    assert PT.output_spread(net, res['corpus']) < PT.COLLAPSED_SPREAD
    shutil.copytree(out, tmp_path / 'm')
    card['training'].update(collapsed=True, output_spread=0.0)
    (tmp_path / 'm' / 'model_card.json').write_text(json.dumps(card))
    with pytest.warns(RuntimeWarning, match='collapsed'): PT.load_pretrained(tmp_path / 'm')


def test_pretrain_warns_when_it_writes_a_collapsed_network(tmp_path, monkeypatch):
    monkeypatch.setattr(PT, 'output_spread', lambda net, corpus: 0.0)
    with pytest.warns(RuntimeWarning, match='collapsed'):
        PT.pretrain(tmp_path / 'c', steps=1, **TINY)
    card = json.loads((tmp_path / 'c' / 'model_card.json').read_text())
    assert card['training']['collapsed'] is True and card['training']['output_spread'] == 0.0


def test_the_loss_is_per_photon(pretrained):
    "The pretraining loss is divided by the scan's s^2: its gradient does not grow with the dose (raw: ~s^2)."
    _, res = pretrained
    corpus = res['corpus']
    batch = PT.CorpusDataset(corpus).__getitems__([0, 1])
    def grad_norm(scale):
        c = PT.Corpus(**{**corpus.__dict__, 'scales': corpus.scales * scale})
        module = PT.Pretrainer(res['model'], c)
        module.zero_grad(); module.compute_losses(batch)['loss'].backward()
        return float(torch.sqrt(sum((p.grad.float() ** 2).sum() for p in module.parameters() if p.grad is not None)))
    g1, g100 = grad_norm(1.0), grad_norm(100.0)       # 1e4 times the photons
    assert g1 > 0 and abs(g100 / g1 - 1) < 1e-2, (g1, g100)


def test_spread_watch_stops_a_collapsing_run(tmp_path, monkeypatch):
    "A collapse seen during the run (here: any spread counts as one) stops it at that check, with a warning."
    monkeypatch.setattr(PT, 'COLLAPSED_SPREAD', 1e9)
    with pytest.warns(RuntimeWarning, match='stopping'):
        res = PT.pretrain(tmp_path / 'w', steps=8, watch_every=2, **TINY)
    t = res['card']['training']
    assert t['steps'] == 2 and [s for s, _ in t['spread_history']] == [2] and t['collapsed'] is True
    assert (tmp_path / 'w' / 'checkpoints' / 'last.ckpt').is_file()


def test_zero_shot_runs_where_it_is_told(pretrained, held_out_scan):
    out, _ = pretrained
    res = PT.reconstruct_zero_shot(out, held_out_scan, accelerator='cpu')
    assert np.isfinite(res['stitched_obj']).all()
    with pytest.raises(ValueError, match="accelerator='tpu'"):
        PT.reconstruct_zero_shot(out, held_out_scan, accelerator='tpu')


def _benchmark(name):
    "A script of benchmarks/ loaded as a module (they are not a package)."
    import importlib.util
    spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parent.parent / 'benchmarks' / f'{name}.py')
    mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
    return mod


def test_the_prepared_gpu_check_runs(tmp_path):
    "benchmarks/gpu_check.py (the one call a session with a lent GPU makes) in its seconds-sized CPU form."
    import subprocess, sys
    root = Path(__file__).resolve().parent.parent
    script = root / 'benchmarks' / 'gpu_check.py'
    r = subprocess.run([sys.executable, str(script), '--out', str(tmp_path / 'o'), '--tiny'], capture_output=True, text=True,
                       env={'OMP_NUM_THREADS': '1', 'PATH': '/usr/bin:/bin'}, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    rec = json.loads((tmp_path / 'o' / 'gpu_check.json').read_text())
    assert rec['throughput']['plain'] > 0 and rec['throughput']['ratio'] > 0
    by = rec['throughput']['by_batch']                     # the sweep over groups per step, each against its own plain CNN
    assert list(by) == ['2', '4'] and [by[b]['patterns_per_step'] for b in by] == [8, 16] and all(by[b]['ratio'] > 0 for b in by)
    assert rec['zero_shot_rate']['cpu']['patterns_per_s'] > 0
    assert rec['pretrain']['steps'] > 0 and len(rec['zero_shot_scores']) == 5
    assert all(len(r['first_guess']) == 2 and r['first_guess'] != r['shipped'] for r in rec['zero_shot_scores'])   # the no-network row
    model = tmp_path / 'o' / 'pretrained_N64'
    card = json.loads((model / 'model_card.json').read_text())
    assert card['sha256'] == rec['pretrain']['sha256'] and (model / 'last.ckpt').is_file()
    shipped = json.loads((root / 'data' / 'pretrained_N64' / 'model_card.json').read_text())
    assert card['training']['init_from']['sha256'] == shipped['sha256']     # the chunk starts from the shipped weights
    assert card['training']['label_weight'] == 1.0 and rec['pretrain']['label_weight'] == 1.0   # with the label term by default
    assert not (model / 'checkpoints').exists()       # three folders down would not come back from the device machine
    gc = _benchmark('gpu_check')
    assert gc._resume_into(model / 'last.ckpt', tmp_path / 'next') == pytest.approx(card['training']['train_s'])
    assert (tmp_path / 'next' / 'checkpoints' / 'last.ckpt').is_file()
    bad = subprocess.run([sys.executable, str(script), '--out', str(tmp_path / 'x'), '--resume', str(tmp_path / 'none.ckpt')],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and 'none.ckpt' in bad.stderr


def test_the_amortised_benchmark_runs(tmp_path):
    "benchmarks/bench_amortised.py (issue 16's figures) end to end on 8-pattern scans: every case, route and repeat recorded."
    import subprocess, sys
    root = Path(__file__).resolve().parent.parent
    fx = tmp_path / 'bench.json'
    r = subprocess.run([sys.executable, str(root / 'benchmarks' / 'bench_amortised.py'), '--n', '8', '--solver_epochs', '2',
                        '--polish_epochs', '3', '--repeats', '2', '--fixture', str(fx)], capture_output=True, text=True,
                       env={'OMP_NUM_THREADS': '1', 'PATH': '/usr/bin:/bin'}, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    rec = json.loads(fx.read_text())
    assert '--repeats 2' in rec['command'] and len(rec['model']['sha256']) == 64
    assert [c['case'] for c in rec['cases']][:3] == list(HELD_OUT_FAMILIES) and len(rec['cases']) == 5
    for c in rec['cases']:
        assert c['flat'] and c['polish'] and c['zero_shot'][0] > 0 and len(c['ratios']) == 2
        assert c['polish_start'] in ('phase', 'flat') and len(c['target']) == 2
    assert r.stdout.count('polish start:') == 5 and 'median of 2 runs' in r.stdout
    assert r.stdout.count(' in passes (') == 5


def test_the_amortised_ratio_in_passes():
    "The benchmark's drift-free ratio: (zero-shot + start choice, in passes of the flat run, + the polish's passes after the race) / flat passes."
    B = _benchmark('bench_amortised')
    pt = lambda e, q: dict(epoch=e, ssim_amp=q, ssim_phase=q)
    flat = dict(snapshots=[pt(5, .5), pt(10, .9), pt(20, .95)], seconds=2.0, epochs=20)     # 0.1 s a pass; target at pass 10
    pol = dict(snapshots=[pt(7, .6), pt(9, .92)], options=dict(race_passes=5, start_seconds=0.8))   # epochs count the race's winner
    r = B.in_passes(flat, pol, dict(seconds=0.3), (0.9, 0.9))
    assert (r['flat'], r['after_race']) == (10, 4)
    assert r['zero_shot'] == pytest.approx(3.0) and r['start_choice'] == pytest.approx(8.0)
    assert r['ratio'] == pytest.approx((3 + 8 + 4) / 10)
    assert 'ratio' not in B.in_passes(flat, pol, dict(seconds=0.3), (0.99, 0.99))        # never reached: no ratio


def test_resume_refuses_a_changed_run(tmp_path):
    "What defines the run (corpus, loss, network) cannot change on resume: refused before the corpus is simulated."
    out = tmp_path / 'm'
    PT.pretrain(out, steps=2, **TINY)
    for change, needle in [(dict(seed=1), 'seed 0 -> 1'), (dict(families=['cells']), "families None -> ['cells']"),
                           (dict(label_weight=1.0), 'label_weight 0.0 -> 1.0'), (dict(n_filters_scale=2), 'n_filters_scale 1 -> 2')]:
        with pytest.raises(ValueError, match=re.escape(needle)):
            PT.pretrain(out, steps=3, resume=True, **{**TINY, **change})
    assert PT.pretrain(out, steps=3, resume=True, time_budget_s=60, **TINY)['card']['training']['steps'] == 3   # a budget may change
    train = tmp_path / 'train' / 'checkpoints'; train.mkdir(parents=True)   # another command's checkpoint (no run.json)
    shutil.copy(out / 'checkpoints' / 'last.ckpt', train / 'last.ckpt')
    with pytest.raises(ValueError, match=r"train: its checkpoint is not a pretraining run's \(no checkpoints/run.json\)"):
        PT.pretrain(train.parent, steps=3, resume=True, **TINY)


def test_a_stopped_corpus_build_drops_its_queued_scans(monkeypatch):
    "Ctrl-C or SIGTERM (`core.Terminated`, a KeyboardInterrupt) while the scans are simulated: the queued scans are cancelled, not awaited."
    import concurrent.futures as cf
    shutdowns = []
    class Stopped(cf.ProcessPoolExecutor):
        def map(self, *a, **k): raise KeyboardInterrupt
        def shutdown(self, wait=True, *, cancel_futures=False):
            shutdowns.append(cancel_futures); super().shutdown(wait=wait, cancel_futures=cancel_futures)
    monkeypatch.setattr(cf, 'ProcessPoolExecutor', Stopped)
    with pytest.raises(KeyboardInterrupt): PT.build_corpus(64, n=8, workers=2)
    assert shutdowns[0] is True


DDP_STOP = '''
import os, sys
from ptycho_torch_nb import pretrain as PT
rank, (mode, out) = int(os.environ.get('LOCAL_RANK', 0)), sys.argv[1:]
if mode == 'budget':   # rank 0 spends its budget in the first step; rank 1 alone would train for ever
    kw = dict(time_budget_s=1e-3 if rank == 0 else 1e6)
else:                  # rank 0 alone measures the output spread, and finds a "collapse" at step 2
    PT.COLLAPSED_SPREAD, kw = 1e9, dict(steps=50, watch_every=2)
r = PT.pretrain(out, n_scans=4, n=16, batch_size=2, accelerator='cpu', devices=2, checkpoint_every=1000, progress=False,
                workers=1, **kw)
if rank == 0: print('STEPS', r['card']['training']['steps'])
'''

@pytest.mark.parametrize('mode,steps', [('budget', 1), ('spread', 2)])
def test_ddp_ranks_stop_together(tmp_path, mode, steps):
    "DDP: a stop that one rank decides (its time budget; the collapse check, which rank 0 alone runs) stops every rank at that step."
    import subprocess, sys
    script = tmp_path / 'stop.py'; script.write_text(DDP_STOP)
    try: r = subprocess.run([sys.executable, str(script), mode, str(tmp_path / 'out')], capture_output=True, text=True,
                            timeout=150, env=child_env(OMP_NUM_THREADS='1', PYTHONWARNINGS='ignore'))
    except subprocess.TimeoutExpired: pytest.fail(f"{mode}: the ranks did not finish (one waits for the other)")
    assert r.returncode == 0, r.stderr[-3000:]
    assert f'STEPS {steps}\n' in r.stdout, (r.stdout, r.stderr[-2000:])


FD_LIMIT = '''
if __name__ == '__main__':   # imports under the guard: the spawned workers re-import this script, and need only the corpus module
    import resource, torch
    from ptycho_torch_nb.pretrain import build_corpus
    resource.setrlimit(resource.RLIMIT_NOFILE, (64, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
    pool, one = build_corpus(80, n=8, workers=2), build_corpus(80, n=8, workers=1)
    assert torch.equal(pool.patterns, one.patterns) and torch.equal(pool.groups, one.groups) and pool.records == one.records
    print('same corpus')
'''

def test_a_corpus_larger_than_the_file_descriptor_limit(tmp_path):
    "The pool's scans come back as arrays: 80 scans of tensors under a limit of 64 open files (failed before: 'received 0 items of ancdata')."
    import subprocess, sys
    script = tmp_path / 'fd.py'; script.write_text(FD_LIMIT)
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120, env=child_env(OMP_NUM_THREADS='1'))
    assert r.returncode == 0 and 'same corpus' in r.stdout, r.stderr[-2000:]


def test_a_stopped_run_is_kept_and_says_how_it_ran(tmp_path, monkeypatch):
    "A run stopped before it wrote its model keeps its checkpoint (a plain rerun is refused) and its run.json (resume checks it)."
    out = tmp_path / 'm'
    PT.pretrain(out, steps=2, **{**TINY, 'checkpoint_every': 1})
    for f in ('wts.h5.zip', 'model_card.json'): (out / f).unlink()   # as if stopped after its last checkpoint
    ckpt = (out / 'checkpoints' / 'last.ckpt').read_bytes()
    with pytest.raises(FileExistsError, match='unfinished run'): PT.pretrain(out, steps=2, **TINY)
    assert (out / 'checkpoints' / 'last.ckpt').read_bytes() == ckpt
    class Killed(Exception): pass
    class Trainer:   # training that is stopped at once
        def fit(self, *a, **k): raise Killed
    monkeypatch.setattr(PT, '_trainer', lambda *a, **k: Trainer())
    fresh = tmp_path / 'f'
    with pytest.raises(Killed): PT.pretrain(fresh, steps=2, **TINY)
    assert json.loads((fresh / 'checkpoints' / 'run.json').read_text())['n_scans'] == TINY['n_scans']


def test_gpu_check_records_a_failed_phase_and_goes_on(capsys):
    "`gpu_check.guarded`: a phase that raises is recorded (message and traceback), reported in one line, and returns False."
    import importlib.util
    spec = importlib.util.spec_from_file_location('gpu_check', Path(__file__).resolve().parent.parent / 'benchmarks' / 'gpu_check.py')
    gc = importlib.util.module_from_spec(spec); spec.loader.exec_module(gc)
    rec, saved = {}, []
    def boom(): raise RuntimeError('received 0 items of ancdata')
    assert gc.guarded(rec, 'pretrain', lambda: saved.append(1), boom, str) is False
    assert rec['pretrain']['error'] == 'RuntimeError: received 0 items of ancdata' and 'boom' in rec['pretrain']['traceback']
    assert saved and 'gpu_check: pretrain FAILED: RuntimeError' in capsys.readouterr().out
    assert gc.guarded(rec, 'ok', lambda: None, lambda: {'x': 1}, lambda r: f"x {r['x']}") is True and rec['ok']['x'] == 1


def test_a_pretraining_step_reads_nothing_back_from_the_device(tmp_path, monkeypatch):
    """Every value read from a tensor into Python (`item`, `float`, `int`, `bool`, `tolist`) waits for a GPU to finish
    its queue, and the step there is bound by launching kernels (benchmarks/RESULTS.md, 2026-12-04): our code reads
    none a step. Counted here on the CPU: the reads of a 9-step run less those of a 3-step run (one epoch: 16 steps), from
    our own frames; the loader's reads (sampler, dataset) are of host tensors, before the batch moves to the device."""
    import sys, traceback
    reads = []
    def counted(name):
        orig = getattr(torch.Tensor, name)
        def read(self, *a):
            frames = [f for f in traceback.extract_stack(sys._getframe(1), limit=12) if '/ptycho_torch_nb/' in f.filename]
            if frames and not {'__getitems__', '__iter__', '_batches'} & {f.name for f in frames}: reads.append(f"{frames[-1].filename.rsplit('/', 1)[-1]}:{frames[-1].lineno} {name}")
            return orig(self, *a)
        return read
    def run(steps):
        reads.clear()
        for name in ('item', '__float__', '__int__', '__bool__', 'tolist'): monkeypatch.setattr(torch.Tensor, name, counted(name))
        try: PT.pretrain(tmp_path / f's{steps}', **{**TINY, 'n': 16, 'batch_size': 2, 'progress': True, 'checkpoint_every': 10 ** 6}, steps=steps,
                         watch_every=10 ** 6, accelerator='cpu', precision='32-true')
        finally: monkeypatch.undo()
        return list(reads)
    few, more = run(3), run(9)
    extra = [r for r in more if more.count(r) > few.count(r)]
    assert not extra, f"reads per step: {sorted(set(extra))}"


def test_resuming_a_finished_model_must_add_training(pretrained, tmp_path):
    "--resume of a model that already reached its steps would rewrite it (a new SHA-256) for nothing: refused, files untouched."
    import shutil
    out, _ = pretrained
    copy_ = tmp_path / 'done'; shutil.copytree(out, copy_)
    before = {p.name: p.read_bytes() for p in (copy_ / 'wts.h5.zip', copy_ / 'model_card.json')}
    with pytest.raises(ValueError, match=r"already reached the target \(3 steps\); to train it further raise steps \(--steps\)"):
        PT.pretrain(copy_, steps=3, resume=True, command='pytest', **TINY)
    assert {p.name: p.read_bytes() for p in (copy_ / 'wts.h5.zip', copy_ / 'model_card.json')} == before


def test_a_card_that_disagrees_with_its_archive_or_is_missing(pretrained, tmp_path):
    "The hash covers the archive, not the card: an edited N is caught against the network; a card-less archive is a training run's."
    import shutil
    out, _ = pretrained
    edited = tmp_path / 'edited'; shutil.copytree(out, edited, ignore=shutil.ignore_patterns('checkpoints'))
    card = json.loads((edited / 'model_card.json').read_text()); card['N'] = 128
    (edited / 'model_card.json').write_text(json.dumps(card))
    with pytest.raises(ValueError, match=r"field 'N'=128 but its archive's network is N=64"):
        PT.load_pretrained(edited)
    (edited / 'model_card.json').unlink()
    with pytest.raises(FileNotFoundError, match=r"a training run's: fine-tune it on a scan with `ptycho-torch-reconstruct SCAN --init_from`"):
        PT.load_pretrained(edited)


def test_a_path_that_is_no_model_says_what_is_expected(tmp_path):
    "A file that is neither a model folder, its card nor an archive beside a card: the message says what --pretrained takes."
    (tmp_path / 'random.bin').write_bytes(b'\0' * 16)
    with pytest.raises(FileNotFoundError, match=r"random.bin: no model card .*; expected a pretrained model's folder or its model_card.json"):
        PT.load_pretrained(tmp_path / 'random.bin')


def test_steps_and_gradient_clip_are_refused_before_the_corpus(tmp_path, monkeypatch):
    "steps <= 0 (or not an int) and a negative or non-finite gradient_clip are refused by name before any scan is simulated."
    def no_corpus(*a, **k): raise AssertionError('the corpus was simulated before the arguments were checked')
    monkeypatch.setattr(PT, 'build_corpus', no_corpus)
    for bad, says in ((dict(steps=0), r'pretrain: steps=0 is invalid: allowed an int >= 1'), (dict(steps=-5), 'steps=-5 is invalid'),
                      (dict(steps=2.5), 'steps=2.5 is invalid'), (dict(gradient_clip=-1), r'gradient_clip=-1 is invalid: allowed a finite number >= 0'),
                      (dict(gradient_clip=float('nan')), 'gradient_clip=nan is invalid')):
        with pytest.raises(ValueError, match=says): PT.pretrain(tmp_path / 'm', **{**TINY, **bad})
    assert not (tmp_path / 'm').exists()


@pytest.mark.filterwarnings('ignore:pretrain.*collapsed')   # one step of a tiny model: not a prior, not the point
def test_a_folder_of_another_run_is_refused(tmp_path):
    "A folder holding another command's products (a zero-shot reconstruction: no wts.h5.zip) is refused unasked, set aside with overwrite."
    out = tmp_path / 'used'; out.mkdir()
    for name in ('reconstruct.json', 'metrics.json', 'reconstruction.npz'): (out / name).write_text('{}')
    with pytest.raises(FileExistsError, match=r'used: holds a previous run \(metrics.json, reconstruction.npz, reconstruct.json\)'):
        PT.pretrain(out, steps=1, **TINY)
    assert sorted(p.name for p in out.iterdir()) == ['metrics.json', 'reconstruct.json', 'reconstruction.npz']   # nothing beside them
    PT.pretrain(out, steps=1, overwrite=True, **TINY)
    assert (out / 'wts.h5.zip').is_file() and sorted(p.name for p in (out / '.previous_run').iterdir()) == ['metrics.json', 'reconstruct.json', 'reconstruction.npz']


def test_zero_shot_rechecks_the_scan_it_is_given(pretrained, held_out_scan):
    "A scan edited after it was made (a NaN pixel, negative amplitudes, a NaN position) is refused by key and index, not imaged as NaN."
    import copy
    out, _ = pretrained
    for key, edit, says in (('diff3d', lambda a: a.__setitem__((3, 10, 10), np.nan), r"key 'diff3d' contains 1 NaN/Inf value\(s\), first at index \(3, 10, 10\)"),
                            ('diff3d', lambda a: a.__isub__(5.0), "key 'diff3d' has negative values"),
                            ('xcoords', lambda a: a.__setitem__(2, np.nan), r"key 'xcoords' contains 1 NaN/Inf value\(s\), first at index \(2,\)")):
        scan = copy.copy(held_out_scan); setattr(scan, key, getattr(held_out_scan, key).copy()); edit(getattr(scan, key))
        with pytest.raises(ValueError, match=says): PT.reconstruct_zero_shot(out, scan)


def test_zero_shot_names_the_pattern_size_before_M(pretrained):
    "A 32x32 scan under the N=64 model: the pattern size is the error (the user passed no M)."
    out, _ = pretrained
    small = sample_scan(np.random.default_rng(5), N=32, n=8)
    with pytest.raises(ValueError, match='patterns are 32x32 but the pretrained model is for N=64; no model of this package'):
        PT.reconstruct_zero_shot(out, small)
    with pytest.raises(TypeError, match=r'a tuple of 1; expected \(model, card\)'): PT.reconstruct_zero_shot((None,), small)
