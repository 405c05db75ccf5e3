"""Every notebook in nbs/ is a test: one pytest item per notebook, run by nbdev's own runner.

nbdev's `test_nb` honours `tst_flags` from settings.ini (cells flagged `slow`/`notest` are skipped unless
NBDEV_FLAGS names them) and sets IN_TEST so notebooks shrink their workloads.
"""
import os
from pathlib import Path
import pytest
from nbdev.config import get_config
from nbdev.test import test_nb as _run_nb  # aliased: pytest would collect a bare `test_nb`

_cfg = get_config(path=Path(__file__).resolve().parent.parent)
_flags = _cfg.tst_flags.split() if isinstance(_cfg.tst_flags, str) else list(_cfg.tst_flags or [])
_nbs = sorted(p for p in Path(_cfg.nbs_path).rglob('*.ipynb')
              if not any(s.startswith(('_', '.')) for s in p.relative_to(_cfg.nbs_path).parts))

def test_there_are_notebooks():
    assert len(_nbs) >= 3, f"expected the phase notebooks in {_cfg.nbs_path}, found {len(_nbs)}"

@pytest.mark.parametrize('nb', _nbs, ids=[str(p.relative_to(_cfg.nbs_path)) for p in _nbs])
def test_notebook(nb, monkeypatch):
    monkeypatch.setenv('IN_TEST', '1')
    force = os.environ.get('NBDEV_FLAGS', '').split()
    skip = [f for f in _flags if f not in force]
    ok, secs = _run_nb(nb, skip_flags=skip, force_flags=force, basepath=_cfg.config_path)
    assert ok, f'{nb.name} failed (traceback on stderr above)'
