"""Issue 16's GPU check: one prepared script for a lent accelerator (not a test; prints figures, writes a record).

On a session with a device machine (`status` shows one lent), one call does it all, inside the 600 s limit of one command:

    run(command="PYTHONUNBUFFERED=1 python3 benchmarks/gpu_check.py --out $OUT", timeout_s=540)

The machine's own python3 has every runtime dependency (torch, lightning, h5py, scipy, scikit-image); the package runs
from the copied tree (`sys.path`), no install. Phases, each timed, in this order (the pretraining budget is what the
deadline leaves, so a slow phase shortens it instead of losing the call):
0. tests: the suite's CUDA checks (tests/test_cuda.py: inference after fit, an archive loaded onto the GPU, the smoothing's
   deterministic backward, export and streaming of a GPU model, the workflow's deterministic training), the CUDA bf16 fit
   and the pretraining tests (pretraining, zero-shot and polish run on the accelerator there), with pytest's tail;
1. throughput: training patterns/s of `pretrain` (bf16-mixed and 32-true) against the plain CNN of the same layers,
   same run, same batch (`bench_pretrain_throughput`), at each of --throughput_batches groups per step (the step is
   launch-bound at 64 groups on an H200: larger batches share that cost): the issue's bar is ours / plain >= 1.1;
2. zero-shot rate: `reconstruct_zero_shot` of the shipped model on a --rate_n-pattern scan, on the accelerator and on
   the machine's CPU (patterns/s of inference, and the whole call with stitching);
3. pretraining: the shipped model's recipe (`make pretrained`) on a --n_scans corpus for the time left, bf16, one scan
   per step (--batch_size groups), starting from the shipped model's weights (--init_from none: from random ones);
   writes OUT/pretrained_N64/ (wts.h5.zip, model_card.json, last.ckpt: resume a later chunk with
   --resume OUT/pretrained_N64/last.ckpt, after copying it back);
4. zero-shot scores (SSIM amplitude / phase) of the new model and of the shipped one on the amortised benchmark's
   cases (`bench_amortised.cases`: held-out families, camera/astronaut, low dose), beside the no-network baseline
   (the back-propagated first guess stitched the same way, `with_first_guess`), which a network must beat.
Everything goes to OUT/gpu_check.json. On a machine without a GPU it runs the same phases on the CPU (`--tiny` shrinks
them to seconds: the test suite runs it so, to keep it working).

The new model's start is then measured on the session's own machine, where the model comes back (`files_at`):
`python benchmarks/bench_amortised.py --model <files_at>/pretrained_N64 --n 256 --solver_epochs 200 --polish_epochs 200`.
Its ratio in solver passes is the bar's time to quality. A zero-shot SSIM says little about it (RESULTS.md, 2026-12-03,
sixth session: what a start must get right is its large scales).

Usage: python benchmarks/gpu_check.py --out DIR [--deadline_s 420] [--n_scans 4096] [--batch_size 64] [--throughput_batches 64 256]
       [--resume CKPT] [--tiny]
"""
import argparse, functools, json, shutil, sys, tempfile, time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path[:0] = [str(ROOT.parent), str(ROOT)]

GPU_TESTS = ['tests/test_cuda.py', 'tests/test_model.py::test_cuda_bf16', 'tests/test_pretrain.py', '-k', 'not prepared_gpu_check and not ddp and not amortised']   # (DDP tests: CPU ranks)

def gpu_tests(timeout_s: float = 150) -> dict:
    "The suite's tests that use the accelerator when there is one (the CUDA bf16 fit; pretraining, zero-shot and polish on 'auto')."
    import subprocess
    t = time.perf_counter()
    try:
        r = subprocess.run([sys.executable, '-m', 'pytest', '-q', '-p', 'no:cacheprovider', '-p', 'no:warnings', '--tb=short', '-rfs', *GPU_TESTS], cwd=ROOT.parent,
                           capture_output=True, text=True, timeout=timeout_s)
        code, tail = r.returncode, (r.stdout + r.stderr)[-4000:]
    except subprocess.TimeoutExpired: code, tail = None, f'timed out after {timeout_s:.0f} s'
    return dict(returncode=code, passed=code == 0, tail=tail, seconds=time.perf_counter() - t)

def environment() -> dict:
    "torch, device name, the precision 'auto' resolves to, CPU threads."
    import torch
    from ptycho_torch_nb.training import resolve_precision, inference_device
    dev = inference_device('auto')
    return dict(torch=torch.__version__, device=dev, name=torch.cuda.get_device_name(0) if dev == 'cuda' else 'cpu',
                precision=resolve_precision('auto', 'gpu' if dev == 'cuda' else 'cpu'), cpu_threads=torch.get_num_threads())

def throughput_by_batch(steps: int, batch_sizes, device: str, workdir: Path, warm_up: bool = True, n_scans: int = 16) -> dict:
    "`throughput` at each batch size: {'by_batch': {groups: record}}, and the first batch size's record at the top level."
    by = {int(b): throughput(steps, int(b), device, workdir, warm_up, n_scans) for b in batch_sizes}
    return dict(by[int(batch_sizes[0])], by_batch=by)

def throughput(steps: int, batch_size: int, device: str, workdir: Path, warm_up: bool = True, n_scans: int = 16) -> dict:
    "Training patterns/s of `pretrain` in each precision and of the plain CNN of the same layers (same batch)."
    from bench_pretrain_throughput import ours_rate, plain_copy, plain_rate
    from ptycho_torch_nb.training import resolve_precision
    chosen = resolve_precision('auto', 'gpu' if device == 'cuda' else 'cpu')
    for p in dict.fromkeys([chosen, '32-true']) if warm_up else (): ours_rate(2, p, batch_size, workdir, n_scans)   # warm-up: cuDNN's kernel choice, the allocator
    ours = {p: ours_rate(steps, p, batch_size, workdir, n_scans) for p in dict.fromkeys([chosen, '32-true'])}
    gen = ours[chosen]['model'].model.generator
    plain = plain_rate(plain_copy(gen.net).to(device), ours[chosen]['patterns_per_step'], int(gen.in_channels), steps, device=device)
    plain_bf16 = (plain_rate(plain_copy(gen.net).to(device), ours[chosen]['patterns_per_step'], int(gen.in_channels), steps, device=device, bf16=True)
                  if device == 'cuda' else None)   # a CPU without native bf16 emulates it: minutes, and no comparison anyone runs
    rec = dict(plain=plain, plain_bf16=plain_bf16, chosen=chosen, patterns_per_step=ours[chosen]['patterns_per_step'],
               **{f'ours_{p}': o['patterns_per_s'] for p, o in ours.items()})
    rec['ratio'] = rec[f'ours_{chosen}'] / plain
    if plain_bf16: rec['ratio_bf16'] = rec[f'ours_{chosen}'] / plain_bf16   # against the plain CNN given bf16 too
    return rec

def zero_shot_rate(model_dir: Path, n: int, device: str) -> dict:
    "Inference and whole-call patterns/s of the shipped model's zero-shot on an n-pattern scan, on `device` and the CPU."
    from ptycho_torch_nb.pretrain import load_pretrained, reconstruct_zero_shot
    from ptycho_torch_nb.simulation import simulated_scan
    raw = simulated_scan(n=n, seed=3)
    out = {}
    for dev in dict.fromkeys([device, 'cpu']):
        kw = dict(accelerator='gpu' if dev == 'cuda' else 'cpu', batch_size=256 if dev == 'cuda' else 32)
        reconstruct_zero_shot(load_pretrained(model_dir), raw, **kw)               # warm-up (kernels, allocator)
        zs = reconstruct_zero_shot(load_pretrained(model_dir), raw, **kw)
        out[dev] = dict(n=n, seconds=zs['seconds'], inference_seconds=zs['inference_seconds'],
                        patterns_per_s=n / zs['inference_seconds'], ssim_amp=zs['metrics']['ssim_amp'],
                        ssim_phase=zs['metrics']['ssim_phase'])
    return out

def _resume_into(ckpt: Path, out: Path) -> float:
    "Put `ckpt` where `pretrain(resume=True)` looks; returns the training seconds it already holds."
    import torch
    (out / 'checkpoints').mkdir(parents=True, exist_ok=True)
    shutil.copy2(ckpt, out / 'checkpoints' / 'last.ckpt')
    state = torch.load(ckpt, map_location='cpu', weights_only=False).get('callbacks', {})
    return max([float(v['train_s']) for v in state.values() if isinstance(v, dict) and 'train_s' in v] or [0.0])

def pretrain_chunk(out: Path, n_scans: int, budget_s: float, batch_size: int, device: str, resume, checkpoint_every: int,
                   n_filters_scale: int = 1, init_from=None, label_weight: float = 1.0, seed: int = 0) -> dict:
    "Pretrain the shipped recipe for `budget_s` more seconds of training (resuming `resume`, or starting from `init_from`); scans of max(64, batch_size) positions, so one scan fills a batch."
    from ptycho_torch_nb.pretrain import pretrain
    done = _resume_into(Path(resume), out) if resume else 0.0
    init_from = None if resume else init_from
    r = pretrain(out, n_scans=n_scans, n=max(64, batch_size), time_budget_s=done + budget_s, batch_size=batch_size, learning_rate=5e-4,
                 init_from=init_from, label_weight=label_weight,
                 n_filters_scale=n_filters_scale, seed=seed, resume=bool(resume), overwrite=not resume, checkpoint_every=checkpoint_every,
                 accelerator='gpu' if device == 'cuda' else 'cpu', precision='auto', progress=True,
                 command=f"python3 benchmarks/gpu_check.py (pretraining: n_scans={n_scans}, positions_per_scan={max(64, batch_size)}, batch_size={batch_size}, "
                         f"n_filters_scale={n_filters_scale}, label_weight={label_weight:g}, seed={seed}, {done + budget_s:.0f} s of training{', resumed' if resume else ''}"
                         f"{f', from {init_from}' if init_from else ''})")
    shutil.copy2(out / 'checkpoints' / 'last.ckpt', out / 'last.ckpt')   # two folders down: comes back from the device
    shutil.rmtree(out / 'checkpoints')
    t = r['card']['training']
    return dict(steps=t['steps'], train_s=t['train_s'], corpus_s=t['corpus_s'], precision=t['precision'],
                final_loss=t['final_loss'], output_spread=t['output_spread'], sha256=r['card']['sha256'], resumed_from_s=done,
                init_from=t.get('init_from'), label_weight=label_weight, seed=seed)

def with_first_guess(model_dir):
    "The model of `model_dir` with, as generator, the back-propagated first guess itself: the no-network baseline (RESULTS.md, 2026-12-03)."
    import torch
    from ptycho_torch_nb.pretrain import load_pretrained
    class FirstGuess(torch.nn.Module):   # input channels 1, 2 of a model with `backprop_input`: Re and Im of the first guess
        def forward(self, x):
            z = torch.complex(x[:, :, 1].float(), x[:, :, 2].float())
            return z.abs().clamp(max=2), z.angle()   # capped at 2 (objects here are <= 1): the division by |P|² inflates it where the probe is dim
    model, card = load_pretrained(model_dir)
    model.model.generator = FirstGuess()
    return model, card

def zero_shot_scores(models: dict, n: int, device: str) -> list:
    "SSIM amplitude / phase of zero-shot per model (label: a function that loads it) on each of the amortised benchmark's cases."
    from bench_amortised import cases
    from ptycho_torch_nb.pretrain import reconstruct_zero_shot
    acc = 'gpu' if device == 'cuda' else 'cpu'
    loaded = {label: load() for label, load in models.items()}   # once each: every case adopts its own probe and dose
    rows = []
    for name, raw in cases(n, 0):
        row = dict(case=name)
        for label, model in loaded.items():
            try: zs = reconstruct_zero_shot(model, raw, accelerator=acc)
            except ValueError as e: row[label] = str(e); continue        # a model that does not fit this scan's probe
            row[label] = [round(zs['metrics']['ssim_amp'], 4), round(zs['metrics']['ssim_phase'], 4)]
        rows.append(row)
    return rows

def guarded(rec: dict, key: str, save, fn, report) -> bool:
    "Run one phase into rec[key] and print `report(result)`; a failure is recorded (message, traceback) and the next phase runs."
    import traceback
    t = time.perf_counter()
    try: rec[key] = fn(); ok = True
    except Exception as e:
        rec[key], ok = dict(error=f"{type(e).__name__}: {e}", traceback=traceback.format_exc()[-4000:]), False
        print(f"gpu_check: {key} FAILED: {type(e).__name__}: {' '.join(str(e).split())[:500]}", flush=True)
    if isinstance(rec[key], dict): rec[key].setdefault('seconds', time.perf_counter() - t)
    save()
    if ok: print(report(rec[key]), flush=True)
    return ok

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--out', type=Path, required=True, help='folder for gpu_check.json and pretrained_N64/ (on the device: $OUT)')
    ap.add_argument('--deadline_s', type=float, default=420, help="the whole script ends within about this (s); 420: with the start, about half of a session's 15 device minutes")
    ap.add_argument('--n_scans', type=int, default=4096, help='pretraining corpus scans (the shipped CPU model: 2048)')
    ap.add_argument('--batch_size', type=int, default=64, help='groups per pretraining step; corpus scans get max(64, this) positions, so one fills a batch '
                    '(256: 4x the patterns per scan, so about --n_scans 1024 for the same corpus)')
    ap.add_argument('--throughput_batches', type=int, nargs='+', default=[64, 256], help='groups per step at which phase 1 measures throughput')
    ap.add_argument('--n_filters_scale', type=int, default=1, help='network width (1: the shipped 2.5 MB model; 2: 4x the weights, a 9.7 MB archive)')
    ap.add_argument('--resume', type=Path, default=None, help="a last.ckpt of an earlier chunk to continue")
    ap.add_argument('--init_from', default='shipped', help="weights to start from: 'shipped' (--model), 'none' (random), or a model folder")
    ap.add_argument('--model', type=Path, default=ROOT.parent / 'data' / 'pretrained_N64', help='the shipped model')
    ap.add_argument('--label_weight', type=float, default=1.0,
                    help="weight of the label term (the corpus' true patches; 0: the physics loss alone). 40 CPU minutes with it "
                         "lifted the camera scan's zero-shot phase SSIM 0.21 -> 0.31, without it 0.21 -> 0.21 (benchmarks/RESULTS.md)")
    ap.add_argument('--seed', type=int, default=0, help='corpus seed (0: the shipped chunks\' corpus; another: fresh scans for a chunk that continues the shipped model)')
    ap.add_argument('--skip_tests', action='store_true', help='leave out phase 0 (a second call, after one that ran them)')
    ap.add_argument('--tiny', action='store_true', help='seconds-sized phases (a CPU smoke test of this script)')
    a = ap.parse_args(argv)
    t0 = time.perf_counter()
    if a.resume is not None and not a.resume.is_file():     # before the imports: a typo costs no torch start-up
        print(f"gpu_check: --resume {a.resume}: no such checkpoint", file=sys.stderr); return 2
    import warnings
    from ptycho_torch_nb.core import quiet_libraries
    quiet_libraries(False); warnings.filterwarnings('ignore', message='.*(does not have many workers|GPU available).*')
    out = a.out; out.mkdir(parents=True, exist_ok=True)
    rec = dict(environment=environment(), argv=sys.argv[1:] if argv is None else argv)
    dev = rec['environment']['device']
    print(f"gpu_check: {rec['environment']}", flush=True)
    tiny = (dict(steps=2, rate_n=32, n_scans=2, eval_n=32, batch=2, batches=[2, 4], rate_scans=2) if a.tiny else
            dict(steps=30, rate_n=1024, n_scans=a.n_scans, eval_n=256, batch=a.batch_size, batches=a.throughput_batches, rate_scans=16))
    save = lambda: (out / 'gpu_check.json').write_text(json.dumps(rec, indent=1, default=float))
    if not (a.tiny or a.skip_tests):   # (the suite runs the tiny form itself)
        rec['tests'] = gpu_tests(); save()
        print(f"tests on this machine ({' '.join(GPU_TESTS)}): {'passed' if rec['tests']['passed'] else 'FAILED'} "
              f"in {rec['tests']['seconds']:.0f} s: {(rec['tests']['tail'].strip().splitlines() or [''])[-1]}", flush=True)
    def report_throughput(rec):
        return '\n'.join(f"throughput, {b} groups a step: ours ({th['chosen']}) {th['ours_' + th['chosen']]:.0f} patterns/s, plain CNN "
                         f"{th['plain']:.0f} patterns/s: {th['ratio']:.2f}x (bar 1.1); ours 32-true {th['ours_32-true']:.0f}" + (f"; plain CNN under bf16 autocast {th['plain_bf16']:.0f}: {th['ratio_bf16']:.2f}x" if th.get('plain_bf16') else '')
                         for b, th in rec['by_batch'].items())
    with tempfile.TemporaryDirectory() as work:
        guarded(rec, 'throughput', save, lambda: throughput_by_batch(tiny['steps'], tiny['batches'], dev, Path(work), not a.tiny, tiny['rate_scans']), report_throughput)
    guarded(rec, 'zero_shot_rate', save, lambda: zero_shot_rate(a.model, tiny['rate_n'], dev),
            lambda zr: '\n'.join(f"zero-shot on {d}: {z['n']} patterns, inference {z['inference_seconds']:.2f} s "
                                 f"({z['patterns_per_s']:.0f} patterns/s), whole call {z['seconds']:.2f} s" for d, z in zr.items() if isinstance(z, dict)))
    reserve = 15 if a.tiny else 45                # then scoring (20 s on the H200) and the model's writing (7 s)
    from ptycho_torch_nb.pretrain import corpus_workers
    corpus_s = 20 + 0.1 * tiny['n_scans'] * max(64, tiny['batch']) / 64 / corpus_workers(tiny['n_scans'])   # outside the training budget; H200, 16 workers: 1024 scans 27 s, 4096 in 36-44 s
    budget = 1.0 if a.tiny else a.deadline_s - (time.perf_counter() - t0) - reserve - corpus_s
    if budget < 30 and not a.tiny:
        print(f"gpu_check: only {budget:.0f} s left for pretraining: skipped", flush=True)
    else:
        model_dir = out / 'pretrained_N64'
        start = {'shipped': a.model, 'none': None}.get(a.init_from, a.init_from)
        shipped_width = json.loads((a.model / 'model_card.json').read_text())['model']['n_filters_scale']
        if a.init_from == 'shipped' and a.n_filters_scale != shipped_width:   # another width cannot take its weights
            print(f"gpu_check: --n_filters_scale {a.n_filters_scale} differs from the shipped model's {shipped_width}: "
                  "pretraining from random weights", flush=True); start = None
        ok = guarded(rec, 'pretrain', save, lambda: pretrain_chunk(model_dir, tiny['n_scans'], budget, tiny['batch'], dev, a.resume,
                                                                10 if a.tiny else 1000, a.n_filters_scale, start, a.label_weight, a.seed),
                     lambda p: f"pretrain: {p['steps']} steps in {p['train_s']:.0f} s ({p['precision']}), corpus {p['corpus_s']:.0f} s, "
                               f"loss {p['final_loss']:.4g}, SHA-256 {p['sha256'][:12]}")
        from ptycho_torch_nb.pretrain import load_pretrained
        models = dict(shipped=functools.partial(load_pretrained, a.model), first_guess=functools.partial(with_first_guess, a.model))
        if ok: models['new'] = functools.partial(load_pretrained, model_dir)   # beside the no-network baseline (first_guess)
        f = lambda v: f"{v[0]:.3f} / {v[1]:.3f}" if isinstance(v, list) else str(v)
        guarded(rec, 'zero_shot_scores', save, lambda: zero_shot_scores(models, tiny['eval_n'], dev),
                lambda rows: '\n'.join(f"zero-shot {r['case']:38s} " + '   '.join(f"{k} {f(r.get(k, '-'))}" for k in ('shipped', 'new', 'first_guess'))
                                       for r in rows))
    rec['seconds'] = time.perf_counter() - t0; save()
    print(f"gpu_check: done in {rec['seconds']:.0f} s; record {out / 'gpu_check.json'}", flush=True)
    return 0

if __name__ == '__main__': sys.exit(main())
