"""Issue 9 benchmark: self-supervised reconstruction of one simulated scan under a wall-clock budget.

Scan: 256 random positions over a natural-image object (`reconstruct.simulated_scan`), the Run1084 probe, N=64,
~60% overlap (mean nearest-neighbour step 0.4 x probe diameter), Poisson noise at --nphotons (default 1e9).
Training: `reconstruct.reconstruct_scan` on the scan's own diffraction (gridsize 2), snapshots at --snapshots
seconds of training (the clock pauses while a snapshot is scored). Scores: amplitude and phase SSIM over the scanned
region after global-phase and phase-plane removal and amplitude-scale matching (`evaluation.align_and_score`), FRC-50.
Also times inference + stitching of the 256 patterns (cold, inside the run, and warm, repeated).

Target (issue 9): amplitude SSIM >= 0.85 and phase SSIM >= 0.80 within 600 s; inference + stitching < 5 s.
Reference figures (same kind of machine): Pty-chi LSQML 0.88 / 0.84 after 200 epochs in ~50 s of CPU.
Reference run in the same process: `reconstruct.iterative_reference` (a free object fitted by Adam to the same
Poisson likelihood with the same forward model, scored by the same scorer); the summary prints the PINN's SSIM as a
ratio of the reference's.

Usage: python benchmarks/bench_reconstruct.py [--budget 600] [--snapshots 60 120 300 600] [--threads 2]
       [--nphotons 1e9] [--reference_epochs 200] [--out results.json] [--output_dir DIR] [--set key=value ...]
       (--set: reconstruct_scan options; --reference_epochs 0 skips the reference run)
Prints one line per snapshot and a summary; writes the JSON record to --out when given.
"""
import argparse, json, os, sys, time
import numpy as np
import torch

def _value(s):
    for cast in (int, float):
        try: return cast(s)
        except ValueError: pass
    return {'true': True, 'false': False, 'none': None}.get(s.lower(), s)

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--budget', type=float, default=600.0, help='training wall-clock budget (s)')
    ap.add_argument('--snapshots', type=float, nargs='*', default=[60, 120, 300, 600], help='training times to score at (s)')
    ap.add_argument('--threads', type=int, default=2)
    ap.add_argument('--n', type=int, default=256, help='scan positions')
    ap.add_argument('--nphotons', type=float, default=1e9)
    ap.add_argument('--overlap', type=float, default=0.6)
    ap.add_argument('--seed', type=int, default=0)
    ap.add_argument('--parity', action='store_true', help="the TF reference's configuration")
    ap.add_argument('--reference_epochs', type=int, default=200, help='epochs of the same-physics iterative reference (0: skip)')
    ap.add_argument('--set', nargs='*', default=[], metavar='KEY=VALUE', help='extra reconstruct_scan options')
    ap.add_argument('--out', default=None, help='write the JSON record here')
    ap.add_argument('--output_dir', default=None, help="also write reconstruct_scan's images, metrics and archive here")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    from ptycho_torch_nb.simulation import simulated_scan
    from ptycho_torch_nb.reconstruct import reconstruct_scan, iterative_reference
    from ptycho_torch_nb.stitching import stitch_scan
    from ptycho_torch_nb.training import predict_scan
    from ptycho_torch_nb.evaluation import score_scan
    load = os.getloadavg()
    raw = simulated_scan(n=a.n, N=64, overlap=a.overlap, nphotons=a.nphotons, seed=a.seed)
    md = raw.metadata
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, load average {load[0]:.2f}; scan: {len(raw)} "
          f"patterns, object {raw.objectGuess.shape}, mean step {md['mean_step']:.1f} px = "
          f"{md['mean_step'] / md['probe_diameter']:.2f} x probe diameter {md['probe_diameter']:.1f} px (raster-equivalent step "
          f"{md['step']:.1f} px, {md['coverage']:.1f} probes per point), nphotons {a.nphotons:g}",
          flush=True)
    ref = None
    if a.reference_epochs > 0:
        ref = iterative_reference(raw, epochs=a.reference_epochs, score_every=max(1, a.reference_epochs // 8), seed=a.seed)
        rm = ref['metrics']
        print(f"reference (free object, same physics, Adam, {a.reference_epochs} epochs): SSIM amplitude "
              f"{rm['ssim_amp']:.3f}, phase {rm['ssim_phase']:.3f} in {ref['seconds']:.1f} s", flush=True)
    opts = dict(kv.split('=', 1) for kv in a.set)
    opts = {k: _value(v) for k, v in opts.items()}
    t0 = time.perf_counter()
    res = reconstruct_scan(raw, time_budget_s=a.budget, snapshot_at_s=[s for s in a.snapshots if s <= a.budget],
                           parity=a.parity, seed=a.seed, output_dir=a.output_dir, **opts)
    wall = time.perf_counter() - t0
    model, infer_c, M = res['model'], res['test_container'], res['options']['M']
    warm = []
    for _ in range(3):
        t = time.perf_counter(); obj = predict_scan(model, infer_c); stitch_scan(obj, infer_c, M)
        warm.append(time.perf_counter() - t)
    img, w, pos = stitch_scan(predict_scan(model, infer_c), infer_c, M, sync_phase=False)
    unsynced = score_scan(img, w, pos, raw.objectGuess, M)
    print(f"without phase synchronisation: SSIM amplitude {unsynced['ssim_amp']:.3f}, phase {unsynced['ssim_phase']:.3f}")
    print(f"\n{'train s':>8} {'steps':>6} {'SSIM amp':>9} {'SSIM phase':>10} {'FRC50 amp':>9} {'FRC50 phase':>11}")
    rows = list(res['snapshots'])
    if not rows or abs(rows[-1]['train_s'] - res['train_seconds']) > 1:
        rows.append(dict(res['metrics'], train_s=res['train_seconds'], steps=res['steps']))
    for r in rows:
        print(f"{r['train_s']:8.1f} {r['steps']:6d} {r['ssim_amp']:9.3f} {r['ssim_phase']:10.3f} "
              f"{r['frc50_amp']:9.1f} {r['frc50_phase']:11.1f}")
    m = res['metrics']
    print(f"\nfinal: SSIM amplitude {m['ssim_amp']:.3f}, phase {m['ssim_phase']:.3f} after {res['train_seconds']:.0f} s "
          f"({res['steps']} steps, {res['epochs']} epochs); inference {res['inference_seconds']:.2f} s + stitching "
          f"{res['stitch_seconds']:.2f} s cold, {np.median(warm):.2f} s warm ({infer_c.X.shape[0]} groups of "
          f"{infer_c.X.shape[1]}); wall {wall:.0f} s; load average at the end {os.getloadavg()[0]:.2f}")
    print(f"target (amp >= 0.85, phase >= 0.80 within 600 s): {'met' if m['ssim_amp'] >= 0.85 and m['ssim_phase'] >= 0.80 else 'not met'}")
    if ref is not None:
        rm = ref['metrics']
        print(f"ours / reference: SSIM amplitude {m['ssim_amp'] / rm['ssim_amp']:.2f}, phase {m['ssim_phase'] / rm['ssim_phase']:.2f}; "
              f"time {res['train_seconds'] / ref['seconds']:.1f}x the reference's {ref['seconds']:.1f} s")
    if a.out:
        rec = dict(args=vars(a), load_start=load, load_end=os.getloadavg(), options=res['options'], wall_s=wall,
                   train_s=res['train_seconds'], steps=res['steps'], epochs=res['epochs'],
                   inference_s=res['inference_seconds'], stitch_s=res['stitch_seconds'], warm_infer_stitch_s=warm,
                   snapshots=[{k: v for k, v in r.items() if isinstance(v, (int, float))} for r in rows],
                   final={k: v for k, v in m.items() if isinstance(v, (int, float))}, clock_history=res['clock_history'],
                   final_without_phase_sync={k: v for k, v in unsynced.items() if isinstance(v, (int, float))},
                   scan={k: v for k, v in md.items() if isinstance(v, (int, float))},
                   reference=None if ref is None else dict(epochs=ref['epochs'], seconds=ref['seconds'],
                       final={k: v for k, v in ref['metrics'].items() if isinstance(v, (int, float))},
                       snapshots=[{k: v for k, v in r.items() if isinstance(v, (int, float))} for r in ref['snapshots']]))
        with open(a.out, 'w') as f: json.dump(rec, f, indent=1)
    return 0

if __name__ == '__main__': sys.exit(main())
