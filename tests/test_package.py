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


def module_layers(root: Path = ROOT) -> dict:
    "{module: (layer, notebook)}: the layer is the notebook's leading digit pair's second digit (`05a_reconstruct` → 5)."
    import json, re
    out = {}
    for nb in sorted((root / 'nbs').glob('[0-9][0-9]*.ipynb')):
        for c in json.loads(nb.read_text())['cells']:
            m = re.search(r'#\|\s*default_exp\s+(\S+)', ''.join(c['source']))
            if m: out[m.group(1)] = (int(nb.name[1]), nb.name)
    return out


def own_imports(path: Path, package: str = 'ptycho_torch_nb') -> list:
    "(line, module) for every import of one of the package's modules in `path`, function-level ones included."
    import ast
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1 and node.module: names = [node.module]
            elif node.level == 1 or node.module == package: names = [a.name for a in node.names]
            elif node.module and node.module.startswith(package + '.'): names = [node.module.split('.')[1]]
            else: names = []
        elif isinstance(node, ast.Import): names = [a.name.split('.')[1] for a in node.names if a.name.startswith(package + '.')]
        else: names = []
        found += [(node.lineno, n.split('.')[0]) for n in names]
    return found


def layer_violations(root: Path = ROOT) -> list:
    "Imports against specs/architecture.md: a module imports only its own or lower layers; the orchestrators (5) not each other."
    layers, bad = module_layers(root), []
    for mod, (layer, nb) in layers.items():
        for line, dep in own_imports(root / 'ptycho_torch_nb' / f'{mod}.py'):
            if dep not in layers or dep == mod: continue
            up, sibling = layers[dep][0] > layer, layers[dep][0] == layer == 5
            if up or sibling: bad.append(f"{mod}.py:{line} (layer {layer}, {nb}) imports {dep} (layer {layers[dep][0]})")
    return bad


def test_layers_import_downwards(tmp_path):
    assert len(module_layers()) >= 25
    assert layer_violations() == []
    # the check sees a violation: a copy of the package where the training core imports an orchestrator
    import shutil
    shutil.copytree(ROOT / 'nbs', tmp_path / 'nbs', ignore=shutil.ignore_patterns('fixtures', '*.png'))
    shutil.copytree(ROOT / 'ptycho_torch_nb', tmp_path / 'ptycho_torch_nb')
    t = tmp_path / 'ptycho_torch_nb' / 'training.py'
    t.write_text(t.read_text() + "\ndef _late():\n    from ptycho_torch_nb.reconstruct import polish\n")
    r = tmp_path / 'ptycho_torch_nb' / 'reconstruct.py'
    r.write_text(r.read_text() + "\nfrom .pretrain import pretrain\n")
    found = {(v.split(':')[0], v.split(' imports ')[1].split()[0]) for v in layer_violations(tmp_path)}
    assert found == {('training.py', 'reconstruct'), ('reconstruct.py', 'pretrain')}, found
