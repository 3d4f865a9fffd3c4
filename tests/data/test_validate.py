"""Validation stage on small real catalogues, broken on purpose: real GX, real images."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest

from conftest import REPO, params_for
from fashionops.cli import main
from fashionops.config import Params, ValidateConfig, load_params
from fashionops.data.validation import (
    DEFAULT_SEVERITY,
    EXPECTATIONS,
    expectations_markdown,
    gather_facts,
    init_gx_context,
    run_validate,
)
from fashionops.data.validation.expectations import SUITE_ASSETS, expectation_parameters
from fashionops.errors import DataError, ValidationFailed


@pytest.fixture(scope="module")
def base_catalogue(tmp_path_factory, shared_catalogue, shared_styles) -> Path:
    """20 real images of 4 article types (read-only; tests copy it before breaking it)."""
    dest = tmp_path_factory.mktemp("valid_catalogue")
    top = shared_styles["articleType"].value_counts().index[:4]
    rows = pd.concat(shared_styles[shared_styles["articleType"] == t].sample(n=5, random_state=1) for t in top)
    (dest / "images").mkdir()
    for image_id in rows["id"]:
        shutil.copyfile(shared_catalogue / "images" / f"{image_id}.jpg", dest / "images" / f"{image_id}.jpg")
    rows.to_csv(dest / "styles.csv", index=False)
    return dest


@pytest.fixture
def catalogue(tmp_path, base_catalogue) -> Path:
    dest = tmp_path / "catalogue"
    shutil.copytree(base_catalogue, dest)
    return dest


def _validate(params: Params, data_dir: Path | None = None) -> dict:
    """run_validate with the params sections the CLI passes."""
    return run_validate(params.validate, params.paths, label=params.prepare.label, data_dir=data_dir)


def _ids(cat: Path) -> list[int]:
    return pd.read_csv(cat / "styles.csv")["id"].tolist()


def _gx_snapshot() -> dict[str, str]:
    gx_dir = REPO / "gx"
    return {
        str(p.relative_to(gx_dir)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(gx_dir.rglob("*"))
        if p.is_file()
    }


def test_valid_real_subset_passes_and_writes_reports(tmp_path, catalogue):
    before = _gx_snapshot()
    params = params_for(tmp_path / "work", catalogue)
    result = _validate(params)
    assert result["passed"] and result["rows"] == 20 and result["images_ok"] == 20
    summary = json.loads((params.paths.reports("validation") / "summary.json").read_text())
    assert summary["critical_failures"] == 0 and summary["rows"] == 20
    assert set(summary["failures"]) == set(DEFAULT_SEVERITY)
    assert (params.paths.reports("validation") / "data_docs" / "index.html").is_file()
    assert list((params.paths.reports("validation") / "data_docs" / "validations").rglob("*.html"))
    facts = pd.read_parquet(params.paths.facts)
    assert sorted(facts["id"]) == sorted(_ids(catalogue))
    assert facts["decodes"].all() and not facts["truncated"].any()
    assert (facts["width"] >= 32).all() and facts["sha256"].str.len().eq(64).all()
    # A run never writes into the committed GX context.
    assert _gx_snapshot() == before


def _break_truncated(cat: Path) -> int:
    victim = _ids(cat)[0]
    path = cat / "images" / f"{victim}.jpg"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return victim


def _break_zero_bytes(cat: Path) -> int:
    victim = _ids(cat)[1]
    (cat / "images" / f"{victim}.jpg").write_bytes(b"")
    return victim


def _break_text_file(cat: Path) -> int:
    victim = _ids(cat)[2]
    (cat / "images" / f"{victim}.jpg").write_text("id,name\n1,not an image\n")
    return victim


def _break_missing_image(cat: Path) -> int:
    victim = _ids(cat)[3]
    (cat / "images" / f"{victim}.jpg").unlink()
    return victim


def _break_duplicate_id(cat: Path) -> int:
    df = pd.read_csv(cat / "styles.csv")
    df = pd.concat([df, df.iloc[[4]]], ignore_index=True)
    df.to_csv(cat / "styles.csv", index=False)
    return int(df["id"].iloc[4])


def _break_missing_column(cat: Path) -> str:
    pd.read_csv(cat / "styles.csv").drop(columns=["gender"]).to_csv(cat / "styles.csv", index=False)
    return "gender"


def _break_empty_label(cat: Path) -> int:
    df = pd.read_csv(cat / "styles.csv", keep_default_na=False, dtype=str)
    df.loc[5, "articleType"] = " "
    df.to_csv(cat / "styles.csv", index=False)
    return int(df["id"].iloc[5])


@pytest.mark.parametrize(
    ("breaker", "expectation", "detail"),
    [
        (_break_truncated, "image_decodes", "truncated"),
        (_break_zero_bytes, "image_decodes", "0 bytes"),
        (_break_text_file, "image_decodes", "cannot identify image"),
        (_break_missing_image, "image_exists", "file not found"),
        (_break_duplicate_id, "id_unique", "rows"),
        (_break_missing_column, "required_columns", "missing column"),
        (_break_empty_label, "label_present", "label"),
    ],
)
def test_broken_catalogue_fails_naming_the_culprit(tmp_path, catalogue, breaker, expectation, detail):
    culprit = breaker(catalogue)
    params = params_for(tmp_path / "work", catalogue)
    facts_path = Path(params.paths.facts)
    facts_path.parent.mkdir(parents=True)
    facts_path.write_text("stale")  # facts of an earlier run must not survive a failure
    with pytest.raises(ValidationFailed) as info:
        _validate(params)
    message = str(info.value)
    assert expectation in message and str(culprit) in message and detail in message
    if isinstance(culprit, int) and expectation.startswith("image_"):
        assert f"{culprit}.jpg" in message  # the file is named too
    assert not facts_path.exists()
    summary = json.loads((params.paths.reports("validation") / "summary.json").read_text())
    assert summary["passed"] is False and summary["failures"][expectation] >= 1
    assert (params.paths.reports("validation") / "data_docs" / "index.html").is_file()


def test_truncated_flag_and_cli_exit_status(tmp_path, catalogue, capsys, monkeypatch):
    victim = _break_truncated(catalogue)
    work = tmp_path / "work"
    params = params_for(work, catalogue)
    monkeypatch.chdir(tmp_path)
    sets = [f"paths.{k}={getattr(params.paths, k)}" for k in ("facts", "reports_dir", "gx_dir")]
    argv = ["validate", "--params", str(REPO / "params.yaml"), "--data", str(catalogue)]
    for item in sets:
        argv += ["--set", item]
    status = main(argv)
    err = capsys.readouterr().err
    assert status == 1
    assert err.startswith("error: ") and "image_not_truncated" in err and f"{victim}.jpg" in err
    summary = json.loads((work / "reports/validation/summary.json").read_text())
    assert summary["failures"]["image_not_truncated"] == 1
    assert "image_not_truncated" in summary["failed_critical"]
    assert any(f"{victim}.jpg" in e for e in summary["examples"]["image_not_truncated"])


def test_warnings_pass_and_severity_override_fails(tmp_path, catalogue):
    df = pd.read_csv(catalogue / "styles.csv")
    odd = int(df["id"].iloc[0])
    df.loc[0, "gender"] = "Robots"
    df.loc[1, "year"] = 1850
    df.to_csv(catalogue / "styles.csv", index=False)
    # Default: gender set and year range are warnings, so the stage passes and reports them.
    result = _validate(params_for(tmp_path / "a", catalogue))
    assert result["passed"] and result["warnings"] == 2
    assert any("gender_in_set" in w and str(odd) in w for w in result["warning_messages"])
    # Promoted to critical, the same catalogue fails.
    params = params_for(tmp_path / "b", catalogue, ["validate.severity={gender_in_set: critical}"])
    with pytest.raises(ValidationFailed, match=rf"gender_in_set.*{odd}.*Robots"):
        _validate(params)


def test_duplicate_images_are_a_counted_warning(tmp_path, catalogue):
    ids = _ids(catalogue)
    shutil.copyfile(catalogue / "images" / f"{ids[0]}.jpg", catalogue / "images" / f"{ids[1]}.jpg")
    result = _validate(params_for(tmp_path / "w", catalogue))
    assert result["passed"] and result["duplicate_groups"] == 1
    assert result["failures"]["image_unique_content"] == 2
    assert any(f"{min(ids[:2])}, {max(ids[:2])}" in w for w in result["warning_messages"])


def test_unknown_severity_name_is_an_error(tmp_path, catalogue):
    params = params_for(tmp_path / "w", catalogue, ["validate.severity={no_such_check: warning}"])
    with pytest.raises(DataError, match="no_such_check"):
        _validate(params)


def test_facts_with_worker_processes_match_in_process(shared_catalogue):
    from fashionops.data.catalogue import load_catalogue

    sample = load_catalogue(shared_catalogue).iloc[:150]
    parallel = gather_facts(sample, workers=2)
    serial = gather_facts(sample, workers=1)
    pd.testing.assert_frame_equal(parallel, serial)
    assert parallel["id"].tolist() == sample["id"].tolist() and parallel["decodes"].all()


def test_folder_per_class_catalogue_validates(tmp_path, base_catalogue):
    root = tmp_path / "folders"
    styles = pd.read_csv(base_catalogue / "styles.csv")
    for image_id, label in zip(styles["id"], styles["articleType"]):
        (root / label).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(base_catalogue / "images" / f"{image_id}.jpg", root / label / f"{image_id}.jpg")
    result = _validate(params_for(tmp_path / "w", root), data_dir=root)
    assert result["passed"] and result["rows"] == 20 and result["images_ok"] == 20


def test_missing_gx_context_says_how_to_recreate_it(tmp_path, catalogue):
    params = params_for(tmp_path / "w", catalogue, [f"paths.gx_dir={tmp_path / 'no_gx'}"])
    with pytest.raises(DataError, match=r"no great_expectations\.yml.*`fashionops gx-init"):
        _validate(params)


def test_committed_gx_suites_hold_exactly_the_records():
    import great_expectations.expectations as gxe

    assert {p.stem for p in (REPO / "gx" / "expectations").glob("*.json")} == set(SUITE_ASSETS)
    for suite in SUITE_ASSETS:
        stored = json.loads((REPO / "gx" / "expectations" / f"{suite}.json").read_text())
        got = [
            (e["meta"]["name"], e["type"], e["kwargs"], e["severity"], e["description"]) for e in stored["expectations"]
        ]
        want = [
            (e.name, getattr(gxe, e.gx_type).expectation_type, dict(e.kwargs), e.severity, e.gx_description)
            for e in EXPECTATIONS
            if e.suite == suite
        ]
        assert got == want, f"gx/expectations/{suite}.json is stale: run fashionops gx-init"
        assert (REPO / "gx" / "validation_definitions" / f"{suite}.json").is_file()
    assert list(DEFAULT_SEVERITY) == [e.name for e in EXPECTATIONS]


_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def _context_files(gx_dir: Path) -> dict[str, str]:
    """Every file of a GX context, GX's generated ids blanked."""
    return {
        str(p.relative_to(gx_dir)): _UUID.sub("<id>", p.read_text()) for p in sorted(gx_dir.rglob("*")) if p.is_file()
    }


def test_init_gx_context_recreates_the_committed_context(tmp_path):
    made = init_gx_context(tmp_path / "gx")
    assert _context_files(made) == _context_files(REPO / "gx"), "gx/ is stale: run fashionops gx-init"


def test_readme_table_is_the_generated_one():
    readme = (REPO / "README.md").read_text()
    found = re.search(r"<!-- expectations table: begin[^>]*-->\n(.*?)<!-- expectations table: end -->", readme, re.S)
    assert found, "README.md lost its expectations table markers"
    assert found.group(1) == expectations_markdown(), (
        "README.md's expectations table is stale: replace it with fashionops.data.validation.expectations_markdown()"
    )
    assert all(f"`{e.name}`" in found.group(1) for e in EXPECTATIONS)


def test_placeholders_are_filled_from_the_validate_section():
    params = load_params(REPO / "params.yaml", ["validate.year_max=2025", "validate.image_modes=[RGB]"])
    for e in EXPECTATIONS:
        assert set(e.placeholders) <= set(ValidateConfig.model_fields), e.name
    assert expectation_parameters(params.validate) == {
        "required_columns": ["id", "gender", "masterCategory", "subCategory", "articleType"],
        "year_min": 1990,
        "year_max": 2025,
        "genders": ["Men", "Women", "Unisex", "Boys", "Girls"],
        "min_width": 32,
        "min_height": 32,
        "image_modes": ["RGB"],
    }
