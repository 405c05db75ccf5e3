#!/usr/bin/env python
"""Build the documentation site `_docs/` from the notebooks in `nbs/`.

    python tools/build_docs.py                 # Quarto installed: nbdev_docs;  otherwise: the offline builder
    python tools/build_docs.py --offline       # always the offline builder (no Quarto needed)
    python tools/build_docs.py --execute       # offline, after running every notebook to fill in its outputs
    python -m http.server -d _docs             # then browse http://localhost:8000 (or open _docs/index.html)

Both builds start from nbdev 2.4's own notebook processing (`nbdev.processors.FilterDefaults`, the processors
`nbdev_docs` runs, via nbdev's `serve_drv`): `#| hide`, `#| default_exp` and `#| exporti` cells are dropped,
`show_doc` cells (written or added by nbdev after exported definitions) are executed and rendered, front
matter comes from each notebook's `# Title` / `> description` cell, backticked names link to their docs, and
saved outputs are kept. Two project changes to nbdev's stock processing, applied in both builds:
  1. `#| export` cells are shown as code (folded open under "Exported source", as nbdev shows `#| exports`)
     instead of being dropped: here the notebook is where the implementation is read.
  2. Only exported cells, `show_doc` cells, import-only cells and hidden setup cells are executed. nbdev
     also runs every visible cell that merely contains an import, which in these notebooks means running
     examples out of context (NameError) or training models during a docs build.
Notebooks are processed by two long-lived worker interpreters (torch imported once per worker), each notebook with
its own nbdev processor and kernel namespace; one that fails or hangs is reported by name and the next notebook
gets a fresh interpreter, as does every notebook with --execute.
Processed notebooks are cached in `--proc` (default `_proc/`) and redone when their notebook changes.

* With Quarto: nbdev's `nbdev_docs` renders `_proc/` with `_quarto.yml` and moves the site to `_docs/`.
  nbdev 2.4 reads `nbs/_quarto.yml`, a symlink to the top-level `_quarto.yml` (re-created here if missing,
  copied where symlinks are unsupported); settings.ini `custom_quarto_yml`/`custom_sidebar` keep nbdev from
  rewriting it or writing a sidebar.yml, so the top-level file is the single source of the site's settings.
  README.md is left alone unless `--readme` (nbdev_docs would re-render it from index.ipynb).
* Without Quarto: the processed notebooks are rendered to HTML by the small renderer below (markdown-it-py,
  Pygments): navbar, repo link and sidebar read from `_quarto.yml` (`website.title`, `navbar`, `repo-url`,
  `sidebar.contents` with its section globs; notebooks no glob covers go under "Other", with a warning), the
  index page from `index.ipynb`, a table of contents per page, Quarto cell options (`echo`, `output`,
  `include`, `output: asis`, `code-fold`), output images written next to each page, links to notebooks
  rewritten to their pages, links into the published site made relative, referenced local files copied.
  Maths stays TeX for MathJax (loaded from its CDN only on pages with maths; offline the TeX shows as text).

Trade-off: like nbdev_docs, the default build does not run the notebooks, so a cell's output appears only if
it was saved in the notebook. `--execute` first runs each notebook (cells flagged with settings.ini
`tst_flags` skipped, IN_TEST set, as under the tests) so every output and figure is fresh, at about the cost
of the notebook tests.
"""
from __future__ import annotations
import argparse, base64, fnmatch, html, json, os, queue, re, shutil, subprocess, sys, threading, time, warnings
from pathlib import Path
from urllib.parse import unquote, urlsplit

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path: sys.path.insert(0, str(REPO))   # the package, importable as under nbdev_test
QUARTO_YML = REPO / '_quarto.yml'

# ---------------------------------------------------------------------------------------------------------
# nbdev processing (shared by both builds)

def ensure_nbs_quarto_yml(nbs: Path, src: Path = QUARTO_YML) -> Path:
    "Make `nbs/_quarto.yml` (what nbdev 2.4 reads) the top-level `_quarto.yml`: a symlink, or a copy."
    dst = nbs / '_quarto.yml'
    if not src.exists(): raise FileNotFoundError(f"site configuration not found: {src}")
    rel = os.path.relpath(src, nbs)
    if dst.is_symlink() and os.readlink(dst) == rel: return dst
    if dst.exists() and not dst.is_symlink() and dst.read_bytes() == src.read_bytes(): return dst
    if dst.exists() or dst.is_symlink(): dst.unlink()
    try: dst.symlink_to(rel)
    except OSError: shutil.copy2(src, dst)
    return dst


def show_exports(cell):
    "nbdev processor: show `#| export` cells as code (treat them as nbdev's `#| exports`)."
    d = getattr(cell, 'directives_', None)
    if d and 'export' in d and 'hide' not in d: d['exports'] = d.pop('export')


def _eval_kind(cell):
    "Which cells doc processing runs: 'export' (exported code), 'showdoc', 'import' (imports only), else None."
    import ast
    from nbdev import processors as P
    if P.cell_lang(cell) != 'python' or cell.cell_type != 'code' or not cell.source: return None
    d = cell.directives_ or {}
    if (d.get('eval:') or [''])[0].lower() == 'false': return None
    if d.keys() & {'export', 'exports', 'exporti', 'exec_doc'}: return 'export'
    trees = cell.parsed_()
    if not trees: return None
    if P._show_docs(trees): return 'showdoc'
    imports = [isinstance(t, (ast.Import, ast.ImportFrom)) for t in trees]
    if all(imports) or ('hide' in d and any(imports)): return 'import'   # imports, or a hidden setup cell
    return None


def _lean_exec_show_docs():
    from nbdev import processors as P
    class exec_show_docs(P.exec_show_docs):
        """nbdev's `exec_show_docs`, narrowed: runs exported cells, `show_doc` cells, import-only cells and
        hidden (`#| hide`) setup cells with imports. nbdev also runs every visible cell that *contains* an import
        (warning "Found cells containing imports and other code"); such cells usually need earlier, unexecuted
        cells (NameError) or do real work (training), so here they keep their saved outputs instead.
        A failing exported cell stops the build (a real bug); a failing import-only or show_doc cell is
        reported and left without output."""
        def __call__(self, cell):
            if not self.nb.has_docs_ or not hasattr(self, 'k'): return
            fm = getattr(self.nb, 'frontmatter_', {})
            if P.str2bool(fm.get('skip_showdoc', False)): return
            kind = _eval_kind(cell)
            if not kind: return
            self.k.cell(cell)
            if self.k.exc is None: return
            exc, title = self.k.exc, fm.get('title', '')
            if kind == 'export':
                raise Exception(f"Error{' in notebook: '+title if title else ''} in cell {cell.idx_} :\n{cell.source}") from exc
            warnings.warn(f"{kind} cell {cell.idx_} failed during doc processing, shown without output: {exc!r}\n"
                          f"{cell.source.splitlines()[0] if cell.source else ''}")
            cell.outputs = []
    return exec_show_docs


def use_project_filters():
    "In this process, change nbdev's `FilterDefaults`: add `show_exports`, narrow `exec_show_docs` (see above)."
    from nbdev import processors
    fd = processors.FilterDefaults
    if getattr(fd, '_ptycho_docs', False): return
    stock, lean = fd.base_procs, _lean_exec_show_docs()
    def base_procs(self):
        procs = [lean if p is processors.exec_show_docs else p for p in stock(self)]
        i = next((i for i, p in enumerate(procs) if getattr(p, '__name__', '') == 'rm_export'), len(procs))
        return procs[:i] + [show_exports] + procs[i:]
    fd.base_procs, fd._ptycho_docs = base_procs, True


def _tst_flags():
    from nbdev.config import get_config
    f = get_config().get('tst_flags', '') or ''
    return f.split() if isinstance(f, str) else list(f)


def _execute_nb(src: Path, dst: Path):
    "Run a whole notebook (skipping `tst_flags` cells) and save it with its outputs to `dst`."
    from execnb.nbio import read_nb, write_nb
    from execnb.shell import CaptureShell
    from nbdev.process import NBProcessor
    skip = set(_tst_flags())
    nb = read_nb(src)
    flagged = set()
    for i, c in enumerate(NBProcessor(nb=read_nb(src)).nb.cells):   # a copy: directives parsed, not removed
        if c.cell_type == 'code' and skip & set(getattr(c, 'directives_', {}) or {}): flagged.add(i)
    sh = CaptureShell(path=src.parent)
    sh.run_all(nb, exc_stop=True, preproc=lambda c: c.idx_ in flagged)
    if sh.exc: raise RuntimeError(f"{src.name}: cell {sh._cell_idx} failed while executing for --execute") from sh.exc
    write_nb(nb, dst)


def _clear(path: Path):
    "Delete a build folder, refusing anything that looks like a source tree (a typo in --out/--proc)."
    path = Path(path).resolve()
    if not path.exists(): return
    bad = (path == Path(path.anchor) or path == Path.home() or path in REPO.parents or path == REPO
           or path == REPO / 'nbs' or (path / '.git').exists() or (path / 'settings.ini').exists()
           or any(path.glob('*.py')))
    if bad: raise SystemExit(f"build_docs: refusing to delete {path} (not a build folder); pick another --out/--proc")
    shutil.rmtree(path)


def _proc_one(job):
    "Worker (a fresh process per notebook): nbdev's doc processing of one notebook. Returns (seconds, warnings)."
    src, dst, execute = job
    import nbdev.serve_drv
    from nbdev.processors import FilterDefaults
    use_project_filters()
    t0 = time.perf_counter()
    with warnings.catch_warnings(record=True) as ws:
        warnings.simplefilter('always')
        if execute:
            os.environ['IN_TEST'] = '1'
            try: _execute_nb(src, dst)
            finally: os.environ.pop('IN_TEST', None)
            src = dst
        try: nbdev.serve_drv.main((src, dst, FilterDefaults))
        except Exception as e:
            cause = f"\n  caused by: {e.__cause__!r}" if e.__cause__ else ''
            raise RuntimeError(f"{e}{cause}") from None
    msgs = [' | '.join(str(w.message).strip().splitlines()[:2]) for w in ws if not issubclass(w.category, DeprecationWarning)]
    return time.perf_counter() - t0, msgs


def _stamp(execute: bool) -> str:
    import hashlib, nbdev
    from nbdev.config import get_config
    import inspect   # the cache depends on the processing code below, not on the renderer
    code = ''.join(inspect.getsource(f) for f in (show_exports, _eval_kind, _lean_exec_show_docs, use_project_filters,
                                                   _execute_nb, _proc_one))
    h = hashlib.sha1(code.encode() + Path(get_config().config_file).read_bytes())
    h.update(f"{nbdev.__version__} execute={execute}".encode())
    return h.hexdigest()


class _Worker:
    """A long-lived interpreter (`--_proc-worker`, cwd nbs/) that processes one notebook per request, so torch and
    the package are imported once per worker, not once per notebook. Each notebook still gets its own nbdev
    processor and kernel namespace; a notebook that fails, hangs past `timeout` or crashes the interpreter is
    reported by name and the next one gets a fresh interpreter, as does every notebook run with --execute."""
    MARK = '@@build_docs_result@@'
    def __init__(self, nbs: Path): self.nbs, self.p, self.q = nbs, None, None
    def _start(self):
        self.p = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), '--_proc-worker'], cwd=self.nbs, text=True,
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, bufsize=1)
        self.q = queue.Queue()
        def pump(p=self.p, q=self.q):
            for line in p.stdout: q.put(line)
            q.put(None)
        threading.Thread(target=pump, daemon=True).start()
        return self._answer(120.0, 'starting')    # {'ready': True} once nbdev is imported: a notebook's timeout excludes start-up
    def run(self, src: Path, dst: Path, execute: bool, timeout: float) -> dict:
        if self.p is None or self.p.poll() is not None:
            started = self._start()
            if 'error' in started: return started
        self.p.stdin.write(json.dumps([str(src), str(dst), bool(execute)]) + '\n'); self.p.stdin.flush()
        res = self._answer(timeout, 'processing')
        if 'error' in res or execute: self.stop()   # a failed or executed notebook: the next one gets a fresh interpreter
        return res
    def _answer(self, timeout: float, doing: str) -> dict:
        "The worker's next marked JSON line (its other output kept for the error message)."
        log, deadline = [], time.monotonic() + timeout
        while True:
            try: line = self.q.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty: self.stop(kill=True); return {'error': f"timed out after {timeout:g}s ({doing})"}
            if line is None:
                self.stop(); return {'error': ''.join(log).strip()[-2000:] or 'the worker interpreter exited'}
            if line.startswith(self.MARK): return json.loads(line[len(self.MARK):])
            log.append(line)
    def stop(self, kill: bool = False):
        "End the interpreter: at once (`kill`, a hung one), else by closing its input (it ends its loop)."
        if self.p is not None:
            if self.p.poll() is None:
                try:
                    if kill: raise subprocess.TimeoutExpired('worker', 0)
                    self.p.stdin.close(); self.p.wait(timeout=10)
                except (OSError, subprocess.TimeoutExpired): self.p.kill(); self.p.wait()
            self.p = None


def process_notebooks(nbs: Path, proc: Path, execute: bool = False, force: bool = False, quiet: bool = False,
                      n_workers: int | None = None, timeout: int = 600, keep_going: bool = False, **_) -> list[str]:
    """nbdev's `proc_nbs` (same file walk, same processors, same mtime cache) into `proc`, by `n_workers`
    long-lived `_Worker` interpreters (cwd = nbs/): each notebook with its own processor and kernel namespace, a
    crash or hang reported against its notebook (and its worker replaced). Returns the failures (`keep_going`),
    otherwise exits on the first report of failures."""
    from nbdev.doclinks import nbglob
    from nbdev.serve import _proc_file
    nbs, proc = Path(nbs).resolve(), Path(proc).resolve()
    stamp = proc / '.build_docs_stamp'
    if force or not stamp.exists() or stamp.read_text() != _stamp(execute): _clear(proc)
    proc.mkdir(parents=True, exist_ok=True)
    files = [Path(f) for f in nbglob(nbs, func=Path, file_glob='', file_re='')]
    for extra in ('_quarto.yml', '_brand.yml'):
        if (nbs / extra).exists(): files.append(nbs / extra)
    # forget processed notebooks whose source is gone
    wanted = {(proc / f.relative_to(nbs)) for f in files}
    for old in proc.rglob('*.ipynb'):
        if old not in wanted: old.unlink()
    jobs = [j for j in (_proc_file(f, proc, nbs) for f in sorted(files)) if j]   # copies the other files
    jobs = [(src, dst, execute) for src, dst, _ in jobs if src.suffix == '.ipynb']
    n = n_workers or min(2, os.cpu_count() or 1)
    failed = []
    local, workers = threading.local(), []
    def run(job):
        src, dst, ex = job
        if getattr(local, 'worker', None) is None: local.worker = _Worker(nbs); workers.append(local.worker)
        t0 = time.perf_counter()
        res = local.worker.run(src, dst, ex, timeout)
        if 'error' in res or 'seconds' not in res:
            return job, None, [], res.get('error') or 'no result', time.perf_counter() - t0
        return job, res['seconds'], res['warnings'], None, time.perf_counter() - t0
    from concurrent.futures import ThreadPoolExecutor
    try:
        with ThreadPoolExecutor(max(1, min(n, len(jobs)))) as ex:   # n worker interpreters, one per thread
            for (src, dst, _), secs, msgs, err, wall in ex.map(run, jobs):
                name = src.relative_to(nbs)
                if err:
                    failed.append(f"{name}: {err}")
                    if dst.exists(): dst.unlink()
                    continue
                if not quiet:
                    print(f"  processed {name} in {wall:.1f}s" + (f" ({len(msgs)} warnings)" if msgs else ''), flush=True)
                    for m in msgs: print(f"    {m}")
    finally:
        for w in workers: w.stop()
    if failed:
        msg = "build_docs: processing failed for\n  " + "\n  ".join(failed)
        if not keep_going: raise SystemExit(msg)
        print(msg + "\nbuild_docs: --keep-going: building the site without them", file=sys.stderr)
    stamp.write_text(_stamp(execute))
    proc.touch()
    return failed

# ---------------------------------------------------------------------------------------------------------
# Offline renderer

def _nb_html_name(rel: Path) -> Path:
    "The page a notebook becomes (nbdev's rule: drop the numeric prefix, lower case, .html)."
    return rel.with_name(re.sub(r'^\d+[a-zA-Z0-9]*_', '', rel.name.lower())).with_suffix('.html')


def _slug(s: str) -> str:
    s = re.sub(r'<[^>]+>', '', html.unescape(s)).strip().lower()
    return re.sub(r'[^\w.\-]', '', re.sub(r'\s+', '-', s)) or 'section'


def _highlight(code: str, lang: str = 'python') -> str:
    from pygments import highlight
    from pygments.formatters import HtmlFormatter
    from pygments.lexers import get_lexer_by_name, TextLexer
    try: lexer = get_lexer_by_name((lang or 'text').strip().split()[0])
    except Exception: lexer = TextLexer()
    return highlight(code, lexer, HtmlFormatter(nowrap=True))


def _math(content: str, opts: dict) -> str:
    tex = html.escape(content)
    return (f'<div class="math display">\\[{tex}\\]</div>' if opts.get('display_mode')
            else f'<span class="math inline">\\({tex}\\)</span>')


def _markdown():
    from markdown_it import MarkdownIt
    from mdit_py_plugins.anchors import anchors_plugin
    from mdit_py_plugins.attrs import attrs_plugin
    from mdit_py_plugins.dollarmath import dollarmath_plugin
    def hl(code, lang, attrs):
        return f'<pre class="sourceCode {html.escape(lang or "")}"><code>{_highlight(code, lang)}</code></pre>'
    md = MarkdownIt('commonmark', {'html': True, 'highlight': hl}).enable(['table', 'strikethrough'])
    md.use(dollarmath_plugin, allow_space=True, allow_digits=False, double_inline=True, renderer=_math)
    md.use(anchors_plugin, min_level=1, max_level=4, slug_func=_slug)
    md.use(attrs_plugin)                # pandoc-style {target="_blank" ...} after links (show_doc's source link)
    return md


_re_fdiv_open = re.compile(r'^:::+\s*\{([^}]*)\}\s*$')
_re_fdiv_close = re.compile(r'^:::+\s*$')

def _fenced_divs(src: str) -> str:
    "Quarto/pandoc fenced divs (`::: {.callout-note}` ... `:::`) -> html divs around markdown."
    out, in_fence = [], False
    for line in src.splitlines():
        if line.lstrip().startswith('```'): in_fence = not in_fence
        m = None if in_fence else _re_fdiv_open.match(line)
        if m:
            classes = ' '.join(c[1:] for c in m.group(1).split() if c.startswith('.'))
            title = re.search(r'title="([^"]*)"', m.group(1))
            out += ['', f'<div class="{html.escape(classes)}">']
            if title: out += [f'<div class="callout-title">{html.escape(title.group(1))}</div>']
            out += ['']
        elif not in_fence and _re_fdiv_close.match(line): out += ['', '</div>', '']
        else: out.append(line)
    return '\n'.join(out)


_re_ansi = re.compile(r'\x1B(?:[@-Z\\-_]|\[[0-?]*[ -/]*[@-~])')
_re_opt = re.compile(r'^\s*#\|\s*([\w-]+)\s*:\s*(.*?)\s*$')

def _cell_options(source: str):
    "Split Quarto cell options (`#| key: value` lines at the top) from the code."
    import yaml
    lines, opts = source.splitlines(), {}
    while lines and _re_opt.match(lines[0]):
        k, v = _re_opt.match(lines[0]).groups()
        try: opts[k] = yaml.safe_load(v) if v else True
        except Exception: opts[k] = v
        lines.pop(0)
    return opts, '\n'.join(lines).strip('\n')


def _text(x) -> str: return ''.join(x) if isinstance(x, list) else (x or '')


class Page:
    "One processed notebook to render."
    def __init__(self, proc_nb: Path, proc: Path):
        import yaml
        self.src, self.rel = proc_nb, proc_nb.relative_to(proc)
        self.nb = json.loads(proc_nb.read_text(encoding='utf-8'))
        self.fm, cells = {}, self.nb.get('cells', [])
        if cells and cells[0]['cell_type'] == 'raw' and _text(cells[0]['source']).strip().startswith('---'):
            body = _text(cells.pop(0)['source']).strip().strip('-')
            self.fm = yaml.safe_load(body) or {}
        self.cells = cells
        self.out_rel = self.rel.with_name(self.fm.get('output-file') or _nb_html_name(self.rel).name)
        self.title = str(self.fm.get('title') or self.rel.stem)
        self.description = self.fm.get('description') or ''


class SiteRenderer:
    def __init__(self, proc: Path, out: Path, site: dict):
        self.proc, self.out, self.site = proc, out, site
        self.md = _markdown()
        web = site.get('website', {}) or {}
        self.web = web
        self.title = web.get('title') or 'Documentation'
        self.site_url = (web.get('site-url') or '').rstrip('/')
        self.repo_url = web.get('repo-url') or ''
        pages = sorted(proc.rglob('*.ipynb'))
        pages = [p for p in pages if not any(s.startswith(('_', '.')) for s in p.relative_to(proc).parts)]
        self.pages = [Page(p, proc) for p in pages]
        self.by_nb = {p.rel.as_posix(): p for p in self.pages}
        self.warnings: list[str] = []
        self.copied: set[Path] = set()

    # -- navigation ------------------------------------------------------------------------------------
    def _match(self, pattern: str) -> list[Page]:
        pat = pattern.lstrip('/')
        rec = not pattern.startswith('/') and '/' not in pat
        res = [p for k, p in self.by_nb.items()
               if fnmatch.fnmatch(k, pat) or (rec and fnmatch.fnmatch(p.rel.name, pat))]
        return sorted(res, key=lambda p: p.rel.as_posix())

    def _items(self, contents) -> list[dict]:
        if contents is None: return []
        if isinstance(contents, (str, dict)): contents = [contents]
        items = []
        for c in contents:
            if isinstance(c, str):
                if any(ch in c for ch in '*?['): items += [{'page': p} for p in self._match(c)]
                elif c in self.by_nb: items.append({'page': self.by_nb[c]})
                elif c.endswith(('.ipynb', '.qmd', '.md')): self.warnings.append(f"sidebar entry {c!r}: no such notebook")
                else: items.append({'text': c, 'href': c})
            elif isinstance(c, dict) and 'section' in c:
                sub = self._items(c.get('contents'))
                href = c.get('href')
                if sub or href: items.append({'section': str(c['section']), 'items': sub,
                                              'page': self.by_nb.get(href) if href else None})
            elif isinstance(c, dict) and 'auto' in c: items += self._items(c['auto'])
            elif isinstance(c, dict) and 'href' in c:
                h = str(c['href'])
                it = {'page': self.by_nb[h]} if h in self.by_nb else {'href': h}
                if c.get('text'): it['text'] = str(c['text'])
                items.append(it)
        return items

    def sidebar(self) -> list[dict]:
        items = self._items(((self.web.get('sidebar') or {}).get('contents')) or [])
        seen = set()
        def walk(its):
            for it in its:
                if it.get('page'): seen.add(it['page'].rel.as_posix())
                walk(it.get('items', []))
        walk(items)
        rest = [p for k, p in self.by_nb.items() if k not in seen]
        if rest:
            self.warnings.append("not in the _quarto.yml sidebar (listed under 'Other'): "
                                 + ', '.join(p.rel.as_posix() for p in rest))
            items.append({'section': 'Other', 'items': [{'page': p} for p in rest]})
        if not items: items = [{'page': p} for p in self.pages]
        return items

    # -- links -------------------------------------------------------------------------------------------
    def _rel(self, page: Page, target: Path) -> str:
        return Path(os.path.relpath(target, page.out_rel.parent if str(page.out_rel.parent) != '.' else '.')).as_posix()

    def _fix_url(self, page: Page, url: str) -> str:
        u = html.unescape(url)
        if self.site_url and u.startswith(self.site_url + '/'):
            rest = u[len(self.site_url) + 1:]
            path, _, frag = rest.partition('#')
            return html.escape(self._rel(page, Path(path or 'index.html')) + (('#' + frag) if frag else ''))
        sp = urlsplit(u)
        if sp.scheme or sp.netloc or u.startswith(('#', '/', 'mailto:', 'data:')) or not sp.path: return url
        target = (page.rel.parent / unquote(sp.path))
        norm = Path(os.path.normpath(target)).as_posix()
        frag = ('#' + sp.fragment) if sp.fragment else ''
        if norm in self.by_nb:
            return html.escape(self._rel(page, self.by_nb[norm].out_rel) + frag)
        if any(p.out_rel.as_posix() == norm for p in self.pages): return url
        src = self.proc / norm
        if src.is_file() and src.suffix != '.ipynb':
            dst = self.out / norm
            if norm not in self.copied:
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, dst)
                self.copied.add(norm)
            return url
        if not (self.out / norm).exists():
            self.warnings.append(f"{page.rel}: link to {u!r} points at nothing")
        return url

    def _fix_links(self, page: Page, s: str) -> str:
        return re.sub(r'(\s(?:href|src)=")([^"]*)(")', lambda m: m.group(1) + self._fix_url(page, m.group(2)) + m.group(3), s)

    # -- cells -------------------------------------------------------------------------------------------
    def _md(self, src: str) -> str: return self.md.render(_fenced_divs(src))
    def _inline(self, s: str) -> str: return self.md.renderInline(str(s))

    def _attachments(self, page: Page, cell: dict, i: int, src: str) -> str:
        for name, data in (cell.get('attachments') or {}).items():
            for mime, b64 in data.items():
                ext = mime.split('/')[-1].split('+')[0]
                rel = Path(f'{page.out_rel.stem}_files') / 'attachments' / f'cell-{i}-{Path(name).stem}.{ext}'
                (self.out / page.out_rel.parent / rel).parent.mkdir(parents=True, exist_ok=True)
                (self.out / page.out_rel.parent / rel).write_bytes(base64.b64decode(_text(b64)))
                src = src.replace(f'attachment:{name}', rel.as_posix())
                break
        return src

    def _output(self, page: Page, o: dict, i: int, j: int, asis: bool) -> str:
        ot = o.get('output_type')
        if ot == 'stream':
            txt = _re_ansi.sub('', _text(o.get('text')))
            if not txt.strip(): return ''
            return f'<div class="cell-output cell-output-{o.get("name", "stdout")}"><pre><code>{html.escape(txt)}</code></pre></div>'
        if ot == 'error':
            tb = _re_ansi.sub('', '\n'.join(o.get('traceback') or [f"{o.get('ename')}: {o.get('evalue')}"]))
            return f'<div class="cell-output cell-output-error"><pre><code>{html.escape(tb)}</code></pre></div>'
        data = o.get('data') or {}
        if asis and 'text/markdown' in data:
            return f'<div class="cell-output-asis">{self._md(_text(data["text/markdown"]))}</div>'
        for mime in ('image/png', 'image/jpeg', 'image/gif'):
            if mime in data:
                ext = {'image/png': 'png', 'image/jpeg': 'jpg', 'image/gif': 'gif'}[mime]
                rel = Path(f'{page.out_rel.stem}_files') / 'figure-html' / f'cell-{i}-output-{j}.{ext}'
                dst = self.out / page.out_rel.parent / rel
                dst.parent.mkdir(parents=True, exist_ok=True)
                dst.write_bytes(base64.b64decode(_text(data[mime])))
                alt = html.escape(_text(data.get('text/plain', '')).strip()[:200])
                return f'<div class="cell-output cell-output-display"><img src="{rel.as_posix()}" alt="{alt}"></div>'
        if 'image/svg+xml' in data:
            return f'<div class="cell-output cell-output-display">{_text(data["image/svg+xml"])}</div>'
        if 'text/html' in data:
            return f'<div class="cell-output cell-output-display">{_text(data["text/html"])}</div>'
        if 'text/markdown' in data:
            return f'<div class="cell-output cell-output-display">{self._md(_text(data["text/markdown"]))}</div>'
        if 'text/latex' in data:
            return f'<div class="cell-output cell-output-display">{html.escape(_text(data["text/latex"]))}</div>'
        if 'text/plain' in data:
            return f'<div class="cell-output cell-output-display"><pre><code>{html.escape(_re_ansi.sub("", _text(data["text/plain"])))}</code></pre></div>'
        return ''

    def _cell(self, page: Page, cell: dict, i: int, lang: str) -> str:
        ct, src = cell.get('cell_type'), _text(cell.get('source'))
        if ct == 'markdown':
            src = self._attachments(page, cell, i, src)
            if not src.strip() or src.strip().startswith('<!-- WARNING: THIS FILE WAS AUTOGENERATED'): return ''
            return f'<div class="cell-markdown">{self._md(src)}</div>'
        if ct == 'raw':
            fmt = (cell.get('metadata') or {}).get('format') or (cell.get('metadata') or {}).get('raw_mimetype') or ''
            return src if fmt in ('text/html', 'html') else ''
        if ct != 'code': return ''
        opts, code = _cell_options(src)
        if opts.get('include') is False: return ''
        parts = []
        if opts.get('echo', True) is not False and code.strip():
            block = f'<pre class="sourceCode {html.escape(lang)}"><code>{_highlight(code, lang)}</code></pre>'
            fold = opts.get('code-fold')
            if fold in (True, 'true', 'show'):
                summary = html.escape(str(opts.get('code-summary') or 'Code'))
                block = f'<details class="code-fold"{" open" if fold == "show" else ""}><summary>{summary}</summary>{block}</details>'
            parts.append(block)
        if opts.get('output', True) is not False:
            asis = opts.get('output') == 'asis'
            parts += [self._output(page, o, i, j, asis) for j, o in enumerate(cell.get('outputs') or [])]
        parts = [p for p in parts if p]
        return f'<div class="cell">{"".join(parts)}</div>' if parts else ''

    # -- pages -------------------------------------------------------------------------------------------
    def _sidebar_html(self, page: Page, items) -> str:
        def li(it):
            if 'section' in it:
                head = html.escape(it['section'])
                if it.get('page'): head = f'<a href="{self._rel(page, it["page"].out_rel)}">{head}</a>'
                active = any(x.get('page') is page for x in it['items']) or it.get('page') is page
                return (f'<li class="sidebar-section{" active" if active else ""}"><div class="sidebar-section-title">{head}</div>'
                        f'<ul>{"".join(li(x) for x in it["items"])}</ul></li>')
            if it.get('page'):
                p = it['page']
                cls = ' class="active" aria-current="page"' if p is page else ''
                return f'<li><a{cls} href="{self._rel(page, p.out_rel)}">{self._inline(it.get("text") or p.title)}</a></li>'
            return f'<li><a href="{html.escape(self._fix_url(page, it["href"]))}">{html.escape(it.get("text") or it["href"])}</a></li>'
        return f'<nav id="sidebar" class="sidebar" aria-label="Site pages"><ul>{"".join(li(x) for x in items)}</ul></nav>'

    def _navbar_html(self, page: Page) -> str:
        nav = self.web.get('navbar') or {}
        def link(it):
            if isinstance(it, str): it = {'href': it}
            href, text = str(it.get('href', '')), it.get('text')
            p = self.by_nb.get(href)
            if p: url, text = self._rel(page, p.out_rel), text or p.title
            else: url, text = self._fix_url(page, href), text or it.get('icon') or href
            icon = '<span class="icon-github" aria-hidden="true"></span>' if it.get('icon') == 'github' else ''
            return f'<a class="nav-link" href="{url}">{icon}{html.escape(str(text))}</a>'
        left = ''.join(link(x) for x in nav.get('left') or [])
        right = ''.join(link(x) for x in nav.get('right') or [])
        if not right and self.repo_url: right = link({'icon': 'github', 'text': 'Source', 'href': self.repo_url})
        home = self.by_nb.get('index.ipynb') or (self.pages[0] if self.pages else page)
        home = self._rel(page, home.out_rel)
        return (f'<header class="navbar"><a class="navbar-title" href="{home}">{html.escape(self.title)}</a>'
                f'<div class="navbar-left">{left}</div><div class="navbar-right">{right}</div></header>')

    def render_page(self, page: Page, sidebar) -> str:
        lang = ((page.nb.get('metadata') or {}).get('kernelspec') or {}).get('language') or 'python'
        body = ''.join(self._cell(page, c, i, lang) for i, c in enumerate(page.cells))
        body = self._fix_links(page, body)
        heads = re.findall(r'<h([23]) id="([^"]+)"[^>]*>(.*?)</h\1>', body, flags=re.S)
        toc = ''
        if (self.site.get('format', {}).get('html', {}) or {}).get('toc', True) and heads:
            toc = ('<nav id="toc" class="toc" aria-label="On this page"><div class="toc-title">On this page</div><ul>'
                   + ''.join(f'<li class="toc-h{lv}"><a href="#{hid}">{re.sub(r"<[^>]+>", "", txt)}</a></li>' for lv, hid, txt in heads)
                   + '</ul></nav>')
        root = self._rel(page, Path('.')) if str(page.out_rel.parent) != '.' else '.'
        mathjax = ('<script>window.MathJax={tex:{inlineMath:[["\\\\(","\\\\)"]]}};</script>'
                   '<script async src="https://cdn.jsdelivr.net/npm/mathjax@3/es5/tex-mml-chtml.js"></script>'
                   if 'class="math ' in body else '')
        desc = f'<p class="description">{self._inline(page.description)}</p>' if page.description else ''
        src_link = ''
        if self.repo_url:
            branch = self.web.get('repo-branch') or 'main'
            nb_src = Path(os.path.relpath(self.nbs / page.rel, REPO)).as_posix() if getattr(self, 'nbs', None) else page.rel.as_posix()
            src_link = f'<p class="source-link"><a href="{html.escape(self.repo_url)}/blob/{branch}/{html.escape(nb_src)}">Source notebook: {html.escape(page.rel.as_posix())}</a></p>'
        ptitle = page.title if page.title == self.title else f'{page.title} – {self.title}'
        return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="generator" content="tools/build_docs.py (offline nbdev docs)">
<title>{html.escape(ptitle.replace('`', ''))}</title>
{f'<meta name="description" content="{html.escape(str(page.description))}">' if page.description else ''}
<link rel="stylesheet" href="{root}/pygments.css"><link rel="stylesheet" href="{root}/site.css">
<link rel="stylesheet" href="{root}/styles.css">{mathjax}
</head><body>
{self._navbar_html(page)}
<div class="layout">{self._sidebar_html(page, sidebar)}
<main id="content"><header class="page-header"><h1 class="title">{self._inline(page.title)}</h1>{desc}</header>
{body}
{src_link}
</main>{toc}</div>
</body></html>
"""

    def build(self):
        _clear(self.out)
        self.out.mkdir(parents=True)
        sidebar = self.sidebar()
        for page in self.pages:
            dst = self.out / page.out_rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.write_text(self.render_page(page, sidebar), encoding='utf-8')
        from pygments.formatters import HtmlFormatter
        (self.out / 'pygments.css').write_text(HtmlFormatter(style='friendly').get_style_defs('.sourceCode code'))
        (self.out / 'site.css').write_text(SITE_CSS)
        styles = self.proc / 'styles.css'
        (self.out / 'styles.css').write_text(styles.read_text() if styles.exists() else '')
        (self.out / '.nojekyll').write_text('')
        return [self.out / p.out_rel for p in self.pages]


SITE_CSS = """
:root { --accent: #2780e3; --border: #dee2e6; --muted: #6c757d; --bg-code: #f8f9fa; }
* { box-sizing: border-box; }
body { margin: 0; font: 16px/1.55 -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; color: #212529; }
a { color: var(--accent); text-decoration: none; } a:hover { text-decoration: underline; }
.navbar { position: sticky; top: 0; z-index: 10; display: flex; align-items: center; gap: 1.5rem; padding: .6rem 1.5rem;
          background: var(--accent); color: #fff; }
.navbar a { color: #fff; } .navbar-title { font-weight: 600; font-size: 1.15rem; }
.navbar-left { display: flex; gap: 1rem; flex: 1; } .navbar-right { display: flex; gap: 1rem; }
.icon-github::before { content: "\\2387"; margin-right: .3rem; }
.layout { display: grid; grid-template-columns: 16rem minmax(0, 1fr) 14rem; gap: 2rem; max-width: 90rem; margin: 0 auto; padding: 0 1.5rem; }
.sidebar, .toc { position: sticky; top: 3.5rem; align-self: start; max-height: calc(100vh - 4rem); overflow-y: auto; padding-top: 1.5rem; font-size: .92rem; }
.sidebar ul, .toc ul { list-style: none; margin: 0; padding: 0; }
.sidebar li { margin: .15rem 0; } .sidebar li li { padding-left: .8rem; }
.sidebar a { color: #343a40; display: block; padding: .1rem .4rem; border-radius: .25rem; }
.sidebar a.active { color: var(--accent); font-weight: 600; background: #e9f2fc; }
.sidebar-section { margin-top: .7rem; } .sidebar-section-title { font-weight: 600; color: #212529; padding: .1rem .4rem; }
.toc { border-left: 1px solid var(--border); padding-left: 1rem; } .toc-title { font-weight: 600; margin-bottom: .4rem; }
.toc li.toc-h3 { padding-left: .8rem; } .toc a { color: var(--muted); }
main { padding: 1.5rem 0 4rem; min-width: 0; }
h1.title { margin: 0 0 .3rem; font-size: 2.2rem; } .page-header { margin-bottom: 1.5rem; }
h2 { margin-top: 2rem; border-bottom: 1px solid var(--border); padding-bottom: .2rem; } h3 { margin-top: 1.5rem; }
.sourceCode code, pre code { background: transparent; }
pre { background: var(--bg-code); padding: .7rem .9rem; border-radius: .3rem; overflow-x: auto; font-size: .87rem; line-height: 1.45; }
code { font-family: SFMono-Regular, Menlo, Consolas, "Liberation Mono", monospace; font-size: .9em; }
p code, li code, td code { background: var(--bg-code); padding: .05rem .25rem; border-radius: .2rem; color: #7d12ba; }
table { border-collapse: collapse; margin: 1rem 0; } th, td { border-bottom: 1px solid var(--border); padding: .3rem .7rem; text-align: left; vertical-align: top; }
img { max-width: 100%; } hr { border: 0; border-top: 1px solid var(--border); margin: 1.5rem 0; }
details.code-fold > summary { cursor: pointer; color: var(--muted); font-size: .9rem; margin-bottom: .2rem; }
.cell-output-stderr pre { background: #fff8e6; } .cell-output-error pre { background: #fdecea; }
.callout-note, .callout-tip, .callout-warning, .callout-important, .callout-caution { border-left: 4px solid var(--accent); background: #f4f8fd; padding: .5rem 1rem; margin: 1rem 0; }
.callout-warning, .callout-caution { border-color: #ff7518; background: #fff6ef; } .callout-important { border-color: #dc3545; }
.callout-title { font-weight: 600; } .math.display { overflow-x: auto; margin: 1rem 0; }
.source-link { margin-top: 3rem; font-size: .85rem; color: var(--muted); }
@media (max-width: 1100px) { .layout { grid-template-columns: 14rem minmax(0, 1fr); } .toc { display: none; } }
@media (max-width: 700px) { .layout { display: block; } .sidebar { position: static; max-height: none; } }
"""


def load_site_config(path: Path = QUARTO_YML) -> dict:
    import yaml
    return yaml.safe_load(path.read_text(encoding='utf-8')) or {}


def build_offline(out: Path, proc: Path, execute: bool = False, force: bool = False, quiet: bool = False,
                  n_workers: int | None = None, keep_going: bool = False) -> dict:
    "Process the notebooks the nbdev way and render the site to `out` without Quarto."
    from nbdev.config import get_config
    t0 = time.perf_counter()
    nbs = Path(get_config().nbs_path)
    ensure_nbs_quarto_yml(nbs)
    failed = process_notebooks(nbs, proc, execute=execute, force=force, quiet=quiet, n_workers=n_workers,
                               keep_going=keep_going)
    t1 = time.perf_counter()
    r = SiteRenderer(proc, out, load_site_config())
    r.nbs = nbs
    pages = r.build()
    for w in r.warnings: print(f"build_docs: warning: {w}", file=sys.stderr)
    t2 = time.perf_counter()
    if not quiet:
        print(f"build_docs: {len(pages)} pages in {out} (processing {t1-t0:.1f}s, rendering {t2-t1:.1f}s)")
    return {'pages': pages, 'warnings': r.warnings, 'seconds': t2 - t0, 'failed': failed}


def build_with_quarto(force: bool = False, readme: bool = False):
    """nbdev's own `nbdev_docs` (Quarto render of `_proc/` into `_docs/`), with its notebook-processing step
    (`proc_nbs`) replaced by `process_notebooks`: the same nbdev processors plus `show_exports`, one process per
    notebook. nbdev_docs also re-renders README.md from index.ipynb; that step is skipped unless `readme`
    (README.md is made by `make readme`), so `make docs` never rewrites a tracked file."""
    import nbdev.quarto
    from nbdev.config import get_config
    cfg = get_config()
    ensure_nbs_quarto_yml(Path(cfg.nbs_path))
    def proc_nbs(path='', n_workers=None, **kw):
        process_notebooks(Path(path or cfg.nbs_path), cfg.config_path / '_proc', force=force)
        return cfg.config_path / '_proc'
    nbdev.quarto.proc_nbs = proc_nbs
    if not readme:
        def skip(*a, **k): return None
        skip.__wrapped__ = skip          # nbdev_docs calls nbdev_readme.__wrapped__(...)
        nbdev.quarto.nbdev_readme = nbdev.quarto.nbdev_contributing = skip
    os.chdir(REPO)
    t0 = time.perf_counter()
    nbdev.quarto.nbdev_docs.__wrapped__()
    print(f"build_docs: nbdev_docs wrote {cfg.doc_path} in {time.perf_counter()-t0:.1f}s")


def _proc_worker_main():
    "Hidden CLI used by `_Worker`: read [src, dst, execute] lines, process each notebook, answer with a marked JSON line."
    import nbdev.serve_drv, nbdev.processors   # noqa: F401 (imported before 'ready': the per-notebook timeout excludes it)
    print('\n' + _Worker.MARK + json.dumps({'ready': True}), flush=True)
    for line in sys.stdin:
        src, dst, execute = json.loads(line)
        try:
            secs, msgs = _proc_one((Path(src).resolve(), Path(dst).resolve(), execute))
            res = {'seconds': secs, 'warnings': msgs}
        except BaseException as e: res = {'error': str(e)}
        print('\n' + _Worker.MARK + json.dumps(res), flush=True)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ['--_proc-worker']: return _proc_worker_main()
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--offline', action='store_true', help='render without Quarto even where it is installed')
    ap.add_argument('--quarto', action='store_true', help='require Quarto (run nbdev_docs)')
    ap.add_argument('--execute', action='store_true', help='run every notebook first so all outputs are fresh (offline build)')
    ap.add_argument('--out', type=Path, default=None, help='output folder of the offline build (default: settings.ini doc_path)')
    ap.add_argument('--proc', type=Path, default=None, help='folder for the processed notebooks (default: _proc)')
    ap.add_argument('--force', action='store_true', help='reprocess every notebook (ignore the cache in --proc)')
    ap.add_argument('--readme', action='store_true', help='with Quarto: let nbdev_docs also rewrite README.md from index.ipynb')
    ap.add_argument('--jobs', type=int, default=None, help='notebooks processed at a time (default: 2, or 1 on one core)')
    ap.add_argument('--keep-going', action='store_true', help='offline: render the other pages when a notebook fails (exit status 1)')
    ap.add_argument('-q', '--quiet', action='store_true')
    a = ap.parse_args(argv)
    os.chdir(REPO)
    from nbdev.config import get_config
    cfg = get_config()
    have_quarto = shutil.which('quarto') is not None
    if a.quarto and not have_quarto: sys.exit("build_docs: --quarto given but Quarto is not installed (see https://quarto.org)")
    if have_quarto and not a.offline and not a.execute:
        if a.out or a.proc: print("build_docs: --out/--proc are ignored by nbdev_docs (it writes _proc/ and doc_path)", file=sys.stderr)
        print("build_docs: Quarto found, running nbdev_docs")
        return build_with_quarto(force=a.force, readme=a.readme)
    if not have_quarto and not a.offline: print("build_docs: Quarto not installed, building the site offline", flush=True)
    out = (a.out or Path(cfg.doc_path)).resolve()
    proc = (a.proc or REPO / '_proc').resolve()
    res = build_offline(out, proc, execute=a.execute, force=a.force, quiet=a.quiet, n_workers=a.jobs, keep_going=a.keep_going)
    if res['failed']: sys.exit(1)


if __name__ == '__main__': main()
