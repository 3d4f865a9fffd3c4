"""The best trial's params as a DVC experiment: ``dvc exp show`` lists it, ``dvc exp apply NAME``
puts the values into ``params.yaml`` (comments and layout kept), and ``dvc repro`` / ``dvc exp
run`` then retrains with them.

The experiment is written the way DVC stores one (a commit on top of ``HEAD`` under
``refs/exps/<baseline>/<name>``) with git plumbing on a private index: the workspace's files,
index and DVC cache are never touched. ``dvc exp save`` is not used because it first runs
``dvc commit --force`` on every stage, which would record the new params in ``dvc.lock`` against
outputs trained with the old ones (so ``dvc repro`` would not retrain) and rewrite the
workspace's ``dvc.lock``. The experiment's ``dvc.lock`` is ``HEAD``'s: after ``dvc exp apply`` the
train stage shows as changed, as it should.
"""

from __future__ import annotations

import io
import logging
import os
import subprocess
from pathlib import Path
from typing import Any

from fashionops.errors import FashionOpsError

log = logging.getLogger(__name__)
AUTHOR = {"GIT_AUTHOR_NAME": "fashionops sweep", "GIT_AUTHOR_EMAIL": "fashionops-sweep@localhost"}


class ExperimentError(FashionOpsError):
    """The DVC experiment could not be written."""


def _git(workspace: Path, *args: str, stdin: str | None = None, env: dict[str, str] | None = None) -> str:
    proc = subprocess.run(
        ["git", *args], cwd=workspace, input=stdin, capture_output=True, text=True, env=env, check=False
    )
    if proc.returncode != 0:
        raise ExperimentError(f"git {' '.join(args[:2])} in {workspace}: {proc.stderr.strip() or proc.returncode}")
    return proc.stdout.strip()


def experiment_workspace(workspace: str | Path) -> str | None:
    """Why ``workspace`` cannot hold a DVC experiment (not git + DVC, no commit yet), or None."""
    ws = Path(workspace)
    if not (ws / ".dvc").is_dir():
        return f"{ws} is not a DVC repository (no .dvc/)"
    try:
        _git(ws, "rev-parse", "--verify", "-q", "HEAD^{commit}")
    except ExperimentError:
        return f"{ws} is not a git repository with a commit"
    return None


def with_values(text: str, values: dict[str, Any]) -> str:
    """``params.yaml`` text with ``section.key`` values replaced (added when absent); comments,
    order, quoting and ``null`` spelling kept (ruamel round trip, as ``dvc exp run -S`` edits)."""
    from ruamel.yaml import YAML

    yaml = YAML(typ="rt")
    yaml.preserve_quotes = True
    yaml.width = 4096  # never re-wrap a long line
    yaml.representer.add_representer(type(None), lambda rep, _: rep.represent_scalar("tag:yaml.org,2002:null", "null"))
    tree = yaml.load(text) or {}
    for key, value in values.items():
        *sections, leaf = key.split(".")
        node = tree
        for part in sections:
            if node.get(part) is None:
                node[part] = {}
            node = node[part]
        node[leaf] = value
    out = io.StringIO()
    yaml.dump(tree, out)
    return out.getvalue()


def save_params_experiment(
    workspace: str | Path, params_file: str | Path, values: dict[str, Any], name: str, message: str
) -> str:
    """Write the DVC experiment ``name``: ``HEAD`` with ``params_file`` (the workspace's text)
    holding ``values``. Returns the experiment's git ref."""
    from dvc.repo.experiments.refs import ExpRefInfo

    ws = Path(workspace).resolve()
    path = Path(params_file).resolve()
    top = Path(_git(ws, "rev-parse", "--show-toplevel")).resolve()
    rel = path.relative_to(top).as_posix()
    head = _git(ws, "rev-parse", "HEAD")
    blob = _git(ws, "hash-object", "-w", "--stdin", stdin=with_values(path.read_text(), values))
    git_dir = Path(_git(ws, "rev-parse", "--absolute-git-dir"))
    index = git_dir / f"fashionops-sweep-{os.getpid()}.index"  # private: the user's index is untouched
    env = {**os.environ, "GIT_INDEX_FILE": str(index)}
    if not _git_identity(ws):
        env.update(AUTHOR)
        env.update({"GIT_COMMITTER_NAME": AUTHOR["GIT_AUTHOR_NAME"], "GIT_COMMITTER_EMAIL": AUTHOR["GIT_AUTHOR_EMAIL"]})
    try:
        _git(top, "read-tree", head, env=env)
        _git(top, "update-index", "--add", "--cacheinfo", f"100644,{blob},{rel}", env=env)
        tree = _git(top, "write-tree", env=env)
    finally:
        index.unlink(missing_ok=True)
    commit = _git(top, "commit-tree", tree, "-p", head, "-m", message, env=env)
    ref = str(ExpRefInfo(head, name))
    _git(top, "update-ref", ref, commit)
    log.info("DVC experiment %s: %s on top of %s (`dvc exp apply %s`)", name, rel, head[:7], name)
    return ref


def _git_identity(ws: Path) -> bool:
    try:
        return bool(_git(ws, "config", "user.email")) and bool(_git(ws, "config", "user.name"))
    except ExperimentError:
        return False
