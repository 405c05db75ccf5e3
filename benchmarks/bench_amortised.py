"""Issue 16 benchmark: does a pretrained network image a new sample faster than the iterative solver? (not a test)

For each case (scans of the held-out corpus families `corpus.HELD_OUT_FAMILIES`, the camera/astronaut scan of
`simulation.simulated_scan`, and a low-dose case: 1e5 photons, 40% overlap), on the same scan, in the same process:
- flat: the same-physics free-object solver `reconstruct.iterative_reference` from an object of ones, scored every
  few epochs (its curve of SSIM against wall time);
- zero-shot: `pretrain.reconstruct_zero_shot` (inference + stitching only);
- polish: `reconstruct.polish` after zero-shot (its default start: the zero-shot phase on a unit amplitude, unless a
  flat object fits the data better than the zero-shot object; time counted from the start of zero-shot);
- fine-tune: `reconstruct_scan(init_from=<pretrained>)` for --finetune_s seconds, then scored.
Target = the flat solver's final SSIM minus 0.01 (amplitude and phase); it prints the time each route needs to reach
it and the ratio to the flat solver's (acceptance: polish or fine-tune <= 0.5x), the same ratio counted in solver passes
(which this machine's drift does not move; the zero-shot's time converted at the flat run's seconds per pass), the zero-shot scores and times
(acceptance: >= 0.75 / 0.65, <= 2 s for 256 patterns) with the zero-shot amplitude's contrast (its standard deviation over
the truth's: a collapsed network that outputs a constant scores a high SSIM on a nearly flat object), and at low dose whether the amortised route's SSIM is at
least the solver's at equal wall time.

Usage: python benchmarks/bench_amortised.py --model data/pretrained_N64 [--n 256] [--solver_epochs 200]
       [--polish_epochs 100] [--finetune_s 0] [--repeats 1] [--threads 2] [--out amortised.json]
       [--fixture nbs/fixtures/amortised_bench.json]   (the curves the pretrain notebook plots)
"""
import argparse, json, sys
from pathlib import Path
import numpy as np

ROOT = Path(__file__).resolve().parent.parent

def first_reaching(curve, target, key: str = 'train_s'):
    "`key` ('train_s': time, 'epoch': pass) of the first point of `curve` at which both SSIMs reach `target`; None if never."
    return next((r[key] for r in curve if r['ssim_amp'] >= target[0] and r['ssim_phase'] >= target[1]), None)

def time_to(curve, target): return first_reaching(curve, target, 'train_s')
def passes_to(curve, target): return first_reaching(curve, target, 'epoch')

def in_passes(flat, pol, zs, target):
    """The time-to-target ratio counted in the solver's passes, which the machine's drift does not move: the zero-shot
    and the polish's start choice (the race from both starts and its data misfits) converted at this flat run's seconds
    per pass, plus the polish's passes after the race, over the flat start's passes."""
    p_flat, p_pol = passes_to(flat['snapshots'], target), passes_to(pol['snapshots'], target)
    per_pass = flat['seconds'] / max(flat['epochs'], 1)
    raced = pol['options'].get('race_passes', 0)   # the winner's passes, counted in the polish's epochs
    rec = dict(flat=p_flat, after_race=None if p_pol is None else p_pol - raced, start_choice=pol['options'].get('start_seconds', 0.0) / per_pass,
               zero_shot=zs['seconds'] / per_pass, pass_ms=1e3 * per_pass)
    if p_flat and p_pol: rec['ratio'] = (rec['zero_shot'] + rec['start_choice'] + rec['after_race']) / p_flat
    return rec

def cases(n: int, seed: int):
    "(name, scan) pairs: the held-out families, the benchmark object, a low-dose scan."
    from ptycho_torch_nb.corpus import HELD_OUT_FAMILIES, sample_scan
    from ptycho_torch_nb.simulation import simulated_scan
    rng = np.random.default_rng(seed)
    for fam in HELD_OUT_FAMILIES:
        yield fam, sample_scan(rng, 64, n, families=[fam], allow_held_out=True, scan_kinds=('random',),
                               probe_variants=('run1084',), nphotons=1e9, overlap=0.6)
    yield 'camera/astronaut', simulated_scan(n=n, seed=seed)
    yield 'low dose (1e5 photons, 40% overlap)', simulated_scan(n=n, overlap=0.4, nphotons=1e5, seed=seed + 1)

def flat_route(raw, a):
    "The solver from a flat object, scored about 20 times."
    from ptycho_torch_nb.reconstruct import iterative_reference
    return iterative_reference(raw, epochs=a.solver_epochs, score_every=max(1, a.solver_epochs // 20), seed=a.seed)

def amortised_route(raw, model, a):
    "(zero-shot result, polish result, the polish's curve with the zero-shot's time added)."
    from ptycho_torch_nb.reconstruct import polish
    from ptycho_torch_nb.pretrain import reconstruct_zero_shot
    zs = reconstruct_zero_shot(model, raw)
    pol = polish(raw, zs, epochs=a.polish_epochs, score_every=max(1, a.polish_epochs // 20), seed=a.seed)
    return zs, pol, [dict(r, train_s=r['train_s'] + zs['seconds']) for r in pol['snapshots']]

def warm_up(model_dir, seed: int):
    "A small run of every route first, so that no case pays the process's first-call costs (kernel choice, allocations, imports)."
    from ptycho_torch_nb.pretrain import load_pretrained, reconstruct_zero_shot
    from ptycho_torch_nb.reconstruct import iterative_reference, polish
    raw = next(cases(16, seed))[1]
    zs = reconstruct_zero_shot(load_pretrained(model_dir), raw)
    iterative_reference(raw, 2, score_every=1); polish(raw, zs, epochs=3, score_every=1)

def run_case(name, raw, model_dir, a):
    from ptycho_torch_nb.reconstruct import reconstruct_scan
    from ptycho_torch_nb.pretrain import load_pretrained
    model = load_pretrained(model_dir)
    flat = flat_route(raw, a)
    target = (flat['metrics']['ssim_amp'] - 0.01, flat['metrics']['ssim_phase'] - 0.01)
    zs, pol, pol_curve = amortised_route(raw, model, a)
    seen = np.asarray(zs['weights']) >= 0.5   # a network that outputs a constant can still score a high SSIM on a flat object
    contrast = float(np.abs(zs['stitched_obj'])[seen].std() / max(np.abs(raw.objectGuess).std(), 1e-12))
    rec = dict(case=name, target=target, flat_final=flat['metrics'], flat_curve=flat['snapshots'],
               zero_shot=dict(zs['metrics'], seconds=zs['seconds'], inference_seconds=zs['inference_seconds'], contrast=contrast),
               polish_curve=pol_curve, polish_start=pol['options']['start'], start_misfit=pol['options']['start_misfit'],
               t_flat=time_to(flat['snapshots'], target), t_polish=time_to(pol_curve, target),
               passes=in_passes(flat, pol, zs, target))
    if a.finetune_s > 0:
        ft = reconstruct_scan(raw, time_budget_s=a.finetune_s, init_from=Path(model_dir) / 'wts.h5.zip', progress=False, seed=a.seed)
        rec['finetune'] = dict(ft['metrics'], seconds=ft['train_seconds'])
    if rec['t_flat'] and rec['t_polish']: rec['ratio'] = rec['t_polish'] / rec['t_flat']
    # equal wall time: the flat solver's score at the polish route's final time
    t_end = pol_curve[-1]['train_s'] if pol_curve else zs['seconds']
    at = [r for r in flat['snapshots'] if r['train_s'] <= t_end]
    rec['flat_at_equal_time'] = at[-1] if at else None
    at = [r for r in flat['snapshots'] if r['train_s'] <= zs['seconds']]
    rec['flat_at_zero_shot_time'] = at[-1] if at else None
    rec['ahead_at'] = ahead_at(pol_curve, flat['snapshots'])
    if a.repeats > 1: rec['ratios'] = repeat_ratios(raw, model, a, target, rec.get('ratio'))
    return rec

def repeat_ratios(raw, model, a, target, first_ratio):
    "Time-to-target ratios (polish / flat) over `a.repeats` runs of both routes, the order alternating (this machine's speed drifts)."
    flat_t = lambda: time_to(flat_route(raw, a)['snapshots'], target)
    polish_t = lambda: time_to(amortised_route(raw, model, a)[2], target)
    ratios = [first_ratio]
    for k in range(1, a.repeats):
        if k % 2: tp = polish_t(); tf = flat_t()   # the first run had the flat solver first
        else: tf = flat_t(); tp = polish_t()
        ratios.append(tp / tf if tp and tf else None)
    return ratios

def ahead_at(route, solver):
    "Times of `route`'s points at which both its SSIMs are >= the solver's latest point at or before that time: (times ahead, all times)."
    ahead, times = [], []
    for r in route:
        before = [q for q in solver if q['train_s'] <= r['train_s']]
        if not before: continue
        times.append(round(r['train_s'], 2))
        if r['ssim_amp'] >= before[-1]['ssim_amp'] and r['ssim_phase'] >= before[-1]['ssim_phase']: ahead.append(times[-1])
    return ahead, times

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--model', default=str(ROOT / 'data' / 'pretrained_N64'), help='pretrained model folder (model_card.json + wts.h5.zip)')
    ap.add_argument('--n', type=int, default=256, help='positions per scan')
    ap.add_argument('--solver_epochs', type=int, default=200, help='epochs of the flat-start solver')
    ap.add_argument('--polish_epochs', type=int, default=100, help='epochs of the polish from the zero-shot object')
    ap.add_argument('--finetune_s', type=float, default=0.0, help='fine-tune budget (s); 0 skips the fine-tune route')
    ap.add_argument('--threads', type=int, default=2)
    ap.add_argument('--seed', type=int, default=0)
    ap.add_argument('--repeats', type=int, default=1, help='time both routes this many times per case (order alternating) and print the median ratio')
    ap.add_argument('--out', default=None, help='write the JSON record here')
    ap.add_argument('--fixture', default=None, help="write the curves for the notebook's figure here (e.g. nbs/fixtures/amortised_bench.json)")
    a = ap.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    import torch, warnings
    torch.set_num_threads(a.threads); warnings.filterwarnings('ignore')
    from ptycho_torch_nb.core import quiet_libraries
    quiet_libraries(False)   # Lightning's banner lines off (the fine-tune route trains), as in the CLIs
    f = lambda m: f"{m['ssim_amp']:.3f} / {m['ssim_phase']:.3f}"
    secs = lambda t, unit=' s': 'never' if t is None else f"{t:.2f}{unit}"
    median = lambda xs: 'never' if None in xs else f"{float(np.median(xs)):.2f}"   # a run that never reached the target counts as worst
    records = []
    warm_up(a.model, a.seed)
    for name, raw in cases(a.n, a.seed):
        r = run_case(name, raw, a.model, a); records.append(r)
        zs = r['zero_shot']
        print(f"{name:38s} flat {a.solver_epochs} epochs {f(r['flat_final'])} | zero-shot {f(zs)} in {zs['seconds']:.2f} s "
              f"(amplitude contrast {zs['contrast']:.2f} of the truth's{'; CONSTANT OUTPUT' if zs['contrast'] < 0.05 else ''}) "
              f"(inference {zs['inference_seconds']:.2f} s) | time to target: flat {secs(r['t_flat'])}, polish {secs(r['t_polish'])}"
              + (f", ratio {r['ratio']:.2f}" if r.get('ratio') else '') + (f" (median of {a.repeats} runs {median(r['ratios'])}: "
              + ', '.join(secs(x, '') for x in r['ratios']) + ')' if 'ratios' in r else '') + (f" | fine-tune {f(r['finetune'])}" if 'finetune' in r else ''),
              flush=True)
        ps = r['passes']
        print(f"{'':38s} in passes ({ps['pass_ms']:.0f} ms each): flat {ps['flat'] or 'never'}; zero-shot {ps['zero_shot']:.0f} "
              f"+ start choice {ps['start_choice']:.0f} + polish {'never' if ps['after_race'] is None else ps['after_race']}"
              + (f", ratio {ps['ratio']:.2f}" if 'ratio' in ps else ''), flush=True)
        mis = r['start_misfit']
        race = mis.get('after_race')
        print(f"{'':38s} polish start: {r['polish_start']} (data misfit: zero-shot {mis['network']:.4f}, flat object {mis['flat']:.4f}"
              + (f"; after the race: phase start {race['phase']:.5f}, flat start {race['flat']:.5f}" if race else '') + ")", flush=True)
        eq0 = r['flat_at_zero_shot_time']
        if eq0: print(f"{'':38s} at the zero-shot time {zs['seconds']:.1f} s the flat solver (epoch {eq0['epoch']}) has {f(eq0)}", flush=True)
        eq, end = r['flat_at_equal_time'], (r['polish_curve'] or [None])[-1]
        if eq and end:
            print(f"{'':38s} at equal wall time {end['train_s']:.1f} s: zero-shot + polish {f(end)}, flat solver {f(eq)} "
                  f"({'amortised >= solver' if end['ssim_amp'] >= eq['ssim_amp'] and end['ssim_phase'] >= eq['ssim_phase'] else 'solver ahead'})", flush=True)
        ahead, times = r['ahead_at']
        print(f"{'':38s} zero-shot + polish >= the solver at equal wall time at {len(ahead)} of its {len(times)} scored times"
              + (f" (from {ahead[0]:.1f} s{'' if ahead == times[times.index(ahead[0]):] else ', not at every later one'})" if ahead else ''), flush=True)
    if a.out: Path(a.out).write_text(json.dumps(records, indent=1, default=float))
    if a.fixture: write_fixture(a.fixture, records, a, argv)
    return 0

def write_fixture(path, records, a, argv):
    "The curves (time, amplitude and phase SSIM) of every route per case, with the model's hash and the command."
    import datetime
    card = json.loads((Path(a.model) / 'model_card.json').read_text())
    pts = lambda curve: [[round(r['train_s'], 3), round(r['ssim_amp'], 4), round(r['ssim_phase'], 4)] for r in curve]
    out = dict(date=datetime.date.today().isoformat(), command='python benchmarks/bench_amortised.py ' + ' '.join(argv or sys.argv[1:]),
               model=dict(sha256=card['sha256'], steps=card['training']['steps'], train_s=card['training']['train_s']),
               cases=[dict(case=r['case'], target=[round(t, 4) for t in r['target']], flat=pts(r['flat_curve']),
                           polish=pts(r['polish_curve']), polish_start=r['polish_start'], zero_shot=[round(r['zero_shot']['seconds'], 3),
                           round(r['zero_shot']['ssim_amp'], 4), round(r['zero_shot']['ssim_phase'], 4)],
                           zero_shot_contrast=round(r['zero_shot']['contrast'], 3), t_flat=r['t_flat'], t_polish=r['t_polish'],
                           ratios=r.get('ratios'),
                           finetune=[r['finetune']['seconds'], r['finetune']['ssim_amp'], r['finetune']['ssim_phase']] if 'finetune' in r else None)
                      for r in records])
    Path(path).write_text(json.dumps(out, indent=1))

if __name__ == '__main__': sys.exit(main())
