"""The documentation site: `_quarto.yml` is the single source, `tools/build_docs.py` builds the site offline
from the notebooks after nbdev's processing, and the result reads right in a real (headless) browser.

- `test_quarto_yml_*`: configuration only (instant).
- `test_processing_rules`: a two-notebook nbdev project in tmp_path, built end to end (a few seconds):
  `#| hide` dropped, `#| export` shown as code, show_doc rendered, outputs and images kept, links rewritten.
- `test_site_*`: one offline build of the real notebooks (module fixture), checked as HTML.
- `test_site_in_browser`: opens the index and a phase page in headless Chromium (`--dump-dom`, `--screenshot`);
  skipped when no Chromium/Chrome is installed (CI installs Debian's `chromium`). Marked `browser`
  (deselect with `-m "not browser"`). The screenshots go to `<build>/_docs/screenshots/`; the build folder
  is a pytest tmp folder, or `DOCS_TEST_BUILD_DIR` when set.
"""
import base64, json, os, re, shutil, subprocess, sys, tempfile, time
from html.parser import HTMLParser
from pathlib import Path
import pytest

REPO = Path(__file__).resolve().parent.parent
BUILDER = REPO / 'tools' / 'build_docs.py'
sys.path.insert(0, str(REPO / 'tools'))
import build_docs  # noqa: E402

BROWSERS = ('chromium', 'chromium-browser', 'google-chrome', 'google-chrome-stable', 'chrome')
CHROME_FLAGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
                '--disable-background-networking', '--disable-component-update', '--disable-sync',
                '--disable-dev-shm-usage', '--hide-scrollbars', '--mute-audio']


def find_browser():
    env = os.environ.get('CHROME_BIN')
    if env and shutil.which(env): return shutil.which(env)
    return next((shutil.which(b) for b in BROWSERS if shutil.which(b)), None)


# ---------------------------------------------------------------------------------------------------------
# HTML helpers (stdlib only)

class _Doc(HTMLParser):
    "Collects the title, the visible text, links per landmark (sidebar/navbar/main) and images."
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.title, self.text, self.links, self.imgs = '', [], {'sidebar': [], 'navbar': [], 'main': [], 'toc': []}, []
        self._stack, self._in_title, self._skip = [], False, 0
    def _where(self):
        for tag, attrs in reversed(self._stack):
            if attrs.get('id') in ('sidebar', 'toc'): return attrs['id']
            if tag == 'main': return 'main'
            if tag == 'header' and 'navbar' in (attrs.get('class') or ''): return 'navbar'
        return None
    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag in ('script', 'style'): self._skip += 1
        if tag == 'title': self._in_title = True
        if tag == 'a' and a.get('href') is not None:
            w = self._where()
            if w: self.links[w].append(a['href'])
        if tag == 'img': self.imgs.append(a.get('src', ''))
        if tag not in ('img', 'br', 'hr', 'meta', 'link', 'input'): self._stack.append((tag, a))
    def handle_endtag(self, tag):
        if tag in ('script', 'style'): self._skip = max(0, self._skip - 1)
        if tag == 'title': self._in_title = False
        for i in range(len(self._stack) - 1, -1, -1):
            if self._stack[i][0] == tag: del self._stack[i:]; break
    def handle_data(self, data):
        if self._in_title: self.title += data
        elif not self._skip: self.text.append(data)


def parse(s: str) -> _Doc:
    d = _Doc(); d.feed(s); d.close()
    d.plain = re.sub(r'\s+', ' ', ''.join(d.text))
    return d


def _src(cell): return ''.join(cell['source']) if isinstance(cell['source'], list) else cell['source']


def hidden_and_shown_lines(nb_path: Path):
    """Distinctive lines of the notebook's `#| hide` cells (appearing in no other cell), and lines of its
    `#| export` cells (a positive control for the same check)."""
    cells = json.loads(nb_path.read_text())['cells']
    def lines(c): return [l.strip() for l in _src(c).splitlines() if l.strip() and not l.strip().startswith('#')]
    hide = [c for c in cells if c['cell_type'] == 'code' and re.search(r'^#\|\s*hide\s*$', _src(c), re.M)]
    export = [c for c in cells if c['cell_type'] == 'code' and re.search(r'^#\|\s*export\b', _src(c), re.M)
              and c not in hide]
    others = '\n'.join(_src(c) for c in cells if c not in hide)
    hidden = [l for c in hide for l in lines(c) if l not in others and len(l) > 8]
    shown = [l for c in export for l in lines(c) if len(l) > 8]
    return hidden, shown


def _norm(s): return re.sub(r'\s+', ' ', s).strip()


def check_page(page: Path, out: Path):
    "Every relative link and image of `page` resolves to a file in the site."
    d = parse(page.read_text())
    for url in sum(d.links.values(), []) + d.imgs:
        if re.match(r'^[a-z][a-z0-9+.-]*:', url) or url.startswith(('#', '//')) or not url: continue
        target = (page.parent / url.split('#')[0].split('?')[0]).resolve()
        assert target.is_file(), f"{page.name}: link {url!r} -> {target} does not exist"
        assert out.resolve() in target.parents, f"{page.name}: link {url!r} leaves the site"
    return d


# ---------------------------------------------------------------------------------------------------------
# configuration

def test_quarto_yml_is_the_single_source():
    top, nbs_yml = REPO / '_quarto.yml', REPO / 'nbs' / '_quarto.yml'
    assert top.is_file()
    assert nbs_yml.exists(), "nbs/_quarto.yml (what nbdev 2.4 reads) is missing: run tools/build_docs.py"
    assert nbs_yml.read_bytes() == top.read_bytes(), "nbs/_quarto.yml differs from the top-level _quarto.yml"
    if nbs_yml.is_symlink(): assert os.readlink(nbs_yml) == '../_quarto.yml'
    from nbdev.config import get_config
    cfg = get_config(path=REPO)
    # nbdev 2.4 deletes nbs/_quarto.yml only when custom_quarto_yml is false (absent counts as true), and writes
    # its own nbs/sidebar.yml unless custom_sidebar is true
    assert str(cfg.get('custom_quarto_yml', 'true')).lower() in ('true', '1', 'yes', 'y', 'on')
    assert str(cfg.get('custom_sidebar', '')).lower() in ('true', '1', 'yes', 'y', 'on')


def test_quarto_yml_has_site_settings():
    site = build_docs.load_site_config()
    assert site['project']['type'] == 'website' and site['project']['output-dir'] == '_docs'
    web = site['website']
    assert web['title'] and web['repo-url'].startswith('https://github.com/')
    contents = web['sidebar']['contents']
    sections = [c['section'] for c in contents if isinstance(c, dict) and 'section' in c]
    assert len(sections) >= 5 and all(s.startswith('Phase') for s in sections), sections
    assert any(isinstance(c, dict) and c.get('href') == 'index.ipynb' for c in contents)
    for c in contents:  # Quarto 1.10 fails on a section glob that starts with '*' and matches nothing
        if isinstance(c, dict) and isinstance(c.get('contents'), str): assert not c['contents'].startswith('*')


# ---------------------------------------------------------------------------------------------------------
# processing rules, on a tiny project

_PNG = base64.b64encode(bytes.fromhex(
    '89504e470d0a1a0a0000000d4948445200000001000000010806000000'
    '1f15c4890000000d49444154789c6360f8cfc0f01f0005000201e7a1a1c90000000049454e44ae426082')).decode()


def _nb(cells):
    def mk(kind, src, outputs=None):
        c = {'cell_type': kind, 'metadata': {}, 'source': src}
        if kind == 'code': c.update(execution_count=None, outputs=outputs or [])
        return c
    return {'cells': [mk(*c) for c in cells], 'metadata': {'kernelspec': {'display_name': 'Python 3',
            'language': 'python', 'name': 'python3'}}, 'nbformat': 4, 'nbformat_minor': 5}


def _tiny_project(tmp_path) -> Path:
    "A project folder with this repository's settings.ini (library folder `tinylib`); returns its nbs/."
    proj, nbs = tmp_path / 'proj', tmp_path / 'proj' / 'nbs'
    nbs.mkdir(parents=True)
    ini = (REPO / 'settings.ini').read_text()
    (proj / 'settings.ini').write_text(re.sub(r'(?m)^lib_path\s*=.*$', 'lib_path = tinylib', ini))
    (proj / 'tinylib').mkdir()
    return nbs


def test_processing_rules(tmp_path):
    nbs = _tiny_project(tmp_path)
    (nbs / 'images').mkdir()
    (nbs / 'images' / 'dot.png').write_bytes(base64.b64decode(_PNG))
    img_out = {'output_type': 'display_data', 'metadata': {}, 'data': {'image/png': _PNG, 'text/plain': ['<Figure>']}}
    txt_out = {'output_type': 'stream', 'name': 'stdout', 'text': ['saved output 12345\n']}
    (nbs / '00_alpha.ipynb').write_text(json.dumps(_nb([
        ('code', '#| default_exp alpha'),
        ('code', '#| hide\nHIDDEN_MARKER_7731 = 1\nfrom nbdev.showdoc import show_doc'),
        ('markdown', '# Alpha page\n\n> What alpha gives you.'),
        ('markdown', 'See [the beta notebook](01_beta.ipynb#beta-section) and ![a dot](images/dot.png); '
                     'maths $E = mc^2$.'),
        ('code', '#| export\ndef twice(x:int  # the number\n         )->int:\n    "Double `x`."\n    return 2*x'),
        ('code', 'print(twice(3))', [txt_out, img_out]),
        ('code', 'import os\nVISIBLE_MIXED_CELL = os.sep', []),
    ])))
    (nbs / '01_beta.ipynb').write_text(json.dumps(_nb([
        ('markdown', '# Beta `page`'), ('markdown', '## Beta section\n\nBack to [alpha](00_alpha.ipynb).')])))
    site = {'website': {'title': 'Tiny site', 'repo-url': 'https://github.com/x/y', 'site-url': 'https://x.github.io/y',
                        'sidebar': {'contents': [{'section': 'Phase 0', 'contents': '00*.ipynb'}]}},
            'format': {'html': {'toc': True}}}
    proc, out = tmp_path / '_proc', tmp_path / '_docs'
    build_docs.process_notebooks(nbs, proc, quiet=True)
    r = build_docs.SiteRenderer(proc, out, site)
    pages = r.build()
    assert sorted(p.name for p in pages) == ['alpha.html', 'beta.html']
    alpha = check_page(out / 'alpha.html', out)
    assert alpha.title.startswith('Alpha page')
    assert 'HIDDEN_MARKER_7731' not in (out / 'alpha.html').read_text()       # `#| hide` cell dropped
    assert 'default_exp' not in alpha.plain
    assert 'def twice(x:int' in _norm(alpha.plain) and 'Exported source' in alpha.plain  # `#| export` shown as code
    assert re.search(r'<h3 id="twice"', (out / 'alpha.html').read_text())               # show_doc rendered
    assert 'the number' in alpha.plain and 'Double' in alpha.plain
    assert 'saved output 12345' in alpha.plain                                         # saved outputs kept
    assert any(s.endswith('.png') and '_files/figure-html/' in s for s in alpha.imgs)   # output image written
    assert 'images/dot.png' in alpha.imgs and (out / 'images' / 'dot.png').is_file()  # referenced file copied
    assert 'beta.html#beta-section' in alpha.links['main']                            # notebook link rewritten
    assert 'VISIBLE_MIXED_CELL' in alpha.plain                                        # ordinary cells shown
    assert '\\(E = mc^2\\)' in alpha.plain
    # sidebar: the glob section, plus the notebook it does not cover (reported) under 'Other'
    assert alpha.links['sidebar'] == ['alpha.html', 'beta.html']
    assert any('01_beta.ipynb' in w for w in r.warnings)
    beta = check_page(out / 'beta.html', out)
    assert beta.title.startswith('Beta page') and 'alpha.html' in beta.links['main']


# ---------------------------------------------------------------------------------------------------------
# the real site

@pytest.fixture(scope='module')
def site(tmp_path_factory):
    base = Path(os.environ['DOCS_TEST_BUILD_DIR']) if os.environ.get('DOCS_TEST_BUILD_DIR') else tmp_path_factory.mktemp('docs')
    out, proc = base / '_docs', base / '_proc'
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, str(BUILDER), '--offline', '--out', str(out), '--proc', str(proc)],
                       cwd=REPO, capture_output=True, text=True, timeout=900)
    secs = time.perf_counter() - t0
    assert r.returncode == 0, f"build_docs failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    print(f"offline docs build: {secs:.1f}s\n{r.stdout[-1500:]}")
    return {'out': out, 'proc': proc, 'seconds': secs, 'log': r.stdout + r.stderr}


def _notebooks():
    nbs = REPO / 'nbs'
    return sorted(p for p in nbs.rglob('*.ipynb') if not any(s.startswith(('_', '.')) for s in p.relative_to(nbs).parts))


def test_site_pages_and_links(site):
    out = site['out']
    # every notebook is in a _quarto.yml sidebar section (Quarto has no "Other" fallback): add a section
    # (or widen a glob) in _quarto.yml when a new notebook prefix appears
    assert "not in the _quarto.yml sidebar" not in site['log'], site['log'][-2000:]
    nbs = _notebooks()
    pages = {build_docs._nb_html_name(p.relative_to(REPO / 'nbs')).as_posix(): p for p in nbs}
    missing = [k for k in pages if not (out / k).is_file()]
    assert not missing, f"pages not built: {missing}"
    assert (out / 'index.html').is_file()
    for rel in pages:
        d = check_page(out / rel, out)
        linked = {Path(os.path.normpath((out / rel).parent / h)).relative_to(out).as_posix() for h in d.links['sidebar']}
        assert set(pages) <= linked, f"{rel}: sidebar lacks {sorted(set(pages) - linked)}"


def test_site_hides_hidden_cells_and_shows_exports(site):
    out = site['out']
    checked = 0
    for nb in _notebooks():
        page = out / build_docs._nb_html_name(nb.relative_to(REPO / 'nbs'))
        text = _norm(parse(page.read_text()).plain)
        hidden, shown = hidden_and_shown_lines(nb)
        for line in hidden: assert _norm(line) not in text, f"{page.name}: hidden cell line shown: {line!r}"
        for line in shown[:3]: assert _norm(line) in text, f"{page.name}: exported line not shown: {line!r}"
        checked += len(hidden)
    assert checked > 0


def notebooks_with_figures():
    "Notebooks that keep at least one figure (a saved image/png output) in git."
    def has_png(nb):
        cells = json.loads(nb.read_text())['cells']
        return any('image/png' in o.get('data', {}) for c in cells if c['cell_type'] == 'code' for o in c.get('outputs', []))
    return [nb for nb in _notebooks() if has_png(nb)]


def _figures(d, page):
    "The figure images (saved cell outputs) a parsed page shows, as files; each must exist and be a PNG."
    files = [(page.parent / s).resolve() for s in d.imgs if '_files/figure-html/' in s]
    for f in files: assert f.is_file() and f.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n', f
    return files


def test_site_shows_the_figures_notebooks_keep(site):
    "Every phase page whose notebook keeps a figure shows at least one (issue 18: the site had one image in 22 pages)."
    out, figs = site['out'], notebooks_with_figures()
    assert figs, "no notebook keeps a figure output: run the figure cells and keep their output (nbdev_clean keeps it)"
    for nb in figs:
        page = out / build_docs._nb_html_name(nb.relative_to(REPO / 'nbs'))
        assert _figures(check_page(page, out), page), f"{page.name}: {nb.name} keeps a figure but the page shows none"


def test_site_index_comes_from_index_ipynb(site):
    d = parse((site['out'] / 'index.html').read_text())
    first_md = next(_src(c) for c in json.loads((REPO / 'nbs' / 'index.ipynb').read_text())['cells']
                    if c['cell_type'] == 'markdown')
    title = re.search(r'^#\s+(.+)$', first_md, re.M).group(1).strip()
    assert d.title.startswith(title)


def _chrome(browser, url, *extra, timeout=120):
    with tempfile.TemporaryDirectory(prefix='docs-chrome-') as ud:
        r = subprocess.run([browser, *CHROME_FLAGS, f'--user-data-dir={ud}', '--virtual-time-budget=3000', *extra, url],
                           capture_output=True, text=True, timeout=timeout)
    return r


@pytest.mark.browser
@pytest.mark.skipif(find_browser() is None, reason="no Chromium/Chrome installed (CI: apt-get install chromium)")
def test_site_in_browser(site):
    browser, out = find_browser(), site['out']
    shots = out / 'screenshots'
    shots.mkdir(exist_ok=True)
    site_title = build_docs.load_site_config()['website']['title']
    phase = out / 'core.html'                                          # from nbs/00_core.ipynb
    core_md = next(_src(c) for c in json.loads((REPO / 'nbs' / '00_core.ipynb').read_text())['cells']
                   if c['cell_type'] == 'markdown' and re.search(r'^#\s', _src(c), re.M))
    core_title = re.search(r'^#\s+(.+)$', core_md, re.M).group(1).strip().replace('`', '')
    hidden_index, _ = hidden_and_shown_lines(REPO / 'nbs' / 'index.ipynb')
    hidden_core, shown_core = hidden_and_shown_lines(REPO / 'nbs' / '00_core.ipynb')
    n_pages = len(_notebooks())
    for page, title, hidden in ((out / 'index.html', None, hidden_index), (phase, core_title, hidden_core)):
        r = _chrome(browser, page.as_uri(), '--dump-dom')
        assert r.returncode == 0 and '<html' in r.stdout, f"chromium failed on {page}: {r.stderr[-2000:]}"
        d = parse(r.stdout)
        assert site_title in d.title, d.title
        if title: assert d.title.startswith(title), d.title
        assert len(d.links['sidebar']) >= n_pages, f"{page.name}: {len(d.links['sidebar'])} sidebar links for {n_pages} notebooks"
        for h in d.links['sidebar']: assert (page.parent / h.split('#')[0]).is_file(), h
        text = _norm(d.plain)
        for line in hidden: assert _norm(line) not in text, f"{page.name}: hidden cell content in the DOM: {line!r}"
        if page == phase:
            assert _norm(shown_core[0]) in text
            assert 'require_torch' in text
        shot = shots / f'{page.stem}.png'
        r = _chrome(browser, page.as_uri(), f'--screenshot={shot}', '--window-size=1400,1000')
        assert r.returncode == 0 and shot.is_file(), r.stderr[-2000:]
        assert shot.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n' and shot.stat().st_size > 20_000
    for nb in notebooks_with_figures():                                 # the figures, as the browser builds the page
        page = out / build_docs._nb_html_name(nb.relative_to(REPO / 'nbs'))
        r = _chrome(browser, page.as_uri(), '--dump-dom')
        assert r.returncode == 0 and '<html' in r.stdout, f"chromium failed on {page}: {r.stderr[-2000:]}"
        assert _figures(parse(r.stdout), page), f"{page.name}: no figure in the browser's DOM"
    print(f"screenshots: {shots}")


def test_a_failing_or_hanging_notebook_is_named_and_the_rest_are_built(tmp_path):
    "The long-lived workers: a notebook that raises or hangs is reported by name; the next one gets a fresh interpreter."
    nbs = _tiny_project(tmp_path)
    def nb(name, title, body):
        (nbs / name).write_text(json.dumps(_nb([('code', f'#| default_exp {name[3:-6]}'), ('markdown', f'# {title}'),
                                                 ('code', '#| export\n' + body)])))
    nb('00_a.ipynb', 'A', 'def f(): return 1')
    nb('01_bad.ipynb', 'Bad', 'raise RuntimeError("boom 4417")')
    nb('02_hang.ipynb', 'Hang', 'import time\ntime.sleep(600)')
    nb('03_c.ipynb', 'C', 'def g(): return 2')
    proc = tmp_path / '_proc'
    failed = build_docs.process_notebooks(nbs, proc, quiet=True, keep_going=True, timeout=4, n_workers=1)
    assert len(failed) == 2, failed
    assert failed[0].startswith('01_bad.ipynb') and 'boom 4417' in failed[0]
    assert failed[1].startswith('02_hang.ipynb') and 'timed out' in failed[1]
    assert (proc / '00_a.ipynb').is_file() and (proc / '03_c.ipynb').is_file()
    assert not (proc / '01_bad.ipynb').exists() and not (proc / '02_hang.ipynb').exists()
