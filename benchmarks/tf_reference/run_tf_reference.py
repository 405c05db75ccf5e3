"""Train the TensorFlow reference (hoidn/PtychoPINN, `ptycho` on PYTHONPATH) on the exported demo data exactly as its
own training script does (gridsize 1, 512 patterns, 5 epochs, batch 16, nphotons 1e9, `run_cdi_example` with
stitching), then save its predicted test patches, their positions and the loss history for `score_tf_patches.py`.

Usage (in an environment with TensorFlow and the upstream checkout on PYTHONPATH):
    TFREF_SEED=42 python benchmarks/tf_reference/run_tf_reference.py DATA_DIR OUT.npz
DATA_DIR holds train.npz and test.npz from `export_demo_data.py`. `TF_USE_LEGACY_KERAS=1` runs it under Keras 2.
"""
import os, random, sys, time
from pathlib import Path
import numpy as np

def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    data, out = Path(argv[0]), Path(argv[1])
    seed = int(os.environ.get('TFREF_SEED', '42'))
    import tensorflow as tf
    np.random.seed(seed); tf.random.set_seed(seed); random.seed(seed)
    from ptycho.config.config import TrainingConfig, ModelConfig, update_legacy_dict
    from ptycho import params
    from ptycho.workflows.components import load_data, run_cdi_example
    config = TrainingConfig(model=ModelConfig(N=64, gridsize=1), train_data_file=data / 'train.npz',
                            test_data_file=data / 'test.npz', n_groups=512, nepochs=5, batch_size=16, nphotons=1e9,
                            output_dir=out.parent / (out.stem + '_outputs'))
    update_legacy_dict(params.cfg, config)
    t0 = time.time()
    train = load_data(str(config.train_data_file), n_images=512, n_subsample=512, subsample_seed=config.subsample_seed)
    test = load_data(str(config.test_data_file))
    amp, phase, results = run_cdi_example(train, test, config, do_stitching=True)
    hist = {k: [float(x) for x in v] for k, v in results['history'].items()}
    patches = np.asarray(results['obj_tensor_full'])[..., 0].astype(np.complex64)   # [B, N, N]
    offsets = np.asarray(results['global_offsets'])[:, 0, :, 0].astype(np.float64)  # [B, 2] = (x, y)
    np.savez(out, patches=patches, offsets=offsets, loss=np.asarray(hist.get('loss', [])),
             val_loss=np.asarray(hist.get('val_loss', [])), intensity_scale=np.float64(params.cfg['intensity_scale']),
             seconds=np.float64(time.time() - t0), seed=np.int64(seed))
    print(f"{out}: {len(patches)} patches; loss per epoch {hist.get('loss')}; {time.time() - t0:.0f} s")
    return 0

if __name__ == '__main__': sys.exit(main())
