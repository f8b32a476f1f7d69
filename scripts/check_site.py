"""Check the built site: every page in _toc.yml was built and the landing page links it.

usage: python scripts/check_site.py [BUILD_HTML_DIR]
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import yaml


def toc_files(toc: dict) -> list[str]:
    files = [toc["root"]]

    def walk(entries):
        for e in entries or []:
            if "file" in e:
                files.append(e["file"])
            walk(e.get("sections"))
            for part in e.get("parts", []):
                walk(part.get("chapters"))

    walk(toc.get("chapters"))
    for part in toc.get("parts", []):
        walk(part.get("chapters"))
    return [str(Path(f).with_suffix("")) for f in files]


def main(html_dir: str = "_build/html") -> int:
    html = Path(html_dir)
    toc = yaml.safe_load(Path("_toc.yml").read_text())
    pages = toc_files(toc)
    index = (html / "index.html").read_text()
    match = re.search(r'url=([^"]+)"', index)
    landing = html / (match.group(1) if match else "index.html")
    text = landing.read_text()
    missing, unlinked = [], []
    for page in pages:
        if not (html / f"{page}.html").is_file():
            missing.append(page)
        elif page != pages[0] and Path(page).name + ".html" not in text:
            unlinked.append(page)
    for page in missing:
        print(f"site check: no HTML built for {page}")
    for page in unlinked:
        print(f"site check: landing page {landing.name} does not link {page}")
    if missing or unlinked:
        return 1
    print(f"site check: {len(pages)} pages built, all linked from {landing.relative_to(html)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
