"""Sphinx extension: workarounds for two console errors of the built site.

scripts/browser_check.py (part of `make test`) fails on any JavaScript error;
with the pinned stack every page had these two:

1. "Identifier 'THEBE_JS_URL' has already been declared" (and a duplicated
   togglebutton selector): Sphinx 7.4 writes an inline script added by an
   extension after the builder started (sphinx-thebe, sphinx-togglebutton) twice,
   once with filename None and once with ''. Fixed upstream in Sphinx 8
   (sphinx-doc/sphinx#13402), which Jupyter Book 1 cannot use (sphinx~=7.0).
   Here: drop repeated inline scripts from each page.
2. "Got invalid theme mode: . Resetting to auto." on a visitor's first page:
   pydata-sphinx-theme's head script sets data-mode to localStorage's "mode" or
   "" and its bundle rejects "". Here: an inline script turns "" into "auto"
   before the bundle reads it (on DOMContentLoaded).
"""

from __future__ import annotations

THEME_MODE_JS = (
    'if (!document.documentElement.dataset.mode) '
    'document.documentElement.dataset.mode = "auto";'
)


def _drop_repeated_inline_scripts(app, pagename, templatename, context, doctree):
    scripts = context.get("script_files")
    if not scripts:
        return
    seen, kept = set(), []
    for js in scripts:
        filename = getattr(js, "filename", js)
        if not filename:  # inline script: compare its attributes (body included)
            key = tuple(sorted((k, str(v)) for k, v in getattr(js, "attributes", {}).items()))
            if key in seen:
                continue
            seen.add(key)
        kept.append(js)
    if len(kept) != len(scripts):
        scripts[:] = kept


def setup(app):
    app.add_js_file(None, body=THEME_MODE_JS, priority=100)
    app.connect("html-page-context", _drop_repeated_inline_scripts)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
