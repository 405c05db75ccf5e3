"""Issue 9 diagnostic: how well do the groups of gridsize-g training determine the object, with no network at all?

For each gridsize, the scan's inference groups (`reconstruct.inference_container`: every pattern in about one group)
each get a free complex object on the model's merge canvas, fitted by Adam to the same Poisson likelihood through the
same physics as `PtychoPINN` (extract the group's patches, times the probe, far field, intensity scale); the groups are
independent of each other, as they are in the reference's loss. The per-group objects are then stitched and scored
like the network's output (`stitch_scan`, `score_scan`). The truth's own loss through the same physics is printed
beside it: a group fit that reaches the truth's loss without reaching the truth's SSIM shows that the group's data do
not determine its object.

Usage: python benchmarks/bench_group_ceiling.py [--gridsizes 2 3] [--iterations 400] [--lr 0.02] [--threads 2] [--out F]
"""
import argparse, json, sys, time
import numpy as np
import torch

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--gridsizes', type=int, nargs='*', default=[2, 3])
    ap.add_argument('--iterations', type=int, default=400)
    ap.add_argument('--score_every', type=int, default=100)
    ap.add_argument('--lr', type=float, default=0.02)
    ap.add_argument('--threads', type=int, default=2)
    ap.add_argument('--seed', type=int, default=0)
    ap.add_argument('--out', default=None)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    from ptycho_torch_nb import physics
    from ptycho_torch_nb.simulation import simulated_scan
    from ptycho_torch_nb.data_container import inference_container, scan_nphotons
    from ptycho_torch_nb.reconstruct import merge_canvas_size
    from ptycho_torch_nb.stitching import stitch_scan
    from ptycho_torch_nb.evaluation import score_scan
    from ptycho_torch_nb.model import PtychoPINN_Lightning
    raw = simulated_scan(n=256, seed=a.seed)
    nph = scan_nphotons(raw)
    record = {}
    for g in a.gridsizes:
        c = inference_container(raw, 64, g, nph, radius=32 + 4 * (g - 2))
        X = torch.as_tensor(np.asarray(c.X)).float(); co = torch.as_tensor(np.asarray(c.coords_relative)).float()
        Y = torch.as_tensor(np.asarray(c.Y)).to(torch.complex64)
        B, C, N, _ = X.shape
        P = merge_canvas_size([c], N, g)
        mdl = PtychoPINN_Lightning(dict(N=N, gridsize=g, n_filters_scale=1), intensity_scale=float(c.intensity_scale), merge_weight='full',
                                 padded_size=P, probe=torch.as_tensor(np.asarray(c.probe))).model
        target = (mdl.intensity_scale * X) ** 2
        def nll(obj):
            return physics.poisson_nll((mdl.intensity_scale * physics.diffraction_amplitude(obj, mdl.probe, mdl.probe_mask)) ** 2, target)
        with torch.no_grad(): truth_nll = float(nll(Y))
        re = torch.ones(B, P, P, requires_grad=True); im = torch.zeros(B, P, P, requires_grad=True)
        opt = torch.optim.Adam([re, im], lr=a.lr)
        rows, t0 = [], time.perf_counter()
        print(f"gridsize {g}: {B} groups of {C}, canvas {P}, the truth's loss {truth_nll:.6e}", flush=True)
        for it in range(1, a.iterations + 1):
            loss = nll(physics.extract_patches(torch.complex(re, im), co, N))
            opt.zero_grad(); loss.backward(); opt.step()
            if it % a.score_every == 0 or it == a.iterations:
                with torch.no_grad(): obj = physics.extract_patches(torch.complex(re, im), co, N)
                img, w, pos = stitch_scan(obj.numpy(), c, 48)
                m = score_scan(img, w, pos, raw.objectGuess, 48)
                rows.append(dict(iteration=it, seconds=time.perf_counter() - t0, loss=loss.item(),
                                 ssim_amp=m['ssim_amp'], ssim_phase=m['ssim_phase']))
                print(f"  iteration {it:5d} ({rows[-1]['seconds']:6.1f} s): loss {loss.item():.6e} "
                      f"({loss.item() - truth_nll:+.3g} vs truth), SSIM amplitude {m['ssim_amp']:.3f}, phase {m['ssim_phase']:.3f}",
                      flush=True)
        record[g] = dict(groups=B, group_size=C, truth_loss=truth_nll, rows=rows)
    if a.out:
        with open(a.out, 'w') as f: json.dump(dict(args=vars(a), gridsizes=record), f, indent=1)
    return 0

if __name__ == '__main__': sys.exit(main())
