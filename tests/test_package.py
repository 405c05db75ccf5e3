"""Package-level contracts: cheap import, torch guard, README in sync with index.ipynb."""
import subprocess, sys
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable

def _run(code, **kw):
    return subprocess.run([PY, '-c', code], capture_output=True, text=True, cwd=ROOT, **kw)

def test_import_is_cheap_and_lazy():
    r = _run("import sys, ptycho_torch_nb, ptycho_torch_nb.config, ptycho_torch_nb.params, ptycho_torch_nb.parity\n"
             "heavy = [m for m in ('lightning', 'pytorch_lightning', 'matplotlib', 'torch') if m in sys.modules]\n"
             "print(','.join(heavy))")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == '', f"importing the package pulled in: {r.stdout.strip()}"
    # what the import costs in time is printed by benchmarks/bench_cli.py, beside interpreter start-up

TORCH_MODULES = ['physics', 'model', 'data_container', 'workflow', 'persistence', 'stitching']

@pytest.mark.parametrize('mod', TORCH_MODULES)
def test_missing_torch_gives_install_guidance(mod):
    if not (ROOT / 'ptycho_torch_nb' / f'{mod}.py').exists(): pytest.fail(f'module {mod} missing')
    r = _run("import sys; sys.modules['torch'] = None\n"
             f"try:\n    import ptycho_torch_nb.{mod}\n"
             "except RuntimeError as e:\n    print('RuntimeError:', e)\n")
    assert 'RuntimeError:' in r.stdout, (r.stdout, r.stderr[-2000:])
    assert 'PyTorch backend' in r.stdout and 'pip install' in r.stdout and 'torch>=2.2' in r.stdout

def test_readme_matches_index_notebook():
    r = subprocess.run([PY, str(ROOT / 'tools' / 'make_readme.py'), '--check'], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr

def test_readme_opens_with_the_two_commands():
    text = (ROOT / 'README.md').read_text()
    head = text[:1500]
    assert 'make demo' in head and 'make test' in head
    ci = (ROOT / '.ci' / 'run').read_text()
    assert 'make test' in ci
