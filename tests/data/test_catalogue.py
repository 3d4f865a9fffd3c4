"""Catalogue reading, layout detection, source resolution and the DVC-tracked import (real DVC)."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from conftest import params_for
from fashionops.data.catalogue import (
    COLUMNS,
    import_catalogue,
    load_catalogue,
    read_styles,
    resolve_source,
    stratified_sample,
)
from fashionops.errors import DataError

HEADER = ",".join(COLUMNS)


def _real_rows(styles: pd.DataFrame, per_class: dict[str, int], seed: int = 0) -> pd.DataFrame:
    return pd.concat(
        styles[styles["articleType"] == label].sample(n=n, random_state=seed) for label, n in per_class.items()
    )


def _kaggle_subset(dest: Path, src: Path, rows: pd.DataFrame) -> Path:
    (dest / "images").mkdir(parents=True)
    for image_id in rows["id"]:
        shutil.copyfile(src / "images" / f"{image_id}.jpg", dest / "images" / f"{image_id}.jpg")
    rows.to_csv(dest / "styles.csv", index=False)
    return dest


def test_read_styles_repairs_the_original_kaggle_file(tmp_path):
    # Shapes of the original file: no quoting, an unquoted comma in the name (line 6044 in the
    # original), `NA` for missing values, empty year/season.
    path = tmp_path / "styles.csv"
    path.write_text(
        HEADER + "\n"
        "15970,Men,Apparel,Topwear,Shirts,Navy Blue,Fall,2011,Casual,Turtle Check Men Navy Blue Shirt\n"
        "11991,Men,Apparel,Topwear,Tshirts,Black,Summer,2011,Casual,Myntra Men's Yes, its all about me Black T-shirt\n"
        "4311,Women,Footwear,Shoes,Heels,NA,,,NA,NA\n"
        "12,Men,Accessories,Ties,Ties,Pink,Fall,2012,Formal,"
        "Turtle Men Formal Pink Tie, Cufflink and Pocket Square Set\n"
        "\n"
        '7,Men,Apparel,Topwear,Tshirts,Red,Summer,2012,Casual,"Quoted, like the clean copy"\n'
    )
    df = read_styles(path)
    assert list(df.columns) == COLUMNS and len(df) == 5
    assert df["id"].dtype == "int64" and str(df["year"].dtype) == "Int64"
    assert str(df["gender"].dtype) == "string"
    names = df.set_index("id")["productDisplayName"]
    assert names[11991] == "Myntra Men's Yes, its all about me Black T-shirt"
    assert names[12] == "Turtle Men Formal Pink Tie, Cufflink and Pocket Square Set"
    assert names[7] == "Quoted, like the clean copy"
    row = df.set_index("id").loc[4311]
    assert pd.isna(row["baseColour"]) and pd.isna(row["usage"]) and pd.isna(row["productDisplayName"])
    assert pd.isna(row["year"]) and pd.isna(row["season"])
    assert df.set_index("id").loc[15970, "year"] == 2011


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("5,Men,Apparel,Topwear", r"styles.csv:3: expected 10 fields"),
        ("x5,Men,Apparel,Topwear,Shirts,Blue,Fall,2011,Casual,Name", r"styles.csv:3: id 'x5' is not an integer"),
        ("5,Men,Apparel,Topwear,Shirts,Blue,Fall,20x1,Casual,Name", r"styles.csv:3: year '20x1'"),
    ],
)
def test_read_styles_names_the_unrepairable_line(tmp_path, line, message):
    path = tmp_path / "styles.csv"
    path.write_text(HEADER + "\n1,Men,Apparel,Topwear,Shirts,Blue,Fall,2011,Casual,Fine\n" + line + "\n")
    with pytest.raises(DataError, match=message):
        read_styles(path)


def test_read_styles_matches_pandas_on_the_clean_copy(shared_catalogue):
    df = read_styles(shared_catalogue / "styles.csv")
    ref = pd.read_csv(shared_catalogue / "styles.csv", keep_default_na=False, dtype=str)
    assert len(df) == len(ref) == 40028
    assert df["id"].tolist() == ref["id"].astype(int).tolist()
    expected = ref["productDisplayName"].where(~ref["productDisplayName"].isin(["", "NA"]))
    assert (
        df["productDisplayName"]
        .astype(object)
        .where(df["productDisplayName"].notna())
        .equals(expected.astype(object).where(expected.notna()))
    )
    assert df["productDisplayName"].str.contains(",", na=False).sum() > 0


def _folder_catalogue(root: Path, src: Path, styles: pd.DataFrame) -> dict[str, list[int]]:
    rows = _real_rows(styles, {"Watches": 3, "Heels": 2})
    chosen = {"Watches": [], "Heels": []}
    for n, (image_id, label) in enumerate(zip(rows["id"], rows["articleType"])):
        folder = root / label
        folder.mkdir(parents=True, exist_ok=True)
        if n == 0:  # one PNG: import must re-encode it as JPEG
            Image.open(src / "images" / f"{image_id}.jpg").save(folder / f"item{n}.png")
        else:
            shutil.copyfile(src / "images" / f"{image_id}.jpg", folder / f"item{n}.{'jpeg' if n == 1 else 'jpg'}")
        chosen[label].append(image_id)
    return chosen


def test_folder_per_class_layout(tmp_path, shared_catalogue, shared_styles):
    root = tmp_path / "folders"
    _folder_catalogue(root, shared_catalogue, shared_styles)
    (root / "notes.txt").write_text("ignored")
    df = load_catalogue(root)
    assert list(df.columns) == COLUMNS + ["file"]
    assert df["id"].tolist() == [1, 2, 3, 4, 5]
    rel = [Path(f).relative_to(root.resolve()).as_posix() for f in df["file"]]
    assert rel == sorted(rel) and all(Path(f).is_absolute() for f in df["file"])
    for col in ("masterCategory", "subCategory", "articleType"):
        assert df[col].tolist() == [r.split("/")[0] for r in rel]
    assert df["productDisplayName"].tolist() == [Path(r).stem for r in rel]
    assert df["gender"].isna().all() and df["year"].isna().all()
    # Same ids on a second read: stable.
    assert load_catalogue(root)["file"].tolist() == df["file"].tolist()


def test_kaggle_layout_keeps_rows_with_missing_images(tmp_path, shared_catalogue, shared_styles):
    rows = _real_rows(shared_styles, {"Watches": 3})
    cat = _kaggle_subset(tmp_path / "cat", shared_catalogue, rows)
    gone = int(rows["id"].iloc[0])
    (cat / "images" / f"{gone}.jpg").unlink()
    df = load_catalogue(cat)
    assert len(df) == 3 and str(cat.resolve() / "images" / f"{gone}.jpg") in df["file"].tolist()
    with pytest.raises(DataError, match="not a catalogue"):
        load_catalogue(tmp_path / "cat" / "images")


def test_import_converts_folder_layout(tmp_path, shared_catalogue, shared_styles):
    root = tmp_path / "folders"
    _folder_catalogue(root, shared_catalogue, shared_styles)
    params = params_for(tmp_path / "work")
    result = import_catalogue(params.data, params.paths, source=str(root), track=False)
    raw = Path(params.paths.raw_dir)
    assert result["rows"] == result["images"] == 5 and result["converted_png"] == 1
    assert result["dvc_file"] is None
    again = load_catalogue(raw)
    assert again["id"].tolist() == [1, 2, 3, 4, 5]
    assert again["articleType"].tolist() == load_catalogue(root)["articleType"].tolist()
    for f in again["file"]:
        with Image.open(f) as im:
            assert im.format == "JPEG"
    # No temp or backup directories left next to raw_dir.
    assert sorted(p.name for p in raw.parent.iterdir()) == [raw.name]


def test_stratified_limit_keeps_class_proportions(shared_catalogue):
    df = load_catalogue(shared_catalogue)
    sample = stratified_sample(df, 2000, "articleType", seed=3)
    assert len(sample) == 2000 and sample["id"].is_unique
    expected = df["articleType"].value_counts() * 2000 / len(df)
    got = sample["articleType"].value_counts().reindex(expected.index, fill_value=0)
    assert (got - expected).abs().max() < 1.0
    assert stratified_sample(df, 2000, "articleType", seed=3)["id"].tolist() == sample["id"].tolist()
    assert stratified_sample(df, 2000, "articleType", seed=4)["id"].tolist() != sample["id"].tolist()
    with pytest.raises(DataError, match="stratify_by"):
        stratified_sample(df, 10, "colour", seed=0)


def test_import_with_limit_samples_by_class(tmp_path, shared_catalogue, shared_styles):
    cat = _kaggle_subset(
        tmp_path / "cat", shared_catalogue, _real_rows(shared_styles, {"Tshirts": 12, "Watches": 6, "Heels": 2})
    )
    params = params_for(tmp_path / "work", overrides=["data.limit=10"])
    result = import_catalogue(params.data, params.paths, source=str(cat), track=False)
    styles = pd.read_csv(Path(params.paths.raw_dir) / "styles.csv")
    assert result["rows"] == 10 and result["source_rows"] == 20
    assert styles["articleType"].value_counts().to_dict() == {"Tshirts": 6, "Watches": 3, "Heels": 1}
    assert sorted(p.name for p in (Path(params.paths.raw_dir) / "images").iterdir()) == sorted(
        f"{i}.jpg" for i in styles["id"]
    )


def test_import_counts_missing_images_and_lists_the_first_few(tmp_path, shared_catalogue, shared_styles):
    cat = _kaggle_subset(tmp_path / "cat", shared_catalogue, _real_rows(shared_styles, {"Watches": 5}))
    gone = sorted(int(p.stem) for p in (cat / "images").glob("*.jpg"))[:3]
    for image_id in gone:
        (cat / "images" / f"{image_id}.jpg").unlink()
    params = params_for(tmp_path / "work")
    result = import_catalogue(params.data, params.paths, source=str(cat), track=False, max_examples=2)
    assert result["rows"] == 5 and result["images"] == 2 and result["missing_images"] == 3
    assert len(result["missing_ids"]) == 2 and set(result["missing_ids"]) <= set(gone)


def _run(cmd: list[str], cwd: Path) -> str:
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@example.com",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@example.com",
        "DVC_NO_ANALYTICS": "1",
    }
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, f"{cmd} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def test_import_tracks_with_dvc_push_and_pull(tmp_path, shared_catalogue, shared_styles, monkeypatch):
    from dvc.repo import Repo

    monkeypatch.setenv("DVC_NO_ANALYTICS", "1")
    cat = _kaggle_subset(
        tmp_path / "cat", shared_catalogue, _real_rows(shared_styles, {"Tshirts": 10, "Shirts": 10, "Watches": 10})
    )
    repo = tmp_path / "repo"
    repo.mkdir()
    _run(["git", "init", "-q"], repo)
    # Real DVC in-process for the scaffolding (a `dvc` subprocess costs seconds to start);
    # import_catalogue itself runs `dvc add` as a subprocess.
    with Repo.init(str(repo)) as dvc_repo:
        with dvc_repo.config.edit() as conf:
            conf["remote"]["store"] = {"url": str(tmp_path / "remote")}
            conf["core"]["remote"] = "store"
    params = params_for(repo, overrides=[f"paths.raw_dir={repo / 'data' / 'raw'}"])
    result = import_catalogue(params.data, params.paths, source=str(cat), track=True)
    assert result["dvc_file"] == str(repo / "data" / "raw.dvc") and Path(result["dvc_file"]).is_file()
    assert "raw" in (repo / "data" / ".gitignore").read_text()
    with Repo(str(repo)) as dvc_repo:
        assert dvc_repo.push() == 32  # 30 images + styles.csv + the directory manifest
    _run(["git", "add", "-A"], repo)
    _run(["git", "commit", "-q", "-m", "data"], repo)
    clone = tmp_path / "clone"
    _run(["git", "clone", "-q", str(repo), str(clone)], tmp_path)
    assert not (clone / "data" / "raw").exists()
    with Repo(str(clone)) as dvc_repo:
        dvc_repo.pull()
    pulled = load_catalogue(clone / "data" / "raw")
    original = load_catalogue(repo / "data" / "raw")
    assert len(pulled) == 30 and pulled["id"].tolist() == original["id"].tolist()
    for a, b in zip(pulled["file"], original["file"]):
        assert Path(a).read_bytes() == Path(b).read_bytes()


def test_import_without_dvc_repo_is_a_clear_error(tmp_path, shared_catalogue, shared_styles):
    cat = _kaggle_subset(tmp_path / "cat", shared_catalogue, _real_rows(shared_styles, {"Watches": 2}))
    params = params_for(tmp_path / "work")
    with pytest.raises(DataError, match="dvc init"):
        import_catalogue(params.data, params.paths, source=str(cat), track=True)
    assert not Path(params.paths.raw_dir).exists()


def test_resolve_source_order(tmp_path, monkeypatch):
    dirs = {}
    for name in ("arg", "param", "env"):
        dirs[name] = tmp_path / name
        dirs[name].mkdir()
    shared = tmp_path / "shared" / "data" / "fashion-product-images-small"
    shared.mkdir(parents=True)
    (shared / "styles.csv").write_text(HEADER + "\n")
    cwd = tmp_path / "project"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    monkeypatch.setenv("FASHION_DATA", str(dirs["env"]))
    with_param = params_for(tmp_path / "w", overrides=[f"data.source={dirs['param']}"])
    plain = params_for(tmp_path / "w")
    assert resolve_source(with_param.data, str(dirs["arg"])) == dirs["arg"].resolve()
    assert resolve_source(with_param.data, None) == dirs["param"].resolve()
    assert resolve_source(plain.data, None) == dirs["env"].resolve()
    monkeypatch.delenv("FASHION_DATA")
    assert resolve_source(plain.data, None) == shared.resolve()
    with pytest.raises(DataError, match="--source: catalogue directory not found"):
        resolve_source(plain.data, str(tmp_path / "nope"))


def test_no_source_error_says_how_to_get_the_data(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("FASHION_DATA", raising=False)
    params = params_for(tmp_path / "w", overrides=["data.download=false"])
    with pytest.raises(DataError, match=r"--source DIR.*\$FASHION_DATA"):
        resolve_source(params.data, None)
    if importlib.util.find_spec("kagglehub") is None and importlib.util.find_spec("kaggle") is None:
        # Without kagglehub/kaggle the download fallback explains what to install (no network).
        with pytest.raises(DataError, match="kagglehub"):
            resolve_source(params_for(tmp_path / "w").data, None)
