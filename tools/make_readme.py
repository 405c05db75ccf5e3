#!/usr/bin/env python3
"""Write README.md from nbs/index.ipynb (the nbdev way, without Quarto): markdown cells verbatim,
visible code cells as fenced Python; `#| hide` cells dropped. Relative links to notebooks (`[x](00_core.ipynb)`,
right for the docs site, where index.ipynb sits beside them) become `nbs/00_core.ipynb`, right for README.md at the
repository root.

`--check` exits 1 if README.md is not what index.ipynb says (used by tests/test_package.py).
"""
import json, re, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

NOTEBOOK_LINK = re.compile(r'\]\((?![a-z][a-z0-9+.-]*:|/|#|\.\./)([^)\s]+\.ipynb(?:#[^)]*)?)\)')

def repo_links(markdown: str) -> str:
    "Notebook links relative to nbs/ rewritten relative to the repository root."
    return NOTEBOOK_LINK.sub(lambda m: f'](nbs/{m.group(1)})', markdown)

def render(nb_path=ROOT / 'nbs' / 'index.ipynb') -> str:
    cells = json.loads(Path(nb_path).read_text(encoding='utf-8'))['cells']
    parts = []
    for c in cells:
        src = ''.join(c['source']).strip('\n')
        if c['cell_type'] == 'markdown': parts.append(repo_links(src))
        elif c['cell_type'] == 'code' and not src.lstrip().startswith(('#| hide', '#|hide')):
            parts.append('```python\n' + src + '\n```')
    return '\n\n'.join(parts) + '\n\n<!-- generated from nbs/index.ipynb by tools/make_readme.py: ' \
        'edit the notebook, then `make readme` -->\n'

if __name__ == '__main__':
    text, readme = render(), ROOT / 'README.md'
    if '--check' in sys.argv:
        ok = readme.exists() and readme.read_text(encoding='utf-8') == text
        if not ok: print('README.md is out of date with nbs/index.ipynb: run `make readme`', file=sys.stderr)
        sys.exit(0 if ok else 1)
    readme.write_text(text, encoding='utf-8')
    print(f'wrote {readme}')
