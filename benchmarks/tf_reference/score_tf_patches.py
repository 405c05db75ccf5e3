"""Score patches saved by `run_tf_reference.py` with this package's stitcher and scorer (the demo's: M = 20,
`workflow.evaluate_reconstruction` on the held-out region), next to an all-ones baseline (patches of 1: no
reconstruction at all). Usage (this package's environment): python benchmarks/tf_reference/score_tf_patches.py RUN.npz [...]
"""
import json, sys
import numpy as np

def score(patches, offsets, truth):
    from ptycho_torch_nb.stitching import reassemble_position
    from ptycho_torch_nb.evaluation import evaluate_reconstruction
    img, w = reassemble_position(patches, offsets, M=20, return_weights=True)
    m, _, _ = evaluate_reconstruction(np.asarray(img), offsets, truth, M=20, weights=np.asarray(w))
    return {k: [float(v) for v in m[k]] for k in ('ssim', 'mae')}

def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    from ptycho_torch_nb.workflow import simulate_run1084
    truth = np.asarray(simulate_run1084(512, 256, seed=42)[1].objectGuess)
    for f in argv:
        d = np.load(f)
        s = score(d['patches'], d['offsets'], truth)
        ones = score(np.ones_like(d['patches']), d['offsets'], truth)
        phase_std = float(np.angle(d['patches'][:, 22:42, 22:42]).std())
        print(json.dumps(dict(file=f, seed=int(d['seed']) if 'seed' in d else None, ssim=s['ssim'], mae=s['mae'],
                              all_ones_ssim=ones['ssim'], central_phase_std=phase_std,
                              loss=[float(x) for x in d['loss']])))
    return 0

if __name__ == '__main__': sys.exit(main())
