"""Write the demo's simulated Run1084 data (`workflow.simulate_run1084(512, 256, seed=42)`) as NPZ files that the
TensorFlow reference's `ptycho.workflows.components.load_data` reads (keys xcoords, ycoords, xcoords_start,
ycoords_start, diff3d, probeGuess, objectGuess, scan_index).

Usage (with this package's environment): python benchmarks/tf_reference/export_demo_data.py OUT_DIR
"""
import sys
from pathlib import Path
import numpy as np

def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    out = Path(argv[0] if argv else 'tf_reference_run'); out.mkdir(parents=True, exist_ok=True)
    from ptycho_torch_nb.workflow import simulate_run1084
    for name, raw in zip(('train', 'test'), simulate_run1084(512, 256, seed=42)):
        d = {k: np.asarray(getattr(raw, k)) for k in ('xcoords', 'ycoords', 'xcoords_start', 'ycoords_start',
                                                      'diff3d', 'probeGuess', 'objectGuess')}
        d['scan_index'] = np.zeros(len(d['xcoords']), np.int64) if raw.scan_index is None else np.asarray(raw.scan_index)
        np.savez(out / f'{name}.npz', **d)
        print(f"{out / f'{name}.npz'}: {len(d['xcoords'])} patterns")
    return 0

if __name__ == '__main__': sys.exit(main())
