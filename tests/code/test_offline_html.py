"""Generated HTML loads nothing from the internet: the ``dvc plots show`` page (the committed
template, in a real git + DVC repository) and the GX Data Docs of a real validation, both
rendered in headless Chromium with every host but the loopback unresolvable.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from conftest import REPO, params_for
from fashionops.data.validation import run_validate
from fashionops.data.validation.docs_offline import CDN_FILES, localize_page, remote_loads
from fashionops.errors import ValidationFailed
from offline_browser import rendered_dom

_LOCAL_REF = re.compile(r'<(?:script|link|img)\b[^>]*?\b(?:src|href)="([^"#?]+)[^"]*"', re.IGNORECASE)


def _missing_local_refs(page: Path) -> list[str]:
    """Relative script/link/img references of ``page`` that name no file."""
    refs = _LOCAL_REF.findall(page.read_text(encoding="utf-8"))
    return [r for r in refs if not r.startswith(("http:", "https:", "data:", "//")) and not (page.parent / r).is_file()]


def _dvc(*args: str, cwd: Path) -> str:
    proc = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=cwd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"dvc {args}: {proc.stdout[-1500:]}{proc.stderr[-1500:]}"
    return proc.stdout


# --------------------------------------------------------------------------- dvc plots show
def test_repo_config_names_the_offline_plots_page():
    template = _dvc("config", "plots.html_template", cwd=REPO).strip()
    page = (REPO / ".dvc" / template).read_text(encoding="utf-8")
    assert page.count("{plot_divs}") == 1 and "{scripts}" not in page  # DVC's CDN tags never go in
    assert remote_loads(page) == []
    for lib in ("vega@5", "vega-lite@5", "vega-embed@6"):
        assert f"<script>/* {lib}." in page


@pytest.fixture(scope="module")
def plots_page(tmp_path_factory) -> Path:
    """`dvc plots show` of a 3-class confusion matrix, declared as the pipeline declares its own."""
    ws = tmp_path_factory.mktemp("plots_ws")
    subprocess.run(["git", "init", "-q"], cwd=ws, check=True)
    _dvc("init", "-q", cwd=ws)
    shutil.copytree(REPO / ".dvc" / "plots", ws / ".dvc" / "plots")
    _dvc("config", "plots.html_template", _dvc("config", "plots.html_template", cwd=REPO).strip(), cwd=ws)
    evaluate_plots = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]["evaluate"]["plots"]
    entry = next(v for p in evaluate_plots for k, v in p.items() if k.endswith("predictions.csv"))
    labels = ["Tshirts", "Casual Shoes", "Perfume and Body Mist"]
    pd.DataFrame({"actual": labels * 4, "predicted": labels * 3 + labels[::-1]}).to_csv(
        ws / "predictions.csv", index=False
    )
    entry = {k: v for k, v in entry.items() if k != "cache"}
    (ws / "dvc.yaml").write_text(yaml.safe_dump({"plots": [{"predictions.csv": entry}]}))
    _dvc("plots", "show", "-o", "out", cwd=ws)
    return ws / "out" / "index.html"


def test_dvc_plots_page_loads_nothing_remote(plots_page):
    html = plots_page.read_text(encoding="utf-8")
    assert remote_loads(html) == []
    assert "cdn." not in html.split("<body>")[0].split("</script>")[-1]  # nothing after the inlined libraries
    assert "vegaEmbed(" in html and '"step": 13' in html  # the class-sized confusion template was used
    assert "Confusion matrix" in html


def test_dvc_plots_page_renders_offline(plots_page):
    dom = rendered_dom(plots_page.as_uri())
    assert 'class="vega-embed' in dom and 'class="marks"' in dom  # vega-embed drew the chart (a canvas)


# --------------------------------------------------------------------------- GX Data Docs
def test_localize_page_points_cdn_files_at_the_site_copy():
    page = (
        '<link rel="stylesheet" href="https://maxcdn.bootstrapcdn.com/bootstrap/4.3.1/css/bootstrap.min.css"/>'
        '<script src="https://cdnjs.cloudflare.com/ajax/libs/popper.js/1.12.9/umd/popper.min.js" '
        'integrity="sha384-x" crossorigin="anonymous"></script>'
        '<img src="https://great-expectations-web-assets.s3.us-east-2.amazonaws.com/logo-long.png?d=1&dataContextId=2">'
        '<a href="https://greatexpectations.io">GX</a>'
    )
    out = localize_page(page, "../../")
    assert 'href="../../static/vendor/css/bootstrap.min.css"' in out
    assert '<script src="../../static/vendor/js/popper.min.js"></script>' in out  # no SRI/CORS attributes
    assert 'src="../../static/images/logo-long.png"' in out and "dataContextId" not in out
    assert '<a href="https://greatexpectations.io">' in out  # a link loads nothing
    assert remote_loads(out) == []


def test_every_vendored_file_exists():
    from fashionops.data.validation.docs_offline import ASSETS_DIR

    assert [f for f in set(CDN_FILES.values()) if not (ASSETS_DIR / f).is_file()] == []


@pytest.fixture(scope="module")
def warned_catalogue(tmp_path_factory, shared_catalogue, shared_styles) -> Path:
    """12 real images of 3 article types; one row's gender is not a known one (a warning)."""
    dest = tmp_path_factory.mktemp("docs_catalogue")
    top = shared_styles["articleType"].value_counts().index[:3]
    rows = pd.concat(shared_styles[shared_styles["articleType"] == t].sample(n=4, random_state=2) for t in top)
    (dest / "images").mkdir()
    for image_id in rows["id"]:
        shutil.copyfile(shared_catalogue / "images" / f"{image_id}.jpg", dest / "images" / f"{image_id}.jpg")
    rows = rows.reset_index(drop=True)
    rows.loc[0, "gender"] = "Robots"
    rows.to_csv(dest / "styles.csv", index=False)
    return dest


def _docs(params) -> Path:
    return params.paths.reports("validation") / "data_docs"


def _validation_page(site: Path, suite: str) -> Path:
    (page,) = (site / "validations" / suite).rglob("*.html")
    return page


def _text(html: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html))


def test_data_docs_of_a_run_with_a_warning(tmp_path, warned_catalogue, monkeypatch):
    monkeypatch.setenv("DVC_EXP_NAME", "tidy-gnus")
    params = params_for(tmp_path, warned_catalogue)
    result = run_validate(params.validate, params.paths, label=params.prepare.label, data_dir=warned_catalogue)
    assert result["passed"] and result["warnings"] == 1
    site = _docs(params)
    pages = sorted(site.rglob("*.html"))
    assert len(pages) >= 5
    for page in pages:
        html = page.read_text(encoding="utf-8")
        assert remote_loads(html) == [], page
        assert _missing_local_refs(page) == [], page
    text = _text(_validation_page(site, "catalogue_metadata").read_text(encoding="utf-8"))
    assert "Status: Succeeded" in text and "Status: Failed" not in text
    assert f"Data asset: catalogue ({warned_catalogue})" in text
    assert "Run Name tidy-gnus" in text and "__none__" not in text  # the DVC experiment, as MLflow names it
    assert "failed warning expectations gender_in_set" in text
    assert "failed critical expectations none" in text


def test_data_docs_of_a_critical_failure_say_failed(tmp_path, warned_catalogue, monkeypatch):
    monkeypatch.delenv("DVC_EXP_NAME", raising=False)
    monkeypatch.delenv("FASHIONOPS_FLOW_RUN_ID", raising=False)
    monkeypatch.delenv("PREFECT__FLOW_RUN_ID", raising=False)
    params = params_for(tmp_path, warned_catalogue, ["validate.severity={gender_in_set: critical}"])
    with pytest.raises(ValidationFailed):
        run_validate(params.validate, params.paths, label=params.prepare.label, data_dir=warned_catalogue)
    site = _docs(params)
    text = _text(_validation_page(site, "catalogue_metadata").read_text(encoding="utf-8"))
    assert "Status: Failed" in text
    assert re.search(r"Run Name validate-\d{8}T\d{6}Z", text)
    assert "failed critical expectations gender_in_set" in text
    assert "Status: Succeeded" in _text(_validation_page(site, "image_facts").read_text(encoding="utf-8"))


def test_data_docs_render_offline(tmp_path, warned_catalogue):
    params = params_for(tmp_path, warned_catalogue)
    run_validate(params.validate, params.paths, label=params.prepare.label, data_dir=warned_catalogue)
    site = _docs(params)
    index = rendered_dom((site / "index.html").as_uri())
    assert 'class="bootstrap-table' in index  # jQuery + bootstrap-table ran: the results table is live
    page = rendered_dom(_validation_page(site, "catalogue_metadata").as_uri())
    assert "fa-check-circle" in page and 'class="bootstrap-table' in page
