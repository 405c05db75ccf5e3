"""A command stopped by a signal says so and fails: `ptycho-torch-pretrain` sent SIGTERM mid-training (Lightning's
handler ends the fit with `SIGTERMException`, a `SystemExit` with code None) exits 143 with one line, its last
checkpoint kept. The in-process cases (Ctrl-C, Lightning's exit after Ctrl-C) are checked in nbs/00_core.ipynb.
"""
import os, queue, re, signal, subprocess, sys, threading, time
from pathlib import Path


def _lines(stream, q):
    for line in stream: q.put(line)
    q.put(None)


def test_pretrain_sigterm_exits_143_keeps_checkpoint(tmp_path):
    exe = Path(sys.executable).parent / 'ptycho-torch-pretrain'
    out = tmp_path / 'pre'
    p = subprocess.Popen([str(exe), '--output_dir', str(out), '--n_scans', '8', '--positions', '16', '--steps', '100000',
                          '--batch_size', '2', '--accelerator', 'cpu', '--checkpoint_every', '1', '--corpus_workers', '1'],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ, OMP_NUM_THREADS='1'))
    q, seen = queue.Queue(), []
    threading.Thread(target=_lines, args=(p.stderr, q), daemon=True).start()
    try:
        deadline = time.monotonic() + 40   # imports + corpus + first step: ~10 s here
        while not any(re.search(r'\] step \d+ ', l) for l in seen):   # the clock's line: Lightning's handler is in place
            line = q.get(timeout=max(deadline - time.monotonic(), 0.1))
            assert line is not None, f"ended before training started: {''.join(seen)[-3000:]}"
            seen.append(line)
        p.send_signal(signal.SIGTERM)
        p.wait(timeout=15)
    finally:
        if p.poll() is None: p.kill(); p.wait(timeout=10)
    while (line := q.get(timeout=5)) is not None: seen.append(line)
    err = ''.join(seen)
    assert p.returncode == 143, (p.returncode, err[-3000:])   # not 0 (success) nor -15 (killed before any word)
    stopped = [l for l in err.splitlines() if 'stopped by SIGTERM' in l]
    assert len(stopped) == 1 and stopped[0].startswith('ptycho-torch-pretrain: stopped by SIGTERM; '), err[-3000:]
    assert '--resume' in stopped[0] and 'Traceback' not in err, err[-3000:]
    import torch
    ckpt = torch.load(out / 'checkpoints' / 'last.ckpt', map_location='cpu', weights_only=False)   # what --resume continues
    assert ckpt['global_step'] >= 1
    assert not (out / 'wts.h5.zip').exists()   # the run did not finish: no model, only the checkpoint
