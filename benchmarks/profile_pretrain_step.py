"""Where a pretraining step's time goes (not a test): the bare step (forward, backward, optimiser) timed apart, the
operators that dominate it (torch.profiler, CPU and the device), and `pretrain` itself on the same batch size.

Written for a lent GPU, where `pretrain` ran at 0.07x the plain CNN's patterns/s (benchmarks/RESULTS.md, 2026-12-04):
    run(command="PYTHONUNBUFFERED=1 python3 benchmarks/profile_pretrain_step.py", timeout_s=120)
It runs on the CPU too (`--device cpu --batch_size 4`).

Usage: python benchmarks/profile_pretrain_step.py [--device auto] [--batch_size 64] [--steps 20] [--rows 18]
"""
import argparse, sys, tempfile, time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path[:0] = [str(ROOT.parent)]

def timed(fn, steps: int, sync) -> float:
    "Mean seconds of `fn()` over `steps` calls, after two warm-up calls."
    fn(); fn(); sync()
    t = time.perf_counter()
    for _ in range(steps): fn()
    sync()
    return (time.perf_counter() - t) / steps

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--device', default='auto'); ap.add_argument('--batch_size', type=int, default=64)
    ap.add_argument('--steps', type=int, default=20); ap.add_argument('--rows', type=int, default=18)
    a = ap.parse_args(argv)
    import torch
    from ptycho_torch_nb import pretrain as PT
    from ptycho_torch_nb.core import quiet_libraries
    quiet_libraries(False)
    dev = torch.device('cuda' if a.device == 'auto' and torch.cuda.is_available() else ('cpu' if a.device == 'auto' else a.device))
    sync = torch.cuda.synchronize if dev.type == 'cuda' else (lambda: None)
    corp = PT.build_corpus(4, n=64, workers=1)
    pt = PT.Pretrainer(PT._build_net(*PT.scan_configs(64), corp, 5e-4), corp).to(dev)
    b = {k: v.to(dev) for k, v in PT.CorpusDataset(corp).__getitems__(list(range(a.batch_size))).items()}
    opt = torch.optim.Adam(pt.parameters(), 1e-4)
    patterns = a.batch_size * b['X'].shape[1]
    print(f"device {dev} ({torch.cuda.get_device_name(0) if dev.type == 'cuda' else 'cpu'}), torch {torch.__version__}, "
          f"{a.batch_size} groups = {patterns} patterns per step, canvas P={pt.net.model.P}", flush=True)
    for name, half in (('bf16 autocast', True), ('float32', False)):
        ac = lambda: torch.autocast(dev.type, dtype=torch.bfloat16, enabled=half)
        def fwd():
            with ac(): return pt.compute_losses(b)['loss']
        def step():
            opt.zero_grad(set_to_none=True); fwd().backward(); opt.step()
        def fwd_bwd(): fwd().backward()
        s, f, fb = timed(step, a.steps, sync), timed(lambda: fwd().detach(), a.steps, sync), timed(fwd_bwd, a.steps, sync)
        print(f"{name}: step {1e3 * s:.1f} ms ({patterns / s:.0f} patterns/s): forward {1e3 * f:.1f} ms, backward {1e3 * (fb - f):.1f} ms, "
              f"optimiser {1e3 * (s - fb):.1f} ms", flush=True)
    from torch.profiler import profile, ProfilerActivity
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == 'cuda' else [])
    def step16():
        opt.zero_grad(set_to_none=True)
        with torch.autocast(dev.type, dtype=torch.bfloat16): loss = pt.compute_losses(b)['loss']
        loss.backward(); opt.step()
    step16(); sync()
    with profile(activities=acts) as prof:
        for _ in range(3): step16()
        sync()
    ev = prof.key_averages()
    n = lambda key: sum(e.count for e in ev if e.key == key) / 3
    print(f"per step: {sum(e.count for e in ev if e.key.startswith('aten::')) / 3:.0f} aten calls, "
          f"{n('aten::_local_scalar_dense'):.0f} host syncs (item), {n('cudaLaunchKernel') + n('cuLaunchKernel'):.0f} kernel launches", flush=True)
    key = 'self_cuda_time_total' if dev.type == 'cuda' else 'self_cpu_time_total'
    print(ev.table(sort_by=key, row_limit=a.rows, max_name_column_width=60), flush=True)
    if dev.type == 'cuda': print(ev.table(sort_by='self_cpu_time_total', row_limit=a.rows, max_name_column_width=60), flush=True)
    with tempfile.TemporaryDirectory() as d:   # `pretrain` itself (Lightning, the loader, the callbacks) at this batch size
        r = PT.pretrain(Path(d) / 'm', n_scans=8, steps=a.steps + 1, batch_size=a.batch_size, progress=False, checkpoint_every=10 ** 6,
                        workers=1, accelerator='gpu' if dev.type == 'cuda' else 'cpu', command='profile_pretrain_step')
        c = r['clock']
        print(f"pretrain: {1e3 * c.train_s / c.steps:.1f} ms per step ({c.steps * patterns / c.train_s:.0f} patterns/s, "
              f"{r['card']['training']['precision']})", flush=True)
    return 0

if __name__ == '__main__': sys.exit(main())
