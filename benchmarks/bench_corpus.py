#!/usr/bin/env python3
"""How much of a corpus scan's simulation the sample's object costs: for each family, the median time of
`corpus.make_object` (256 × 256) against a whole `corpus.sample_scan` (probe, positions, object, 64 patterns of
diffraction with Poisson noise) of the same family, in the same process. Pretraining simulates its corpus in
worker processes, so a family whose object costs a large share of its scan slows every pretraining run.

    python benchmarks/bench_corpus.py [--repeats 5]

The target (issue 16's corpus): an object well under 0.1 s; the ratio says whether objects are the bottleneck.
"""
import argparse, statistics, sys, time
from pathlib import Path
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing
from ptycho_torch_nb import corpus as C


def median_time(fn, repeats: int) -> float:
    times = []
    for s in range(repeats):
        t0 = time.perf_counter(); fn(np.random.default_rng(s)); times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--repeats', type=int, default=5)
    a = ap.parse_args(argv)
    print(f"{'family':18s} {'object':>9s} {'scan':>9s} {'object / scan':>14s}   (median of {a.repeats}; 256 px object, 64-pattern scan)")
    for name in C.FAMILIES:
        C.make_object(np.random.default_rng(0), name, 256)                      # warm-up: imports, FFT plans
        t_obj = median_time(lambda r: C.make_object(r, name, 256, dict(phase_max=1.0, absorption=0.5)), a.repeats)
        t_scan = median_time(lambda r: C.sample_scan(r, families=[name], allow_held_out=True), a.repeats)
        print(f"{name:18s} {t_obj:8.3f}s {t_scan:8.3f}s {t_obj / t_scan:14.2f}")


if __name__ == '__main__':
    main()
