"""Write the offline page template of ``dvc plots show`` (``.dvc/plots/offline_page.html``).

DVC's default page loads vega, vega-lite and vega-embed from a CDN, so its plots are blank
offline. This template inlines the three libraries' minified builds instead and leaves out
DVC's ``{scripts}`` placeholder (the CDN ``<script>`` tags); ``.dvc/config`` names it as
``plots.html_template``. Run it to change the library versions, then commit the page::

    cd /tmp && npm pack vega@5 vega-lite@5 vega-embed@6
    python scripts/build_plots_page.py /tmp/vega-5.*.tgz /tmp/vega-lite-5.*.tgz /tmp/vega-embed-6.*.tgz

Each argument is an npm tarball (``npm pack``) or an unpacked package folder.
"""

from __future__ import annotations

import argparse
import json
import logging
import tarfile
from pathlib import Path

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / ".dvc" / "plots" / "offline_page.html"
# package name -> its UMD build (globals vega, vegaLite, vegaEmbed), in load order
BUILDS = {"vega": "build/vega.min.js", "vega-lite": "build/vega-lite.min.js", "vega-embed": "build/vega-embed.min.js"}
# Text that would end an inline <script> early, or that DVC fills in (it must appear once, below).
FORBIDDEN = ("</script", "<!--", "{plot_divs}", "{scripts}", "{refresh_tag}")

PAGE = """\
<!DOCTYPE html>
<html>
<head>
    {{refresh_tag}}
    <meta charset="utf-8">
    <title>DVC Plot</title>
    <!-- fashionops: DVC's page with {versions} inlined (no CDN: works offline).
         Written by scripts/build_plots_page.py; licenses at the end of this head. -->
{scripts}
    <style>
        table {{
            border-spacing: 15px;
        }}
        /* image plots (confusion_matrix.png...) shrink to the window instead of overflowing it */
        img {{
            max-width: 100%;
            height: auto;
        }}
    </style>
<!--
{licenses}
-->
</head>
<body>
    {{plot_divs}}
</body>
</html>
"""


def read_package(source: Path) -> tuple[dict[str, str], dict[str, str]]:
    """(package.json, {member: text}) of an npm tarball or an unpacked package folder."""
    wanted = ["package.json", "LICENSE", *BUILDS.values()]
    files: dict[str, str] = {}
    if source.is_dir():
        for rel in wanted:
            if (source / rel).is_file():
                files[rel] = (source / rel).read_text(encoding="utf-8")
    else:
        with tarfile.open(source) as tar:
            for rel in wanted:
                try:
                    member = tar.extractfile(f"package/{rel}")
                except KeyError:
                    continue
                if member is not None:
                    files[rel] = member.read().decode("utf-8")
    if "package.json" not in files:
        raise SystemExit(f"error: {source}: no package.json (not an npm package or tarball)")
    return json.loads(files["package.json"]), files


def build_page(sources: list[Path]) -> str:
    """The template text: each package's build in a <script>, in vega, vega-lite, vega-embed order."""
    packages: dict[str, tuple[dict[str, str], dict[str, str]]] = {}
    for source in sources:
        meta, files = read_package(source)
        packages[meta["name"]] = (meta, files)
    missing = [name for name in BUILDS if name not in packages]
    if missing:
        raise SystemExit(f"error: no package for {', '.join(missing)} among {', '.join(map(str, sources))}")
    scripts, versions, licenses = [], [], []
    for name, build in BUILDS.items():
        meta, files = packages[name]
        code = files.get(build)
        if code is None:
            raise SystemExit(f"error: {name} {meta['version']} has no {build}")
        bad = [text for text in FORBIDDEN if text in code]
        if bad:
            raise SystemExit(f"error: {name}/{build} contains {bad}: cannot be inlined as is")
        scripts.append(f"    <script>/* {name}@{meta['version']} ({meta['license']}) */\n{code.strip()}\n    </script>")
        versions.append(f"{name}@{meta['version']}")
        notice = files.get("LICENSE") or f"{meta['license']} (package.json; the package ships no LICENSE file)"
        licenses.append(f"{name}@{meta['version']}:\n{notice.strip()}")
    return PAGE.format(
        versions=", ".join(versions), scripts="\n".join(scripts), licenses="\n\n".join(licenses).replace("--", "- -")
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("packages", nargs=3, type=Path, help="vega, vega-lite and vega-embed: npm tarballs or folders")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"the template to write (default: {DEFAULT_OUT})")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    page = build_page(args.packages)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(page, encoding="utf-8")
    log.info("wrote %s (%d kB)", args.out, len(page.encode()) // 1024)


if __name__ == "__main__":
    main()
