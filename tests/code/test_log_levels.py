"""A flow relays its stage commands' output at the level each message was written at (issue #19):
real subprocesses writing real logging records, DVC-style and CLI errors, Python warnings,
tracebacks, tqdm bars and a JSON result, through ``run_command`` into a real ``logging.Logger``."""

from __future__ import annotations

import logging
import sys

import pytest

from fashionops.orchestration.relay import Relay, line_level, one_line_json
from fashionops.orchestration.runner import run_command, stage_env
from log_records import RecordList

# What a stage's output looks like: our log format, DVC's multi-line ERROR, a Python warning with
# its source line, a logged error with its traceback, a CLI error with its items, tqdm frames
# written to a pipe, the CLI's indented JSON result, the same library warning twice.
CHILD = r"""
import json, logging, sys, time, warnings
from fashionops.logs import configure_logging
configure_logging()
log = logging.getLogger("fashionops.child")
log.info("embedding 300 catalogue images")
log.warning("validation warning: 3 images below 60 px")
print("ERROR: failed to pull data from the cloud - Checkout failed for following targets:\ndata/raw\n"
      "Is your cache up to date?", flush=True)
time.sleep(0.5)
warnings.simplefilter("always")  # as MLflow's warnings are: printed each time
for _ in range(2):
    warnings.warn("An input example was not provided", UserWarning)
try:
    {}["missing"]
except KeyError:
    log.exception("could not read the summary")
from tqdm import tqdm
for _ in tqdm(range(50), desc="Downloading artifacts", mininterval=0):
    time.sleep(0.001)
print(json.dumps({"passed": True, "rows": 300, "class_counts": {f"c{i}": i for i in range(60)},
                  "macro_f1": 0.861617131956}, indent=2), flush=True)
print("error: 1 critical expectation(s) failed:\n  image_readable: id 7 is truncated", file=sys.stderr, flush=True)
print("Running stage 'train':", flush=True)
"""


@pytest.fixture
def relayed(tmp_path):
    logger = logging.getLogger("test.relay")
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    handler = RecordList()
    logger.addHandler(handler)
    (tmp_path / "child.py").write_text(CHILD)  # a file: warnings print their source line
    try:
        code, lines = run_command([sys.executable, "child.py"], cwd=tmp_path, env=stage_env(), log=logger)
    finally:
        logger.removeHandler(handler)
    assert code == 0, "\n".join(lines)
    return [(r.levelno, r.getMessage()) for r in handler.records], lines


def _one(records, text: str) -> tuple[int, str]:
    found = [r for r in records if text in r[1]]
    assert len(found) == 1, (text, records)
    return found[0]


def test_subprocess_lines_are_relayed_at_their_level(relayed):
    records, _ = relayed
    info = [m for lvl, m in records if lvl == logging.INFO]
    assert _one(records, "embedding 300 catalogue images")[0] == logging.INFO
    assert _one(records, "3 images below 60 px")[0] == logging.WARNING
    level, dvc = _one(records, "failed to pull data from the cloud")
    assert level == logging.ERROR and "data/raw" in dvc and "Is your cache up to date?" in dvc  # one record
    level, cli = _one(records, "critical expectation(s) failed")
    assert level == logging.ERROR and "id 7 is truncated" in cli
    assert _one(records, "Running stage 'train':")[0] == logging.INFO
    assert not any("data/raw" == m or m.startswith("Is your cache") for m in info)


def test_a_traceback_stays_with_its_record(relayed):
    records, _ = relayed
    level, text = _one(records, "could not read the summary")
    assert level == logging.ERROR
    assert "Traceback (most recent call last):" in text and "KeyError: 'missing'" in text
    assert not any("KeyError" in m for lvl, m in records if "could not read" not in m)


def test_python_warnings_are_warnings_said_once(relayed):
    records, _ = relayed
    warned = [(lvl, m) for lvl, m in records if "An input example was not provided" in m]
    assert [lvl for lvl, _ in warned].count(logging.WARNING) == 1, warned
    first = next(m for lvl, m in warned if lvl == logging.WARNING)
    assert "UserWarning" in first and "warnings.warn" in first  # its source line, in the same record
    assert all(lvl == logging.DEBUG for lvl, m in warned if m != first or lvl != logging.WARNING)


def test_no_progress_frames_and_a_one_line_json_result(relayed):
    records, lines = relayed
    assert sum("Downloading artifacts" in ln for ln in lines) > 2  # the child did draw a bar
    shown = [m for lvl, m in records if lvl >= logging.INFO]
    assert not any("it/s" in m or "\r" in m or "Downloading artifacts" in m for m in shown)
    assert all(m.strip() for m in shown)  # no blank records
    result = [m for m in shown if m.startswith("result: ")]
    assert len(result) == 1 and '"class_counts": "<60 entries>"' in result[0] and '"macro_f1": 0.8616' in result[0]
    assert not any(m.strip() in ("{", "}") for m in shown)


def test_a_plain_callback_gets_info_and_above(tmp_path):
    got: list[str] = []
    script = "import sys; print('12:00:01 DEBUG fashionops.x: detail'); print('done'); print('x |', file=sys.stderr)"
    code, _ = run_command([sys.executable, "-c", script], cwd=tmp_path, env=stage_env(), log=got.append)
    assert code == 0 and got == ["done", "x |"]


def test_line_levels():
    assert line_level("12:00:01 WARNING fashionops.data.validation.stage: 3 images below 60 px") == logging.WARNING
    assert line_level("ERROR: failed to reproduce 'validate'") == logging.ERROR  # DVC
    assert line_level("WARNING: Some of the cache files do not exist") == logging.WARNING  # DVC
    assert line_level("error: 1 critical expectation(s) failed") == logging.ERROR  # the fashionops CLI
    assert line_level("/x/mlflow/pyfunc/__init__.py:3344: UserWarning: An input example") == logging.WARNING
    assert line_level("/x/y.py:10: FutureWarning: deprecated") == logging.WARNING
    assert line_level("Traceback (most recent call last):") == logging.ERROR
    assert line_level("Epoch 0:  25%|██▌       | 1/4 [00:00<00:00, 11.61it/s]") == logging.DEBUG
    assert line_level("Training: |          | 0/? [00:00<?, ?it/s]") == logging.DEBUG
    assert line_level("Running stage 'train':") == line_level("Error rate 0.1") == logging.INFO
    assert line_level("ERROR rate fell to 0.1") == logging.INFO


def test_relay_without_a_subprocess_keeps_chained_tracebacks_together():
    out: list[tuple[int, str]] = []
    relay = Relay(lambda level, text: out.append((level, text)))
    relay.feed(
        [
            "Traceback (most recent call last):",
            '  File "a.py", line 1, in <module>',
            "KeyError: 'a'",
            "",
            "During handling of the above exception, another exception occurred:",
            "",
            "Traceback (most recent call last):",
            '  File "a.py", line 3, in <module>',
            "ValueError: b",
            "Updating lock file 'dvc.lock'",
        ]
    )
    relay.close()
    assert [lvl for lvl, _ in out] == [logging.ERROR, logging.INFO]
    assert "KeyError: 'a'" in out[0][1] and out[0][1].endswith("ValueError: b")


def test_one_line_json_fits():
    obj = {"metrics": {f"m{i}": i / 3 for i in range(15)}, "per_class": {f"c{i}": {"f1": 0.5} for i in range(300)}}
    line = one_line_json(obj)
    assert "\n" not in line and len(line) < 1500 and '"m14": 4.667' in line and "<300 entries>" in line
