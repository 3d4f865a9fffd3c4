"""No pickled code runs from files (issue #18 item 3): ``train.pretrained=file:PATH`` and
``train --resume`` read torch files with ``weights_only=True`` and refuse crafted ones in one line,
before any of their code runs; real checkpoints of ``fashionops train`` still load."""

from __future__ import annotations

import contextlib
import os
import pickle
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from fashionops.config import TrainConfig
from fashionops.errors import FashionOpsError
from fashionops.models import build_model, model_spec

REPO = Path(__file__).resolve().parents[2]
PLAIN_ONLY = "is not a plain weights file (state_dict / tensors only)"


class WritesMarker:
    """Unpickling this runs code (``exec``): it creates ``marker``, as a crafted file would."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",))


def crafted_files(tmp_path: Path, marker: Path) -> dict[str, Path]:
    """A torch.save checkpoint (zip) with real tensors plus a payload, and a bare pickle
    (torch's legacy format) that is only the payload."""
    ckpt = tmp_path / "crafted.ckpt"
    state = {f"model.backbone.{k}": v for k, v in nn.Conv2d(3, 4, 3).state_dict().items()}
    torch.save({"state_dict": state, "epoch": 3, "hyper_parameters": WritesMarker(marker)}, ckpt)
    bare = tmp_path / "crafted.pt"
    with bare.open("wb") as fh:
        pickle.dump({"state_dict": state, "x": WritesMarker(marker)}, fh, protocol=2)
    return {"torch.save": ckpt, "pickle": bare}


@pytest.fixture(params=["torch.save", "pickle"])
def crafted(request, tmp_path) -> tuple[Path, Path]:
    """(crafted file, marker path); the payload is checked to be live, so the test can fail."""
    live = tmp_path / "live-marker"
    (tmp_path / "probe").mkdir()
    probe = crafted_files(tmp_path / "probe", live)
    with contextlib.suppress(Exception):  # the old, unsafe load (a bare pickle then fails, after its code ran)
        torch.load(probe[request.param], map_location="cpu", weights_only=False)
    assert live.is_file(), "the crafted payload did not run under weights_only=False"
    marker = tmp_path / "marker"
    return crafted_files(tmp_path, marker)[request.param], marker


def small_spec(pretrained: str) -> dict:
    return model_spec(
        TrainConfig(backbone="small_cnn", pretrained=pretrained), ["a", "b", "c"], "articleType", (48, 36)
    )


@pytest.mark.parametrize("force_unsafe_env", [False, True], ids=["default", "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"])
def test_crafted_pretrained_file_is_refused_before_its_code_runs(crafted, force_unsafe_env, monkeypatch):
    path, marker = crafted
    if force_unsafe_env:  # torch honours this only where a call leaves weights_only unset
        monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    with pytest.raises(FashionOpsError) as info:
        build_model(small_spec(f"file:{path}"))
    message = str(info.value)
    assert not marker.exists(), "the crafted file's code ran"
    assert "\n" not in message
    assert message.startswith(f"train.pretrained: {path} {PLAIN_ONLY}")
    assert len(message) < 300


def test_whole_pickled_module_is_refused_and_its_state_dict_loads(tmp_path):
    source = build_model(small_spec("none"))
    module_file, state_file = tmp_path / "module.pt", tmp_path / "state.pt"
    torch.save(source, module_file)
    torch.save(source.state_dict(), state_file)
    with pytest.raises(FashionOpsError, match=re.escape(PLAIN_ONLY)) as info:
        build_model(small_spec(f"file:{module_file}"))
    assert "it references fashionops.models" in str(info.value)  # names the class it would unpickle
    loaded = build_model(small_spec(f"file:{state_file}"))
    assert loaded.pretrained_report["matched"] > 0 and loaded.pretrained_report["mismatched"] == 0


def write_crafted_last_ckpt(classifier_dir: Path, marker: Path) -> Path:
    """A last.ckpt shaped like fashionops train's (so only its payload is wrong)."""
    last = classifier_dir / "checkpoints" / "last.ckpt"
    last.parent.mkdir(parents=True)
    torch.save(
        {
            "epoch": 0,
            "state_dict": {},
            "fashionops": {"train": TrainConfig().model_dump()},
            "callbacks": {"x": WritesMarker(marker)},
        },
        last,
    )
    return last


def test_crafted_last_ckpt_is_refused_by_check_resumable(tmp_path):
    from fashionops.training.stage import check_resumable

    marker = tmp_path / "marker"
    last = write_crafted_last_ckpt(tmp_path / "classifier", marker)
    with pytest.raises(FashionOpsError) as info:
        check_resumable(last, TrainConfig())
    assert not marker.exists(), "the crafted checkpoint's code ran"
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"--resume: {last} {PLAIN_ONLY}; it references exec")
    assert message.endswith("train again without --resume")


def test_train_resume_cli_refuses_a_crafted_last_ckpt_in_one_line(tmp_path):
    marker = tmp_path / "marker"
    classifier_dir = tmp_path / "models" / "classifier"
    last = write_crafted_last_ckpt(classifier_dir, marker)
    cmd = [
        sys.executable,
        "-m",
        "fashionops.cli",
        "train",
        "--resume",
        "--params",
        str(REPO / "params.yaml"),
        "--set",
        f"paths.classifier_dir={classifier_dir}",
        "--set",
        f"paths.reports_dir={tmp_path / 'reports'}",
        "--set",
        f"tracking.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}",
    ]
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert not marker.exists(), "the crafted checkpoint's code ran"
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert errors == [
        f"error: --resume: {last} {PLAIN_ONLY}; it references exec; "
        "refusing to unpickle it; train again without --resume"
    ], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr


def test_real_train_checkpoints_need_no_allow_listed_globals(tiny_pipeline):
    """What `fashionops train` writes (Lightning state, callbacks, optimizer, scheduler, the
    fashionops section) loads under weights_only=True as is: nothing needs allow-listing."""
    from torch.serialization import get_unsafe_globals_in_checkpoint

    from fashionops.training.stage import check_resumable

    ckpt_dir = Path(tiny_pipeline.paths.classifier_dir) / "checkpoints"
    for name in ("last.ckpt", "best.ckpt"):
        assert get_unsafe_globals_in_checkpoint(ckpt_dir / name) == [], name
    check_resumable(ckpt_dir / "last.ckpt", tiny_pipeline.train)  # the same params: no error
