"""End-to-end benchmark of the PyTorch workflow against the TensorFlow reference run (not a test).

Same data and schedule as the reference measurement in shared/reference/upstream_baseline.md: patterns simulated
from the bundled Run1084 object and probe (N=64, nphotons 1e9, Poisson noise, random positions, train/test split
along y, 2048 / 512 patterns); training on 512 patterns (gridsize 1) or 128 groups of 4 (gridsize 2), batch 16,
5 epochs; then the 512 held-out patterns are predicted and stitched (M=20) and scored against the true object.
Validation during training uses 2 batches (32 patterns) of the test set, like the reference's 5 % split (~26).

Each gridsize runs in a fresh process so its peak RSS is its own.
Usage: python benchmarks/bench_workflow.py [--gridsize 1 2] [--epochs 5] [--json out.json]
"""
import argparse, json, os, resource, subprocess, sys, time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = {  # upstream_baseline.md (TF 2.21, same machine class, 2 threads)
    1: dict(train_patterns_per_s=13.0, first_epoch_s='62-87', infer_patterns_per_s=49.7, stitch_s=0.73, peak_rss_mib=1966,
            ssim_amp='0.51*'),  # * other data/region; on these data see same_data_comparison()
    2: dict(train_patterns_per_s=51.3, first_epoch_s='38.5', infer_patterns_per_s=99, stitch_s=0.31, peak_rss_mib=2110, ssim_amp=None),
}

def run_one(gridsize: int, epochs: int, workdir: Path) -> dict:
    sys.path.insert(0, str(ROOT))
    import logging, warnings
    warnings.filterwarnings('ignore')
    for n in ('lightning', 'lightning.pytorch'): logging.getLogger(n).setLevel(logging.ERROR)
    t_import = time.perf_counter()
    from ptycho_torch_nb import workflow as W, training as T
    from ptycho_torch_nb.evaluation import evaluate_reconstruction
    from ptycho_torch_nb.config import TrainingConfig, ModelConfig
    t_import = time.perf_counter() - t_import
    import torch
    train_raw, test_raw = W.simulate_run1084(2048, 512, nphotons=1e9, seed=42)
    C = gridsize * gridsize
    cfg = TrainingConfig(model=ModelConfig(N=64, gridsize=gridsize, object_big=gridsize > 1), n_groups=512 // C,
                         nepochs=epochs, batch_size=16, nphotons=1e9, output_dir=workdir, backend='pytorch',
                         subsample_seed=42)
    ec = T.default_execution_config(accelerator='cpu', logger_backend=None, enable_checkpointing=False,
                                    deterministic=False)
    t0 = time.perf_counter()
    train_c = W.as_container(train_raw, cfg, 'train')
    test_c = W.as_container(test_raw, cfg, 'test')
    t_group = time.perf_counter() - t0
    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    res = W.train_cdi_model_torch(train_c, test_c, cfg, ec, limit_val_batches=2)
    ru1 = resource.getrusage(resource.RUSAGE_SELF)
    t_train = time.perf_counter() - t0
    cpu_train = (ru1.ru_utime + ru1.ru_stime) - (ru0.ru_utime + ru0.ru_stime)
    model = res['models']['diffraction_to_obj']
    T.predict_object_patches(model, _head(test_c, 8), 64)   # warm-up
    amp, phase, rec = W.reassemble_cdi_image_torch(test_c, cfg, model, M=20, execution_config=ec)
    t_total = time.perf_counter() - t0
    metrics, _, _ = evaluate_reconstruction(rec['stitched_obj'], rec['global_offsets'], test_raw.objectGuess, 20,
                                            rec['stitch_weights'])
    ssim = metrics['ssim']
    eps = res['train_patterns_per_s']
    return dict(gridsize=gridsize, epochs=epochs, train_patterns=int(train_c.X.shape[0] * train_c.X.shape[1]),
                test_patterns=int(test_c.X.shape[0] * test_c.X.shape[1]), torch_threads=torch.get_num_threads(),
                import_workflow_s=round(t_import, 2), grouping_s=round(t_group, 2),
                first_epoch_s=round(res['epoch_seconds'][0], 1),
                train_patterns_per_s_median=round(sorted(eps[1:] or eps)[len(eps[1:] or eps) // 2], 1),
                train_patterns_per_s_all=[round(v, 1) for v in eps],
                end_to_end_train_plus_stitch_s=round(t_total, 1),
                train_cpu_s=round(cpu_train, 1), load_average_1min=round(os.getloadavg()[0], 2),
                # patterns per CPU-second x threads: the rate on an idle machine when contention is the only slowdown
                train_patterns_per_s_cpu_normalised=round(epochs * int(train_c.X.shape[0] * train_c.X.shape[1])
                                                          / max(cpu_train, 1e-9) * torch.get_num_threads(), 1), train_s=round(t_train, 1),
                infer_patterns_per_s=round(int(test_c.X.shape[0] * test_c.X.shape[1]) / rec['inference_seconds'], 1),  # network inputs/s, as the reference counts
                infer_distinct_patterns_per_s=round(rec['inference_patterns_per_s'], 1),  # the scan's patterns, each once
                stitch_s=round(rec['stitch_seconds'], 3),
                peak_rss_mib=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
                ssim_amp=round(float(ssim[0]), 4), ssim_phase=round(float(ssim[1]), 4),
                mae_amp=round(float(metrics['mae'][0]), 4), mae_phase=round(float(metrics['mae'][1]), 4),
                final_train_loss=res['history']['train_loss'][-1],
                trainable_parameters=sum(p.numel() for p in model.parameters() if p.requires_grad))

def _head(container, n):
    import copy
    c = copy.copy(container)
    c.X, c.coords_relative = container.X[:n], container.coords_relative[:n]
    return c

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--gridsize', type=int, nargs='+', default=[1, 2])
    ap.add_argument('--epochs', type=int, default=5)
    ap.add_argument('--json', type=Path, default=None, help='also write the results here')
    ap.add_argument('--_child', type=int, default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a._child is not None:
        import tempfile
        with tempfile.TemporaryDirectory() as d: print('RESULT ' + json.dumps(run_one(a._child, a.epochs, Path(d))))
        return
    results = []
    for g in a.gridsize:
        p = subprocess.run([sys.executable, __file__, '--_child', str(g), '--epochs', str(a.epochs)],
                           capture_output=True, text=True)
        line = [l for l in p.stdout.splitlines() if l.startswith('RESULT ')]
        if p.returncode or not line:
            print(p.stdout[-2000:], p.stderr[-4000:], file=sys.stderr); sys.exit(1)
        r = json.loads(line[-1][7:]); results.append(r)
        ref = REFERENCE.get(g, {})
        print(f"\n== gridsize {g}: {r['train_patterns']} training patterns, {r['epochs']} epochs, batch 16, "
              f"{r['torch_threads']} threads")
        print(f"  (1-min load average at the end: {r['load_average_1min']} on {os.cpu_count()} cores)")
        rows = [('training patterns/s (median epoch)', r['train_patterns_per_s_median'], ref.get('train_patterns_per_s')),
                ('  same, CPU-time normalised', r['train_patterns_per_s_cpu_normalised'], None),
                ('first epoch, s', r['first_epoch_s'], ref.get('first_epoch_s')),
                ('inference network inputs/s', r['infer_patterns_per_s'], ref.get('infer_patterns_per_s')),
                ('  same, distinct scan patterns/s', r['infer_distinct_patterns_per_s'], None),
                ('stitch 512 patches, s', r['stitch_s'], ref.get('stitch_s')),
                ('peak RSS, MiB', r['peak_rss_mib'], ref.get('peak_rss_mib')),
                ('amplitude SSIM', r['ssim_amp'], ref.get('ssim_amp')),
                ('phase SSIM', r['ssim_phase'], None),
                ('end-to-end train + stitch, s', r['end_to_end_train_plus_stitch_s'], None),
                ('trainable parameters', r['trainable_parameters'], 2331772)]
        print(f"  {'metric':38s} {'ptycho_torch_nb':>16s} {'TF reference':>14s}")
        for name, ours, theirs in rows:
            print(f"  {name:38s} {str(ours):>16s} {str(theirs if theirs is not None else '-'):>14s}")
    same_data_comparison()
    if a.json: a.json.write_text(json.dumps(results, indent=2))

def same_data_comparison():
    "The TF reference trained on the demo's own data and scored by our scorer (benchmarks/tf_reference/, 3 seeds each)."
    f = ROOT / 'nbs' / 'fixtures' / 'tf_reference_demo.json'
    if not f.is_file(): return
    d = json.loads(f.read_text())
    by = {}
    for r in d['runs']: by.setdefault(r['impl'], []).append(r)
    mean = lambda runs, i: sum(r['ssim'][i] for r in runs) / len(runs)
    tf, ours = by.get('TF reference (Keras 3)'), by.get('ours, default')
    if not tf or not ours: return
    print(f"\n== same data, same epochs, same scorer (the demo: 512 / 256 patterns, gridsize 1, 5 epochs; "
          f"recorded in {f.relative_to(ROOT)}, {len(tf)} seeds each)")
    for name, runs in (('TF reference (Keras 3)', tf), ('ptycho_torch_nb (default)', ours)):
        print(f"  {name:28s} SSIM amplitude {mean(runs, 0):.3f}  phase {mean(runs, 1):.3f}  "
              f"phase collapsed in {sum(r['phase_collapsed'] for r in runs)}/{len(runs)}")
    print(f"  ours / TF (both recorded, not re-run by this script): amplitude {mean(ours, 0) / mean(tf, 0):.2f}, phase {mean(ours, 1) / mean(tf, 1):.2f} "
          f"(all-ones floor {d['all_ones_floor']['ssim'][0]:.3f} / {d['all_ones_floor']['ssim'][1]:.3f})")

if __name__ == '__main__':
    main()
