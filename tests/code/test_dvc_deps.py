"""dvc.yaml declares what each stage really depends on, derived from the code.

For every stage of ``fashionops.stages.STAGES``:

* params: the config sections of the stage function's signature (``cfg: TrainConfig`` ->
  ``train``) and its keyword params (``label`` -> ``prepare.label``, ``KEYWORD_PARAMS``); a stage
  that reads a key some preset sets also depends on ``train.preset`` and the presets folder;
* source files: every ``fashionops`` module the stage's entry module imports, transitively
  (module-level and function-local imports; ``if TYPE_CHECKING`` ones do not run);
* data: the locations ``STAGES`` says it reads (deps) and writes (outs), checked against the
  ``paths.*`` that the stage's own modules use.

dvc.yaml is loaded with DVC's own API (templating resolved). Each check fails naming the stage
and the missing (or undeclared) item; mutated copies of dvc.yaml show that the checks can fail.
"""

from __future__ import annotations

import ast
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import pytest
import yaml

from fashionops.config import Params, PathsConfig, load_params
from fashionops.stages import KEYWORD_PARAMS, REPORTS, STAGES, location

REPO = Path(__file__).resolve().parents[2]
SRC = REPO / "src"
PRESETS = "src/fashionops/presets"
# Helpers of other modules that read a location on the stage's behalf, given ``paths``.
PATHS_HELPERS: dict[str, tuple[str, ...]] = {"pipeline_run": ("run_file",)}
# A module named in a string ("fashionops.search.backends.annoy:AnnoyBackend"): a registry of
# modules that importlib loads on first use.
DYNAMIC_IMPORT = re.compile(r"^fashionops(\.\w+)+(:\w+)?$")
LOCATION_NAMES = {*PathsConfig.model_fields, "run_file"}
# Config class name -> params.yaml section (``TrainConfig`` -> ``train``).
SECTIONS: dict[str, str] = {
    info.annotation.__name__: name
    for name, info in Params.model_fields.items()  # type: ignore[union-attr]
}


# --------------------------------------------------------------------------- the code side
def module_file(module: str) -> Path | None:
    """The source file of a ``fashionops`` module or package, None if there is none."""
    base = SRC.joinpath(*module.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imported_modules(module: str) -> set[str]:
    """The ``fashionops`` modules one module imports anywhere in its file (what runs)."""
    path = module_file(module)
    assert path is not None, module
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and DYNAMIC_IMPORT.match(node.value):
            found.add(node.value.partition(":")[0])  # "fashionops.x.y:Name", imported with importlib
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            found.add(base)
            # `from fashionops.models import factory` imports the submodule factory
            found.update(f"{base}.{a.name}" for a in node.names if module_file(f"{base}.{a.name}"))
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text()))
    return {m for m in found if m.split(".")[0] == "fashionops" and module_file(m)}


def import_closure(module: str) -> set[str]:
    """``module`` and every ``fashionops`` module importing it runs, with their packages."""
    seen: set[str] = set()
    todo = [module]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        parts = name.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]  # importing runs the packages
        todo += sorted(imported_modules(name))
    return seen


def _is_trivial(path: Path) -> bool:
    """A package ``__init__.py`` holding only a docstring, imports, ``__all__``/``__version__``:
    nothing in it changes a result (the modules it imports are followed on their own)."""
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            continue
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            continue
        if isinstance(node, ast.Assign) and all(
            isinstance(t, ast.Name) and t.id in ("__all__", "__version__") for t in node.targets
        ):
            continue
        return False
    return True


def source_files(module: str) -> set[str]:
    """Repo-relative source files a stage's code is made of."""
    files = set()
    for name in import_closure(module):
        path = module_file(name)
        assert path is not None
        if path.name == "__init__.py" and _is_trivial(path):
            continue
        files.add(path.relative_to(REPO).as_posix())
    return files


def _function(module: str, name: str) -> ast.FunctionDef:
    path = module_file(module)
    assert path is not None, f"no module {module}"
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.FunctionDef) and node.name == name:
            return node
    raise AssertionError(f"{module} has no function {name}")


def signature_params(stage: str) -> tuple[set[str], list[str]]:
    """Params the stage function takes, from its signature; and what cannot be mapped."""
    module, _, func = STAGES[stage].entry.partition(":")
    fn = _function(module, func)
    taken: set[str] = set()
    unknown: list[str] = []
    for arg in fn.args.posonlyargs + fn.args.args + fn.args.kwonlyargs:
        ann = arg.annotation
        kind = ann.id if isinstance(ann, ast.Name) else (ann.value if isinstance(ann, ast.Constant) else None)
        if kind == "Params":  # the whole configuration: the stage depends on every section
            taken.update(s for s in Params.model_fields if s != "paths")
        elif kind == "PathsConfig":
            continue  # paths: the stage's deps and outs (${paths.*}), checked as data below
        elif kind in SECTIONS:
            taken.add(SECTIONS[kind])
        elif arg.arg in KEYWORD_PARAMS:
            if KEYWORD_PARAMS[arg.arg] is not None:
                taken.add(KEYWORD_PARAMS[arg.arg])  # type: ignore[arg-type]
        else:
            unknown.append(arg.arg)
    return taken, unknown


def preset_keys() -> set[str]:
    """``section.key`` of everything some preset sets (load_params applies them over params.yaml)."""
    keys: set[str] = set()
    for path in sorted((REPO / PRESETS).glob("*.yaml")):
        for section, values in (yaml.safe_load(path.read_text()) or {}).items():
            keys.update(f"{section}.{key}" for key in values)
    return keys


def required_params(stage: str) -> set[str]:
    """What dvc.yaml must declare as params of ``stage``."""
    taken, _ = signature_params(stage)
    presets = preset_keys()
    if any(k in presets or any(p.startswith(k + ".") for p in presets) for k in taken):
        taken.add("train.preset")  # a preset changes those values without touching their keys
    return taken


def own_modules(stage: str) -> set[str]:
    """The stage's own modules: those of its entry module's package that it imports."""
    module = STAGES[stage].entry.partition(":")[0]
    package = module.rpartition(".")[0] + "."
    return {m for m in import_closure(module) if m == module or m.startswith(package)}


def _paths_node(node: ast.AST) -> bool:
    return (isinstance(node, ast.Name) and node.id == "paths") or (
        isinstance(node, ast.Attribute) and node.attr == "paths"
    )


def locations_in_code(stage: str) -> set[str]:
    """Locations the stage's own modules use: ``paths.<field>``, ``paths.reports("<stage>")`` and
    helpers of :data:`PATHS_HELPERS`."""
    found: set[str] = set()
    for module in own_modules(stage):
        path = module_file(module)
        assert path is not None
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "reports"
                and _paths_node(node.func.value)
            ):
                arg = node.args[0] if node.args else None
                found.add(REPORTS + (arg.value if isinstance(arg, ast.Constant) else "?"))
            elif isinstance(node, ast.Attribute) and _paths_node(node.value) and node.attr in LOCATION_NAMES:
                found.add(node.attr)
            elif isinstance(node, ast.Call):
                name = node.func.id if isinstance(node.func, ast.Name) else getattr(node.func, "attr", None)
                found.update(PATHS_HELPERS.get(str(name), ()))
    return found


# --------------------------------------------------------------------------- the dvc.yaml side
@dataclass
class Declared:
    deps: list[str] = field(default_factory=list)
    params: set[str] = field(default_factory=set)
    outs: list[str] = field(default_factory=list)


def load_dvc_stages(dvc_yaml: Path, params_yaml: Path, workdir: Path) -> dict[str, Declared]:
    """The stages of ``dvc_yaml`` as DVC resolves them (``${paths.*}`` from ``params_yaml``),
    loaded in a scratch DVC repository ``workdir``."""
    from dvc.repo import Repo

    workdir.mkdir(parents=True, exist_ok=True)
    shutil.copy(dvc_yaml, workdir / "dvc.yaml")
    shutil.copy(params_yaml, workdir / "params.yaml")
    out: dict[str, Declared] = {}
    with Repo.init(str(workdir), no_scm=True) as repo:
        for stage in repo.index.stages:
            decl = out.setdefault(stage.name, Declared())
            for dep in stage.deps:
                if hasattr(dep, "params"):
                    decl.params.update(dep.params or [])
                else:
                    decl.deps.append(str(dep.def_path))
            decl.outs += [str(o.def_path) for o in stage.outs]
    return out


def _covers(outer: str, inner: str) -> bool:
    """``outer`` is ``inner`` or a folder above it."""
    return PurePosixPath(inner) == PurePosixPath(outer) or PurePosixPath(outer) in PurePosixPath(inner).parents


def _rel(path: Path) -> str:
    return path.as_posix()


def problems(declared: dict[str, Declared], paths: PathsConfig) -> list[str]:
    """Everything dvc.yaml misses (or declares without a reason), one line each, naming the stage."""
    found: list[str] = []
    if set(declared) != set(STAGES):
        found.append(f"dvc.yaml stages {sorted(declared)} != fashionops.stages.STAGES {sorted(STAGES)}")
    for name, stage in STAGES.items():
        decl = declared.get(name)
        if decl is None:
            continue
        module = stage.entry.partition(":")[0]
        _, unknown = signature_params(name)
        found += [
            f"stage '{name}': {stage.entry} argument '{a}' is neither a config section nor in "
            "fashionops.stages.KEYWORD_PARAMS"
            for a in unknown
        ]
        # params
        required = required_params(name)
        for key in sorted(required):
            if not any(key == d or key.startswith(d + ".") for d in decl.params):
                found.append(f"stage '{name}': params miss '{key}'")
        for d in sorted(decl.params):
            if not any(d == k or k.startswith(d + ".") for k in required):
                found.append(f"stage '{name}': declares params '{d}' that {stage.entry} does not take")
        # source files
        files = source_files(module)
        if "train.preset" in required:
            files.add(PRESETS)
        src_deps = [d for d in decl.deps if d.startswith("src/")]
        for f in sorted(files):
            if not any(_covers(d, f) for d in src_deps):
                found.append(f"stage '{name}': deps miss source file {f}")
        for d in src_deps:
            if not any(_covers(d, f) for f in files):
                found.append(f"stage '{name}': dep {d} is no source file of {module}")
        # data
        reads = [_rel(location(paths, loc)) for loc in stage.reads + stage.gates]
        data_deps = [d for d in decl.deps if not d.startswith("src/")]
        for loc, path in zip(stage.reads + stage.gates, reads):
            if not any(_covers(d, path) for d in data_deps):
                found.append(f"stage '{name}': deps miss {path} ({loc})")
        for d in data_deps:
            if not any(_covers(d, r) or _covers(r, d) for r in reads):
                found.append(f"stage '{name}': dep {d} is not a location the stage reads")
        writes = [_rel(location(paths, loc)) for loc in stage.writes]
        for loc, path in zip(stage.writes, writes):
            if not any(_covers(o, path) or _covers(path, o) for o in decl.outs):
                found.append(f"stage '{name}': outs miss {path} ({loc})")
        for o in decl.outs:
            if not any(_covers(w, o) for w in writes):
                found.append(f"stage '{name}': out {o} is not a location the stage writes")
    return found


@pytest.fixture(scope="module")
def repo_paths() -> PathsConfig:
    return load_params(REPO / "params.yaml").paths


@pytest.fixture(scope="module")
def declared(tmp_path_factory) -> dict[str, Declared]:
    return load_dvc_stages(REPO / "dvc.yaml", REPO / "params.yaml", tmp_path_factory.mktemp("dvc"))


# --------------------------------------------------------------------------- tests
def test_dvc_yaml_declares_what_each_stage_reads_writes_and_runs(declared, repo_paths):
    found = problems(declared, repo_paths)
    assert not found, "dvc.yaml does not tell the truth:\n  " + "\n  ".join(found)


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_stage_table_agrees_with_the_paths_the_code_uses(stage):
    def head(loc: str) -> str:
        return loc.partition("/")[0]

    table = {head(loc) for loc in STAGES[stage].reads + STAGES[stage].writes}
    code = locations_in_code(stage)
    assert code == table, (
        f"stage '{stage}': the code uses {sorted(code - table)} that STAGES does not list; "
        f"STAGES lists {sorted(table - code)} that the code does not use"
    )


def test_the_import_walk_follows_function_local_imports():
    # run_train imports models.factory inside the function; the package's own modules load lazily too
    files = source_files("fashionops.training.stage")
    assert "src/fashionops/models/factory.py" in files
    assert "src/fashionops/training/datamodule.py" in files and "src/fashionops/config.py" in files
    assert "src/fashionops/serving/app.py" not in files


def test_signatures_give_sections_and_keyword_params():
    assert signature_params("train")[0] == {"train", "tracking", "prepare.balance"}
    assert signature_params("prepare")[0] == {"prepare"}
    assert "train.preset" in required_params("prepare")  # presets set prepare.label/include/...
    assert "train.preset" not in required_params("evaluate")


def _mutated(tmp_path: Path, stage: str, section: str, drop: str) -> Path:
    """A copy of dvc.yaml without the entry ``drop`` of ``stages.<stage>.<section>``."""
    tree = yaml.safe_load((REPO / "dvc.yaml").read_text())
    entries = tree["stages"][stage][section]
    kept = [e for e in entries if (next(iter(e)) if isinstance(e, dict) else e) != drop]
    assert len(kept) == len(entries) - 1, f"{drop} is not in stages.{stage}.{section}"
    tree["stages"][stage][section] = kept
    path = tmp_path / "dvc.yaml"
    path.write_text(yaml.safe_dump(tree, sort_keys=False))
    return path


@pytest.mark.parametrize(
    ("stage", "section", "drop", "message"),
    [
        ("index", "deps", "${paths.prepared_dir}", "stage 'index': deps miss data/prepared (prepared_dir)"),
        (
            "register",
            "deps",
            "${paths.reports_dir}/train/mlflow_run.json",
            "stage 'register': deps miss reports/train/mlflow_run.json (run_file)",
        ),
        (
            "train",
            "deps",
            "src/fashionops/tracking.py",
            "stage 'train': deps miss source file src/fashionops/tracking.py",
        ),
        ("train", "params", "prepare.balance", "stage 'train': params miss 'prepare.balance'"),
        (
            "train",
            "outs",
            "${paths.reports_dir}/train/mlflow_run.json",
            "stage 'train': outs miss reports/train/mlflow_run.json (run_file)",
        ),
    ],
)
def test_a_dep_removed_from_dvc_yaml_is_reported(tmp_path, repo_paths, stage, section, drop, message):
    mutated = load_dvc_stages(_mutated(tmp_path, stage, section, drop), REPO / "params.yaml", tmp_path / "repo")
    assert message in problems(mutated, repo_paths)
