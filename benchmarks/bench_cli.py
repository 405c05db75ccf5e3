#!/usr/bin/env python3
"""How fast each CLI answers a newcomer: `--help`, and a data file with a wrong key, each in a fresh process
(what a shell user waits for; `pretrain` reads no data file, so its wrong input is `--steps 0`). Prints the median
wall time of `REPEATS` fresh processes per case, whether torch was imported, and each case's ratio to the same
median of `import torch, lightning` alone (the reference, measured in the same run: a CLI that imported them first
would cost at least that). Also the cost of `import ptycho_torch_nb` beyond interpreter start-up (`python -c pass`).

    python benchmarks/bench_cli.py            # from the repository root (PYTHONPATH is set for this checkout)

Issue 18 measured 17-23 s per case before the CLIs parsed and validated first; the target is under 2 s.
"""
import json, os, statistics, subprocess, sys, tempfile, time
from pathlib import Path
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
REPEATS = 3
PROBE = ("import sys, json; from ptycho_torch_nb import cli\n"
         "try: rc = getattr(cli, sys.argv[1] + '_main')(sys.argv[2:])\nexcept SystemExit as e: rc = e.code\n"
         "print(json.dumps({'rc': rc, 'torch': 'torch' in sys.modules}), file=sys.stderr)")


def fresh(args, cwd) -> tuple:
    "Median wall time (s) of `python -c PROBE args` over REPEATS fresh processes, and the probe's last report."
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get('PYTHONPATH', ''))
    times, report = [], None
    for _ in range(REPEATS):
        t0 = time.perf_counter()
        p = subprocess.run([sys.executable, '-c', PROBE, *args], env=env, cwd=cwd, capture_output=True, text=True)
        times.append(time.perf_counter() - t0)
        report = json.loads(p.stderr.strip().splitlines()[-1])
    return statistics.median(times), report


def fresh_code(code: str) -> float:
    "Median wall time (s) of `python -c code` over REPEATS fresh processes."
    times = []
    for _ in range(REPEATS):
        t0 = time.perf_counter(); subprocess.run([sys.executable, '-c', code], check=True, cwd=ROOT); times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main():
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        bad = d / 'bad.npz'   # 'xcoords' misspelt
        np.savez(bad, xcoordz=np.zeros(4), ycoords=np.zeros(4), diff3d=np.zeros((4, 8, 8), np.float32),
                 probeGuess=np.ones((8, 8), np.complex64))
        (d / 'model').mkdir(); (d / 'model' / 'wts.h5.zip').write_bytes(b'')
        cases = {'train': ['--train_data_file', str(bad)],
                 'infer': ['--model_path', str(d / 'model'), '--test_data', str(bad)],
                 'reconstruct': [str(bad), '--output_dir', str(d / 'out')],
                 'pretrain': ['--output_dir', str(d / 'out'), '--steps', '0']}   # no data file: a bad value
        t_ref = fresh_code('import torch, lightning')
        print(f"reference: 'import torch, lightning' alone takes {t_ref:.2f} s in a fresh process; "
              f"'import ptycho_torch_nb' costs {fresh_code('import ptycho_torch_nb') - fresh_code('pass'):.3f} s beyond start-up")
        print(f"{'command':28s} {'--help':>9s} {'bad input':>9s}  {'/ reference':>12s}  torch imported  (median of {REPEATS} fresh processes)")
        for cmd, bad_args in cases.items():
            t_help, r_help = fresh([cmd, '--help'], d)
            t_bad, r_bad = fresh([cmd, *bad_args], d)
            assert r_help['rc'] == 0 and r_bad['rc'] == 2, (cmd, r_help, r_bad)
            print(f"ptycho-torch-{cmd:15s} {t_help:8.2f}s {t_bad:8.2f}s  {t_help / t_ref:5.2f} {t_bad / t_ref:5.2f}  "
                  f"{r_help['torch'] or r_bad['torch']}")


if __name__ == '__main__':
    main()
