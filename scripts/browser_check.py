"""Render every page of the built site in headless Chromium and fail on problems.

usage: python scripts/browser_check.py [BUILD_HTML_DIR]   (default: _build/html)

Serves BUILD_HTML_DIR on 127.0.0.1 (a free port, Python's http.server in a
thread), opens every page that _toc.yml lists in Debian's chromium (driven by
the PyPI package playwright; its own browser downloads are never used) and
reports, one line per problem naming the page:
  - a page that does not load (HTTP status >= 400 or a navigation error);
  - a JavaScript error (uncaught exception or console error);
  - an <img> that does not display, or a local resource that returns an error;
  - a code cell whose content overflows its box horizontally.
Exits 1 when there is any problem, 0 otherwise (also 0, with a "skipped" line,
on a machine without chromium).
"""

from __future__ import annotations

import functools
import http.server
import shutil
import sys
import threading
from pathlib import Path
from urllib.parse import urlsplit

import yaml

from check_site import toc_files  # scripts/ is on sys.path when run as a script

REPO = Path(__file__).resolve().parent.parent
LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1", "[::1]"}
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
VIEWPORT = {"width": 1280, "height": 800}
NAV_TIMEOUT_MS = 60_000
INSTALL_HINT = (
    "install Debian's chromium: sudo apt-get install chromium "
    "(scripts/install.sh does it when run as root)"
)

# Elements of code cells (inputs and outputs) that must not be wider than their box.
OVERFLOW_SELECTOR = ", ".join(
    [
        "div.cell div.cell_input pre",
        "div.cell div.cell_output pre",
        "div.cell div.cell_input div.highlight",
        "div.cell div.cell_output div.highlight",
    ]
)

PAGE_PROBE_JS = """
async ([selector]) => {
  // Open collapsed parts (hidden inputs/outputs, dropdowns): a reader can open them too.
  document.querySelectorAll('details').forEach(d => { d.open = true; });
  const imgs = Array.from(document.images);
  imgs.forEach(img => { img.loading = 'eager'; });
  await Promise.race([
    Promise.all(imgs.map(img => img.complete ? null : new Promise(done => {
      img.addEventListener('load', done, {once: true});
      img.addEventListener('error', done, {once: true});
    }))),
    new Promise(done => setTimeout(done, 10000)),
  ]);
  await new Promise(done => requestAnimationFrame(() => requestAnimationFrame(done)));
  const broken = imgs
    .filter(img => !img.complete || img.naturalWidth === 0)
    .map(img => ({src: img.getAttribute('src') || '(no src)', url: img.currentSrc || img.src,
                  loading: !img.complete}));
  const overflowing = [];
  document.querySelectorAll(selector).forEach(el => {
    if (el.scrollWidth > el.clientWidth + 1) {
      const cell = el.closest('div.cell');
      const cells = Array.from(document.querySelectorAll('div.cell'));  // code cells only
      const part = el.closest('div.cell_input') ? 'input' : 'output';
      const line = (el.textContent || '').split('\\n')
        .reduce((a, b) => (b.length > a.length ? b : a), '').trim();
      overflowing.push({cell: cells.indexOf(cell), part, tag: el.tagName.toLowerCase(),
                        scroll: el.scrollWidth, client: el.clientWidth,
                        line: line.slice(0, 60)});
    }
  });
  return {broken, overflowing};
}
"""


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - the base class's name
        pass


def serve(directory: Path) -> http.server.ThreadingHTTPServer:
    handler = functools.partial(QuietHandler, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)  # port 0: a free port
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def first_line(obj) -> str:
    text = str(obj).strip()
    return text.splitlines()[0] if text else repr(obj)


def is_local(url: str) -> bool:
    parts = urlsplit(url)
    if parts.scheme in ("data", "blob", "about"):
        return True
    return parts.hostname in LOCAL_HOSTS


def check_page(context, base: str, page_name: str) -> list[str]:
    problems: list[str] = []

    def report(kind: str, detail: str) -> None:
        line = f"browser check: {page_name}: {kind}: {detail}"
        if line not in problems:
            problems.append(line)

    page = context.new_page()
    page.on("pageerror", lambda exc: report("JavaScript error", first_line(exc)))

    def on_console(msg) -> None:
        if msg.type != "error":
            return
        # Resource load failures are reported (or ignored, when not local) by the
        # response/requestfailed handlers below, which know the URL.
        if msg.text.startswith("Failed to load resource"):
            return
        report("console error", first_line(msg.text))

    page.on("console", on_console)

    local_errors: dict[str, int] = {}  # URL -> HTTP status of the site's own resources
    local_failures: dict[str, str] = {}  # URL -> network error of the site's own resources

    def on_response(response) -> None:
        if response.status >= 400 and is_local(response.url) and response.url != page_url:
            local_errors[response.url] = response.status

    def on_request_failed(request) -> None:
        # The machine is offline: resources from other hosts (MathJax, require.js,
        # widget managers from CDNs) cannot load and are aborted on purpose (see
        # route below), so only failures of the site's own files count.
        if is_local(request.url):
            local_failures[request.url] = request.failure

    page.on("response", on_response)
    page.on("requestfailed", on_request_failed)

    page_url = f"{base}/{page_name}.html"
    try:
        response = page.goto(page_url, wait_until="load", timeout=NAV_TIMEOUT_MS)
    except Exception as exc:  # playwright's Error / TimeoutError
        report("page did not load", first_line(exc))
        page.close()
        return problems
    if response is None or response.status >= 400:
        report("page did not load", f"HTTP {response.status if response else 'no response'}")
        page.close()
        return problems
    try:
        page.wait_for_load_state("networkidle", timeout=10_000)
    except Exception:
        pass  # a page that keeps polling still gets checked below
    try:
        result = page.evaluate(PAGE_PROBE_JS, [OVERFLOW_SELECTOR])
    except Exception as exc:  # e.g. the page crashed
        report("page could not be inspected", first_line(exc))
        page.close()
        return problems
    for img in result["broken"]:
        if not is_local(img["url"]):
            continue  # an image from another host: offline machine, ignored (see above)
        status = local_errors.pop(img["url"], None)
        local_failures.pop(img["url"], None)
        why = f" (HTTP {status})" if status else " (still loading)" if img["loading"] else ""
        report("image does not display", img["src"] + why)
    for url, status in local_errors.items():  # other local files (CSS, scripts, fonts...)
        report(f"HTTP {status}", urlsplit(url).path)
    for url, failure in local_failures.items():
        if url not in local_errors:  # an HTTP error is reported once, above
            report("failed to load", f"{urlsplit(url).path} ({failure})")
    for o in result["overflowing"]:
        report(
            "code cell overflows horizontally",
            f"code cell {o['cell'] + 1} of the page, {o['part']} <{o['tag']}> "
            f"scrollWidth {o['scroll']} > clientWidth {o['client']}: {o['line']!r}",
        )
    page.close()
    return problems


def main(html_dir: str = "_build/html") -> int:
    chromium = shutil.which("chromium")
    if chromium is None:
        print(f"browser check: skipped (no chromium on this machine: {INSTALL_HINT})")
        return 0
    html = Path(html_dir)
    if not html.is_dir():
        print(f"browser check: {html} is not a folder (build the site first)")
        return 1
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        print("browser check: the Python package playwright is missing "
              "(scripts/install.sh installs requirements.txt)")
        return 1

    pages = toc_files(yaml.safe_load((REPO / "_toc.yml").read_text()))
    server = serve(html)
    base = f"http://127.0.0.1:{server.server_address[1]}"
    problems: list[str] = []
    try:
        with sync_playwright() as p:
            # Debian's chromium, never playwright's downloaded browsers.
            try:
                browser = p.chromium.launch(
                    executable_path=chromium, headless=True, args=CHROMIUM_ARGS
                )
            except Exception as exc:
                print(f"browser check: could not start {chromium}: {first_line(exc)}")
                return 1
            context = browser.new_context(viewport=VIEWPORT, service_workers="block")
            # Offline machine: requests to other hosts are aborted at once instead of
            # waiting for DNS/connect timeouts; their failures are ignored above.
            context.route(lambda url: not is_local(url), lambda route: route.abort())
            for page_name in pages:
                if not (html / f"{page_name}.html").is_file():
                    problems.append(f"browser check: {page_name}: page did not load: "
                                    f"no {page_name}.html in {html}")
                    continue
                problems.extend(check_page(context, base, page_name))
            browser.close()
    finally:
        server.shutdown()
        server.server_close()
    for line in problems:
        print(line)
    print(f"browser check: {len(pages)} pages, {len(problems)} problems")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
