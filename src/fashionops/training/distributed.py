"""What changes when ``train`` runs as several processes (``train.strategy: ddp``).

* :class:`StageDDPStrategy`: Lightning's DDP whose launcher (:class:`StageLauncher`) re-runs the
  ``fashionops train`` command for the other local ranks (as Lightning's own does), makes them die
  with rank 0 (a SIGKILLed rank 0 leaves no orphan), and ends the whole run when one rank fails:
  rank 0 stops the others and ``train`` ends with one ``error:`` line naming the failed rank.
  Under torchrun or SLURM the processes are started outside (Lightning detects the cluster
  environment) and this launcher starts nothing.
* Per-rank samplers (the data module builds them; Lightning's ``use_distributed_sampler`` is off):
  :func:`shard_train_indices` splits one seeded epoch order (plain or class-weighted draw) into
  equal shards, padded by wrapping as ``DistributedSampler`` does, so every rank runs the same
  number of steps; :class:`EvalShardSampler` gives each rank every ``world``-th validation sample,
  unpadded, so each sample is evaluated exactly once.
* Gathers for the epoch metrics (:func:`gather_sum`, :func:`gather_cat`: per-rank tensors of any
  length) and :func:`broadcast_buffers` (validation uses rank 0's BatchNorm statistics, the ones its
  checkpoint holds), so validation metrics equal a single-process evaluation of that checkpoint.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from lightning.pytorch.strategies import DDPStrategy
from lightning.pytorch.strategies.launchers.subprocess_script import _SubprocessScriptLauncher
from torch import nn
from torch.utils.data import Sampler

from fashionops.errors import FashionOpsError
from fashionops.workers import die_with_parent

log = logging.getLogger(__name__)
# Set by rank 0's launcher for the processes it starts: their parent's pid.
LAUNCHER_ENV = "FASHIONOPS_TRAIN_LAUNCHER_PID"
# How long rank 0 may take to notice a dead rank by itself (a failed collective) before the
# watcher ends it; and how long rank 0 waits for a dead rank's exit status after a failed collective.
_NOTICE_GRACE_S = 30.0
_EXIT_WAIT_S = 5.0
_POLL_S = 0.2


# -- launching ----------------------------------------------------------------------------
def _exit_text(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


def _check_relaunchable() -> None:
    """The other ranks re-run this process's command: it must be ``fashionops train``."""
    import __main__

    main_file = Path(getattr(__main__, "__file__", None) or sys.argv[0])
    # `python -m fashionops.cli` runs the package's cli.py; the console script is named fashionops
    if main_file.parts[-2:] == ("fashionops", "cli.py") or main_file.name == "fashionops":
        return
    raise FashionOpsError(
        "train.strategy=ddp with several devices per node starts the other ranks by re-running the "
        f"command ({' '.join(sys.argv[:2])}); run it as `fashionops train` (or under torchrun/srun), "
        "not from another program"
    )


class _RankWatch(threading.Thread):
    """Watches the ranks rank 0 started; the first to fail ends the run.

    The other started ranks are killed at once; rank 0 normally notices by itself (its next
    collective fails) and ends with the failure as its error. If it has not ended after a grace
    period (it was waiting for the dead rank outside a collective), the error line is written here
    and rank 0 is killed, so that a failed rank never leaves the run hanging.
    """

    def __init__(self, procs: list[subprocess.Popen[Any]]) -> None:
        super().__init__(daemon=True, name="ddp-rank-watch")
        self.procs = procs
        self.failure: str | None = None
        self._stop = threading.Event()

    def run(self) -> None:
        while not self._stop.wait(_POLL_S):
            codes = [p.poll() for p in self.procs]
            if all(c == 0 for c in codes):
                return
            failed = [(rank, c) for rank, c in enumerate(codes, start=1) if c not in (None, 0)]
            if failed:
                rank, code = failed[0]
                self.failure = f"rank {rank} of the training (pid {self.procs[rank - 1].pid}) {_exit_text(code)}"
                kill_processes(self.procs)
                if not self._stop.wait(_NOTICE_GRACE_S):
                    sys.stderr.write(f"error: fashionops train: {self.failure}; all ranks stopped\n")
                    sys.stderr.flush()
                    os.kill(os.getpid(), signal.SIGKILL)
                return

    def stop(self) -> None:
        self._stop.set()


def kill_processes(procs: Sequence[subprocess.Popen[Any]]) -> None:
    """SIGKILL the ranks still running and reap them (they write nothing: nothing to clean up)."""
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
    for proc in procs:
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILL is not ignorable
            log.warning("rank process %d did not end after SIGKILL", proc.pid)


class StageLauncher(_SubprocessScriptLauncher):
    """Lightning's script launcher with the stage's failure handling (see the module doc)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.watch: _RankWatch | None = None

    def launch(self, function: Callable[..., Any], *args: Any, trainer: Any = None, **kwargs: Any) -> Any:
        self.cluster_environment.validate_settings(num_devices=self.num_processes, num_nodes=self.num_nodes)
        if not self.cluster_environment.creates_processes_externally:
            _check_relaunchable()
            os.environ[LAUNCHER_ENV] = str(os.getpid())
            self._call_children_scripts()
            self.watch = _RankWatch(self.procs)
            self.watch.start()
        # CPU threads per rank were set by the stage (OMP_NUM_THREADS exported for the ranks)
        return function(*args, **kwargs)

    def check(self) -> None:
        """Before anything is written: refuse a launch that would re-run a command other than ours."""
        if self.num_processes > 1 and not self.cluster_environment.creates_processes_externally:
            _check_relaunchable()

    def failure(self, exception: BaseException) -> str | None:
        """The failed rank, if one did before ``exception`` (rank 0's failed collective)."""
        if self.watch is None:
            return None
        deadline = time.monotonic() + (_EXIT_WAIT_S if isinstance(exception, RuntimeError) else 0.0)
        while self.watch.failure is None and time.monotonic() < deadline:
            if any(p.poll() not in (None, 0) for p in self.procs):
                time.sleep(2 * _POLL_S)  # let the watch record which one
                break
            time.sleep(_POLL_S / 2)
        return self.watch.failure

    def stop_ranks(self) -> None:
        """End the started ranks now (rank 0 failed or was stopped)."""
        if self.watch is not None:
            self.watch.stop()
        kill_processes(self.procs)

    def finished(self) -> None:
        """Rank 0's fit returned: stop watching (the other ranks end by themselves)."""
        if self.watch is not None:
            self.watch.stop()


class StageDDPStrategy(DDPStrategy):
    """``DDPStrategy`` launched by :class:`StageLauncher`; on an exception in rank 0 it records
    which rank failed first and stops the others before Lightning's teardown (no tracebacks of
    ranks whose collective broke because rank 0 ended)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.rank_failure: str | None = None

    def _configure_launcher(self) -> None:
        assert self.cluster_environment is not None
        self._launcher = StageLauncher(self.cluster_environment, self.num_processes, self.num_nodes)

    def on_exception(self, exception: BaseException) -> None:
        super().on_exception(exception)
        launcher = self._launcher
        if isinstance(launcher, StageLauncher):
            self.rank_failure = launcher.failure(exception)
            launcher.stop_ranks()


def resolve_strategy(strategy: str) -> str | StageDDPStrategy:
    """``train.strategy`` as the Trainer takes it: ``ddp`` (and its unused-parameter variants) as
    :class:`StageDDPStrategy`; other values as they are (``auto``, ``deepspeed``, ...)."""
    variants = {"ddp": False, "ddp_find_unused_parameters_false": False, "ddp_find_unused_parameters_true": True}
    if strategy in variants:
        return StageDDPStrategy(find_unused_parameters=variants[strategy])
    if strategy.startswith("ddp_") or strategy == "fsdp_spawn":
        raise FashionOpsError(
            f"train.strategy={strategy}: spawned or forked processes cannot return the trained model to "
            "the stage; use ddp (the other ranks re-run `fashionops train`)"
        )
    return strategy


def join_as_started_rank() -> None:
    """In a rank rank 0's launcher started: die with rank 0, and let SIGTERM just end this process
    (rank 0 reports; one ``error:`` line, not one per rank)."""
    if os.environ.get(LAUNCHER_ENV) == str(os.getppid()):
        die_with_parent()


# -- per-rank samplers --------------------------------------------------------------------
def shard_train_indices(order: list[int], rank: int, world: int) -> list[int]:
    """Rank ``rank``'s share of one epoch's ``order``: equal lengths, padded by wrapping around."""
    if world <= 1:
        return order
    per_rank = -(-len(order) // world)
    total = per_rank * world
    padded = order + (order * (total // max(1, len(order)) + 1))[: total - len(order)]
    return padded[rank:total:world]


class EvalShardSampler(Sampler[int]):
    """Every ``world``-th sample from ``rank`` on, in order: each evaluated once, no padding."""

    def __init__(self, size: int, rank: int, world: int) -> None:
        self.indices = range(rank, size, world)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


# -- collectives for the epoch metrics -----------------------------------------------------
def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def gather_sum(value: torch.Tensor) -> torch.Tensor:
    """Sum of ``value`` over the ranks (``value`` itself in one process)."""
    if not _distributed():
        return value
    total = value.clone()
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total


def gather_cat(value: torch.Tensor) -> torch.Tensor:
    """Every rank's ``value`` (any length along dim 0) concatenated in rank order."""
    if not _distributed():
        return value
    world = dist.get_world_size()
    length = torch.tensor([value.shape[0]], device=value.device, dtype=torch.long)
    lengths = [torch.zeros_like(length) for _ in range(world)]
    dist.all_gather(lengths, length)
    sizes = [int(n) for n in lengths]
    padded = value.new_zeros((max(sizes), *value.shape[1:]))
    padded[: value.shape[0]] = value
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded)
    return torch.cat([part[:n] for part, n in zip(parts, sizes, strict=True)])


def broadcast_buffers(module: nn.Module) -> None:
    """Give every rank rank 0's buffers (BatchNorm statistics drift apart on each rank's own
    batches; rank 0's are the ones its checkpoint saves)."""
    if not _distributed():
        return
    for buffer in module.buffers():
        dist.broadcast(buffer, src=0)
