"""Make a built GX Data Docs site load nothing from the internet (it then renders offline).

GX 1.x's page templates load bootstrap, bootstrap-table, bootstrap-datepicker, jQuery, popper,
Font Awesome, a dark theme and vega from CDNs, and its logo (with the data context id in the
URL) from GX's web-asset bucket; offline the pages are unstyled and their tables dead. After
:func:`~fashionops.data.validation.context.run_suites` builds the site, :func:`localize_site`
copies the same library versions from ``docs_assets/`` (npm packages; sources and licenses in
``docs_assets/README.md``) to ``<site>/static/vendor/`` and points every page at them by a
relative URL, so the site works from ``file://``, any web server, with or without internet
(references to the site's own ``static/`` are made relative to each page's depth, too).
Links (``<a href>``) are left as they are: they load nothing until clicked.
"""

from __future__ import annotations

import logging
import re
import shutil
from pathlib import Path

log = logging.getLogger(__name__)

ASSETS_DIR = Path(__file__).with_name("docs_assets")
VENDOR_DIR = "static/vendor"  # inside the site
LOGO = "static/images/logo-long.png"  # GX's own site static files include it
GX_WEB_ASSETS = "https://great-expectations-web-assets.s3.us-east-2.amazonaws.com/"

# CDN URL as GX 1.x's templates write it -> the same library's file under docs_assets/
CDN_FILES: dict[str, str] = {
    "https://maxcdn.bootstrapcdn.com/bootstrap/4.3.1/css/bootstrap.min.css": "css/bootstrap.min.css",
    "https://stackpath.bootstrapcdn.com/bootstrap/4.3.1/js/bootstrap.min.js": "js/bootstrap.min.js",
    "https://unpkg.com/bootstrap-table@1.19.1/dist/bootstrap-table.min.css": "css/bootstrap-table.min.css",
    "https://unpkg.com/bootstrap-table@1.19.1/dist/bootstrap-table.min.js": "js/bootstrap-table.min.js",
    "https://unpkg.com/bootstrap-table@1.19.0/dist/extensions/filter-control/bootstrap-table-filter-control.css": (
        "css/bootstrap-table-filter-control.min.css"
    ),
    "https://unpkg.com/bootstrap-table@1.19.0/dist/extensions/filter-control/bootstrap-table-filter-control.min.css": (
        "css/bootstrap-table-filter-control.min.css"
    ),
    "https://unpkg.com/bootstrap-table@1.19.1/dist/extensions/filter-control/bootstrap-table-filter-control.min.js": (
        "js/bootstrap-table-filter-control.min.js"
    ),
    "https://cdnjs.cloudflare.com/ajax/libs/bootstrap-datepicker/1.9.0/css/bootstrap-datepicker.min.css": (
        "css/bootstrap-datepicker.min.css"
    ),
    "https://cdnjs.cloudflare.com/ajax/libs/bootstrap-datepicker/1.9.0/js/bootstrap-datepicker.min.js": (
        "js/bootstrap-datepicker.min.js"
    ),
    "https://cdn.jsdelivr.net/npm/@forevolve/bootstrap-dark@1.1.0/dist/css/bootstrap-prefers-dark.css": (
        "css/bootstrap-prefers-dark.css"
    ),
    "https://cdnjs.cloudflare.com/ajax/libs/font-awesome/6.6.0/css/all.min.css": "css/all.min.css",
    "https://code.jquery.com/jquery-3.7.1.min.js": "js/jquery.min.js",
    "https://cdnjs.cloudflare.com/ajax/libs/popper.js/1.12.9/umd/popper.min.js": "js/popper.min.js",
    "https://cdn.jsdelivr.net/npm/vega@5": "js/vega.min.js",
    "https://cdn.jsdelivr.net/npm/vega-lite@5": "js/vega-lite.min.js",
    "https://cdn.jsdelivr.net/npm/vega-embed@6": "js/vega-embed.min.js",
}
# The tags that load something, and their URL attribute.
_LOADING_TAG = re.compile(r"<(?:script|link|img)\b[^>]*>", re.IGNORECASE)
_URL_ATTR = re.compile(r'\b(src|href)="([^"]*)"')
# Subresource-integrity pins of the CDN files; crossorigin would fail a file:// load.
_CDN_ONLY_ATTRS = re.compile(r'\s+(?:integrity|crossorigin)="[^"]*"')
_SITE_STATIC = re.compile(r"^(?:\./|\.\./)*(static/.*)$")
_CSS_WEB_ASSET = re.compile(r"url\(\s*['\"]?" + re.escape(GX_WEB_ASSETS) + r"[^'\")]*['\"]?\s*\)")


def _local_url(url: str, up: str) -> str | None:
    """The relative URL (from a page ``up`` levels below the site root) replacing ``url``; None
    for a URL that is not a CDN file or GX web asset."""
    if url in CDN_FILES:
        return f"{up}{VENDOR_DIR}/{CDN_FILES[url]}"
    if url.startswith(GX_WEB_ASSETS):
        return up + LOGO  # its logos; the URL also carried the data context id
    site_static = _SITE_STATIC.match(url)
    if site_static:  # GX's favicon link on validation pages climbs one level too few
        return up + site_static.group(1)
    return None


def _localize_tag(tag: str, up: str) -> str:
    """One <script>/<link>/<img> tag pointed at the local copy of what it loads."""

    def swap(match: re.Match[str]) -> str:
        local = _local_url(match.group(2), up)
        return match.group(0) if local is None else f'{match.group(1)}="{local}"'

    new = _URL_ATTR.sub(swap, tag)
    return _CDN_ONLY_ATTRS.sub("", new) if new != tag else tag


def remote_loads(html: str) -> list[str]:
    """The http(s) URLs a page would load: ``src``/``href`` of its script, link and img tags, and
    GX web assets in its inline CSS."""
    urls = [
        url
        for tag in _LOADING_TAG.findall(html)
        for _, url in _URL_ATTR.findall(tag)
        if url.lower().startswith(("http://", "https://", "//"))
    ]
    return urls + [m.group(0) for m in _CSS_WEB_ASSET.finditer(html)]


def localize_page(html: str, up: str) -> str:
    """``html`` of a page ``up`` (``"../"`` per level) below the site root, loading local copies."""
    html = _LOADING_TAG.sub(lambda m: _localize_tag(m.group(0), up), html)
    return _CSS_WEB_ASSET.sub(f"url('{up}{LOGO}')", html)


def localize_site(site: Path) -> list[str]:
    """Copy the vendored assets into ``site`` and rewrite its pages and stylesheets to use them.

    Returns the remote URLs still loaded (a GX upgrade's new CDN file); each is logged as a warning.
    """
    shutil.copytree(ASSETS_DIR, site / VENDOR_DIR, ignore=shutil.ignore_patterns("README.md"), dirs_exist_ok=True)
    left: list[str] = []
    for page in sorted(site.rglob("*.html")):
        up = "../" * (len(page.relative_to(site).parts) - 1)
        html = localize_page(page.read_text(encoding="utf-8"), up)
        page.write_text(html, encoding="utf-8")
        left += remote_loads(html)
    for sheet in sorted((site / "static" / "styles").glob("*.css")):
        css = sheet.read_text(encoding="utf-8")
        sheet.write_text(_CSS_WEB_ASSET.sub(f"url('../../{LOGO}')", css), encoding="utf-8")
    for url in sorted(set(left)):
        log.warning("Data Docs still load %s (not vendored in %s): add it to CDN_FILES", url, ASSETS_DIR)
    return sorted(set(left))
