"""Data-phase throughput: simulation and grouping of 10,000- and 100,000-position scans (gridsize 2, K 7), and the
grouping-cache hit speed-up. Not a test. Usage:

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_data.py [--sizes 10000 100000] [--N 64] [--full-max 20000]

Grouping with the patterns gathered (`X_full`, `diffraction`: B*C*N*N float32 each) needs 2*4*N^2*4 bytes per
group (262 kB at N=64, 26 GB for 100,000 groups), so sizes above --full-max are grouped twice: coordinates and
indices only (the KD-tree and RNG work, which is what scales with the scan), and with patterns at N=16.
"""
import argparse, os, shutil, sys, tempfile, time
from pathlib import Path
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))   # run from a source checkout


def timed(fn):
    t = time.perf_counter(); out = fn(); return out, time.perf_counter() - t


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--sizes', type=int, nargs='+', default=[10_000, 100_000])
    ap.add_argument('--N', type=int, default=64)
    ap.add_argument('--full-max', type=int, default=20_000)
    ap.add_argument('--nphotons', type=float, default=1e9)
    a = ap.parse_args()
    import torch
    from ptycho_torch_nb.raw_data import RawDataTorch
    from ptycho_torch_nb.simulation import simulate_diffraction, random_scan, lines_object, load_run1084, fit_probe
    from ptycho_torch_nb import cache as cache_mod
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}")
    probe = fit_probe(load_run1084()['probeGuess'], a.N)
    obj = lines_object(1024, nlines=3000, seed=0)
    for M in a.sizes:
        x, y = random_scan(M, obj.shape, a.N // 2 + 2, seed=0)
        raw, dt = timed(lambda: simulate_diffraction(obj, probe, x, y, nphotons=a.nphotons, seed=0, return_patches=False,
                                                     keep_object=False))
        print(f"simulate   M={M:>7}  N={a.N}: {dt:7.2f} s  {M / dt:10.0f} patterns/s")
        kw = dict(K=7, nsamples=M, seed=0, gridsize=2, use_cache=False)
        g, dt = timed(lambda: raw.generate_grouped_data(a.N, include_patterns=False, **kw))
        print(f"group idx  M={M:>7}  gs=2 K=7 : {dt:7.2f} s  {M / dt:10.0f} groups/s   (KD-tree, draws, coordinates)")
        del g
        if M <= a.full_max:
            g, dt = timed(lambda: raw.generate_grouped_data(a.N, **kw))
            print(f"group full M={M:>7}  gs=2 K=7 : {dt:7.2f} s  {M / dt:10.0f} groups/s   (+ X_full, diffraction {g['X_full'].nbytes / 2**30:.2f} GiB each)")
            del g
        else:
            small = RawDataTorch(raw.xcoords, raw.ycoords, diff3d=raw.diff3d[:, :16, :16].copy(), probeGuess=probe[:16, :16])
            g, dt = timed(lambda: small.generate_grouped_data(16, **kw))
            print(f"group full M={M:>7}  gs=2 K=7 : {dt:7.2f} s  {M / dt:10.0f} groups/s   (at N=16: X_full {g['X_full'].nbytes / 2**30:.2f} GiB)")
            del g, small
        del raw
    # cache speed-up on the smallest size, patterns included
    M = min(a.sizes)
    root = tempfile.mkdtemp(prefix='bench_cache_')
    try:
        x, y = random_scan(M, obj.shape, a.N // 2 + 2, seed=0)
        sim = simulate_diffraction(obj, probe, x, y, nphotons=a.nphotons, seed=0, return_patches=False, keep_object=False)
        sim.to_file(f'{root}/scan.npz')
        raw = RawDataTorch.from_file(f'{root}/scan.npz')
        kw = dict(K=7, nsamples=M, seed=0, gridsize=2, cache_dir=f'{root}/cache')
        no_cache = lambda: raw.generate_grouped_data(a.N, use_cache=False, **{k: v for k, v in kw.items() if k != 'cache_dir'})
        no_cache()                                                   # warm-up: file digest, KD-tree, imports
        _, t_nocache = timed(no_cache)
        _, t_miss = timed(lambda: raw.generate_grouped_data(a.N, **kw))
        g, t_hit = timed(lambda: raw.generate_grouped_data(a.N, **kw))
        _, t_touch = timed(lambda: float(np.asarray(g['X_full']).sum()))
        print(f"cache      M={M:>7}  N={a.N}: no cache {t_nocache:.2f} s, miss (build + write) {t_miss:.2f} s, "
              f"hit {t_hit:.3f} s (memory-mapped) + reading every byte once {t_touch:.2f} s -> speed-up "
              f"x{t_nocache / (t_hit + t_touch):.0f} with the data read (x{t_nocache / t_hit:.0f} to open it)")
        print(f"cache stats {cache_mod.CACHE_STATS}")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == '__main__':
    main()
