"""Progress output (issue #19): no progress-bar frames when stderr is not a terminal - one log line
per epoch for ``train``, a line every ~10% of a long loop (the index's embedding) - and a live bar
on a terminal (a real pseudo-terminal). Real ``fashionops train`` on a tiny real subset."""

from __future__ import annotations

import fcntl
import logging
import os
import pty
import re
import struct
import subprocess
import sys
import termios
import time

import pytest

from conftest import SMALL_CNN_TRAIN, params_for, train_command
from fashionops.progress import Progress

pytestmark = pytest.mark.usefixtures("no_leaked_tracking_uri")
EPOCHS = 2
FRAME = re.compile(r"\r|\d+it/s|s/it|\d+%\|")  # what a tqdm frame leaves in a log


def _records(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "test.progress"]


def test_log_mode_logs_every_tenth_once_the_loop_is_long(caplog):
    logger = logging.getLogger("test.progress")
    caplog.set_level(logging.INFO, logger="test.progress")
    with Progress(100, "checked", unit="images", logger=logger, bar=False, quiet_s=0) as progress:
        for _ in range(100):
            progress.update()
    lines = _records(caplog)
    assert [ln.split()[1] for ln in lines] == [f"{n}/100" for n in range(10, 100, 10)] + ["100/100"], lines
    assert all(ln.startswith("checked ") and "images/s" in ln for ln in lines)
    caplog.clear()
    with Progress(100, "checked", logger=logger, bar=False) as progress:  # a short loop: silent
        progress.update(100)
    assert _records(caplog) == []


@pytest.fixture(scope="module")
def trained(tmp_path_factory, small_catalogue):
    """`fashionops train` (small CNN, 2 short epochs) with stderr a pipe, as a flow runs it."""
    from fashionops.data.prepare import run_prepare

    work = tmp_path_factory.mktemp("progress_train")
    extra = [f"train.epochs={EPOCHS}", "train.limit_batches=3", f"train.early_stopping_patience={EPOCHS}"]
    params = params_for(work, small_catalogue, SMALL_CNN_TRAIN + extra)
    run_prepare(params.prepare, params.paths)
    cmd = train_command(params, SMALL_CNN_TRAIN + extra)
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    proc = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return params, proc.stdout, proc.stderr


@pytest.mark.slow  # ~1 min: prepare + a real `fashionops train` process
def test_train_logs_one_line_per_epoch_and_no_bar_frames(trained):
    _, stdout, stderr = trained
    assert not FRAME.search(stdout) and not FRAME.search(stderr), (stdout + stderr)[-2000:]  # Lightning: stdout
    epochs = [ln for ln in stderr.splitlines() if re.search(r"INFO fashionops\.training\.callbacks: epoch \d", ln)]
    assert len(epochs) == EPOCHS, stderr[-2000:]
    assert epochs[-1].split(": epoch ")[1].startswith(f"{EPOCHS}/{EPOCHS}: ")
    assert all("val_macro_f1" in ln and "train_loss" in ln and "images/s" in ln for ln in epochs), epochs
    # Lightning's lines are printed once, in our format; its advert is not printed
    assert stderr.count("GPU available") == 1 and "Tip:" not in stderr
    assert not re.search(r"^INFO: ", stderr, re.M)


EMBED = """
import logging, sys
import fashionops.progress
from fashionops.logs import configure_logging
from fashionops.inference.predictor import Predictor
from fashionops.search.items import catalogue_items, embed_catalogue
configure_logging()
fashionops.progress.QUIET_S = 0.0  # a tiny catalogue: log its 10% steps anyway
cat = catalogue_items(sys.argv[1])
embed_catalogue(cat, Predictor.from_dir(sys.argv[2]), batch_size=16, chunk=32)
"""


@pytest.mark.slow  # uses the trained model above
def test_embedding_logs_tenths_without_bar_frames(trained, small_catalogue):
    params = trained[0]
    proc = subprocess.run(
        [sys.executable, "-c", EMBED, str(small_catalogue), params.paths.classifier_dir],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not FRAME.search(proc.stderr), proc.stderr[-2000:]
    steps = re.findall(r"fashionops\.search\.items: embedded (\d+)/(\d+) images", proc.stderr)
    assert 5 <= len(steps) <= 12 and steps[-1][0] == steps[-1][1], proc.stderr[-2000:]


LIVE = """
import time
from fashionops.progress import Progress, live
from fashionops.training.callbacks import Throughput, ThroughputBar
print("live", live(), "lightning bar enabled", ThroughputBar(Throughput()).is_enabled, flush=True)
with Progress(40, "embedded", unit="images") as progress:
    for _ in range(40):
        time.sleep(0.01)
        progress.update()
"""


def test_a_terminal_gets_live_bars():
    """stdout and stderr on a real pseudo-terminal: the bar is drawn (frames with ``\\r``)."""
    pid, fd = pty.fork()
    if pid == 0:  # the child: its stdio is the terminal
        os.execv(sys.executable, [sys.executable, "-c", LIVE])
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a 100-column terminal
    out = b""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        out += chunk
    os.waitpid(pid, 0)
    text = out.decode(errors="replace")
    assert "live True lightning bar enabled True" in text, text[-2000:]
    assert len(re.findall(r"embedded:\s+\d+%\|", text)) >= 2 and "images/s" in text, text[-2000:]  # frames
