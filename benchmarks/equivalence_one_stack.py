"""Same seed, same steps, one thread: reconstruct_scan, iterative_reference and run_cdi_example_torch, printed as JSON.

Run it in two checkouts (PYTHONPATH=<checkout>) to compare a refactor before and after (benchmarks/RESULTS.md, issue 14)."""
import atexit, shutil, json, tempfile, warnings, logging, torch
from pathlib import Path
OUT = Path(tempfile.mkdtemp()); atexit.register(shutil.rmtree, OUT, True)
warnings.filterwarnings('ignore'); logging.getLogger('lightning.pytorch').setLevel(logging.ERROR)
torch.set_num_threads(1)
from ptycho_torch_nb import reconstruct as R, workflow as W
try: from ptycho_torch_nb.simulation import simulated_scan
except ImportError: simulated_scan = R.simulated_scan
out = {}
raw = simulated_scan(n=64, seed=1)
res = R.reconstruct_scan(raw, nepochs=2, seed=42, precision='32-true', progress=False)
out['reconstruct'] = dict(loss=res['history']['train_loss'], ssim_amp=res['metrics']['ssim_amp'], ssim_phase=res['metrics']['ssim_phase'], steps=res['steps'])
ref = R.iterative_reference(raw, epochs=20, batch_size=8)
out['iterative_reference'] = dict(ssim_amp=ref['metrics']['ssim_amp'], ssim_phase=ref['metrics']['ssim_phase'])
from ptycho_torch_nb.config import TrainingConfig, ModelConfig
train, test = W.simulate_run1084(64, 32, seed=3)
cfg = TrainingConfig(model=ModelConfig(N=64, gridsize=1, n_filters_scale=1), n_groups=64, nepochs=2, batch_size=16, backend='pytorch', output_dir=OUT)
try: from ptycho_torch_nb.training import default_execution_config
except ImportError: default_execution_config = W.default_execution_config
ec = default_execution_config(accelerator='cpu', logger_backend=None, enable_checkpointing=False)
amp, phase, r = W.run_cdi_example_torch(train, test, cfg, execution_config=ec, do_stitching=True, seed=0)
out['workflow'] = dict(loss=r['history']['train_loss'], ssim=[float(v) for v in r['metrics']['ssim']], mae=[float(v) for v in r['metrics']['mae']])
print(json.dumps(out, indent=1))
