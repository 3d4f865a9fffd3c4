"""The ``fashionops`` command line: one subcommand per stage, thin callers of library functions.

Every stage subcommand takes ``--params PATH`` and repeatable ``--set section.key=value``; every
option's help shows its default (``fashionops COMMAND --help``), ``fashionops --version`` the
installed version. Commands that read image files check them all before loading a model, so a
missing or unreadable file fails at once, naming each bad one.
Expected failures (``FashionOpsError``), file-system failures (``OSError``: disk full, read-only,
...) and an MLflow tracking server that does not answer print one line ``error: ...`` and exit with
status 1; SIGTERM exits with 143 after cleaning up.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fashionops.cli_format import HelpFormatter, Parser, installed_version, positive_int, print_summary
from fashionops.cli_operations import add_operation_commands
from fashionops.config import Params, dump_params, list_presets, load_params, preset_info
from fashionops.errors import FashionOpsError, Terminated, os_error_message
from fashionops.logs import configure_logging

log = logging.getLogger("fashionops.cli")  # not __name__: "__main__" under `python -m`


def _print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, default=str))


def cmd_import(p: Params, a: argparse.Namespace) -> Any:
    from fashionops.data.catalogue import import_catalogue
    from fashionops.data.validation.raw_record import accept_record

    result = import_catalogue(
        p.data, p.paths, source=a.source, track=not a.no_dvc, max_examples=p.validate.max_examples
    )
    if result.get("dvc_file"):
        accept_record(p.paths.raw_dir)  # what a failing validation under `dvc repro` puts back
    return result


def cmd_validate(p: Params, a: argparse.Namespace) -> Any:
    from fashionops.data.validation import run_validate

    return run_validate(p.validate, p.paths, label=p.prepare.label, data_dir=a.data)


def cmd_prepare(p: Params, a: argparse.Namespace) -> Any:
    from fashionops.data.prepare import run_prepare

    return run_prepare(p.prepare, p.paths)


def cmd_train(p: Params, a: argparse.Namespace) -> Any:
    from fashionops.training.stage import CHECKPOINT_DIR, run_train

    metrics = run_train(p.train, p.paths, p.tracking, balance=p.prepare.balance, resume=a.resume, run_config=p.flat())
    if metrics:  # empty on the non-zero ranks of a multi-process run
        model_dir = Path(p.paths.classifier_dir)
        print_summary(
            "fashionops train: summary",
            metrics,
            {
                "model": str(model_dir),
                "checkpoints": str(model_dir / CHECKPOINT_DIR),
                "metrics": str(p.paths.reports("train") / "metrics.json"),
                "history": str(p.paths.reports("train") / "history.csv"),
            },
        )
    return metrics or None  # the other ranks print nothing


def cmd_evaluate(p: Params, a: argparse.Namespace) -> Any:
    from fashionops.evaluation.stage import run_evaluate

    return run_evaluate(p.evaluate, p.paths, p.tracking, model_uri=a.model_uri, data_dir=a.data)


def cmd_index(p: Params, a: argparse.Namespace) -> Any:
    from fashionops.search.stage import run_index

    return run_index(p.index, p.paths, p.tracking, label=p.prepare.label)


def cmd_search(p: Params, a: argparse.Namespace) -> Any:
    from fashionops.inference.predict import check_image_files
    from fashionops.search.stage import search_images

    check_image_files(a.images)  # before the index and the embedder are loaded
    return search_images(p.index, p.paths, a.images, k=a.top_k, index_dir=a.index_dir, max_pixels=p.serve.max_pixels)


def cmd_register(p: Params, a: argparse.Namespace) -> Any:
    from fashionops.registry.register import run_register
    from fashionops.registry.transaction import fault_hook_from_env

    return run_register(
        p.register,
        p.paths,
        p.tracking,
        embedder_dir=p.index.embedder_dir,
        run_config=p.flat(),
        on_step=fault_hook_from_env(),  # test hook; None unless $FASHIONOPS_REGISTER_FAULT is set
    )


def cmd_promote(p: Params, a: argparse.Namespace) -> Any:
    from fashionops.registry.aliases import promote
    from fashionops.registry.transaction import fault_hook_from_env

    return promote(p.register, p.tracking, version=a.version, reason=a.reason, on_step=fault_hook_from_env())


def cmd_rollback(p: Params, a: argparse.Namespace) -> Any:
    from fashionops.registry.aliases import rollback
    from fashionops.registry.transaction import fault_hook_from_env

    return rollback(p.register, p.tracking, reason=a.reason, on_step=fault_hook_from_env())


def cmd_pull(p: Params, a: argparse.Namespace) -> Any:
    from fashionops.registry.pull import pull

    return pull(p.register, p.tracking, alias=a.alias, dest=a.dest)


def cmd_predict(p: Params, a: argparse.Namespace) -> Any:
    from fashionops.errors import DataError
    from fashionops.inference.predict import check_image_files, predict_images

    check_image_files(a.images)  # before the model is loaded (seconds): a typo fails at once
    failed = 0
    for line in predict_images(p, a.images, model_uri=a.model_uri, k=a.top_k):
        failed += "error" in line
        print(json.dumps(line, default=str))
    if failed:  # the lines name each file and why
        raise DataError(f"{failed} of {len(a.images)} image(s) could not be classified (see their lines above)")
    return None


def cmd_serve(p: Params, a: argparse.Namespace) -> Any:
    from fashionops.serving.app import run_serve

    return run_serve(p, host=a.host, port=a.port)


def cmd_params(p: Params, a: argparse.Namespace) -> Any:
    if a.presets:
        for name in list_presets():
            info = preset_info(name)
            print(f"{name}\n    {info.description}\n    reproduces: {info.reproduces}")
    else:
        print(dump_params(p), end="")
    return None


def cmd_gx_init(p: Params, a: argparse.Namespace) -> Any:
    from fashionops.data.validation.context import init_gx_context

    return {"gx_dir": str(init_gx_context(a.gx_dir or p.paths.gx_dir))}


def cmd_refresh_fetch_champion(p: Params, a: argparse.Namespace) -> Any:
    from fashionops.orchestration.refresh import fetch_champion, format_result

    # One `RESULT {json}` line: what the index-refresh flow reads back (refresh.result_line).
    print(format_result(fetch_champion(p.register, p.tracking, a.dest, a.alias)))
    return None


def cmd_refresh_register_index(p: Params, a: argparse.Namespace) -> Any:
    from fashionops.orchestration.refresh import format_result
    from fashionops.registry.register import register_index_for

    print(
        format_result(register_index_for(p.register, p.index, p.paths, p.tracking, a.index_dir, a.classifier_version))
    )
    return None


def cmd_stack_up(p: Params, a: argparse.Namespace) -> Any:
    from fashionops.stack.up import up

    return up(p)


def cmd_stack_down(p: Params, a: argparse.Namespace) -> Any:
    from fashionops.stack.up import down

    return down(p)


def cmd_stack_status(p: Params, a: argparse.Namespace) -> Any:
    from fashionops.stack.up import status

    return status(p)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="fashionops", description=__doc__.splitlines()[0], formatter_class=HelpFormatter)
    parser.add_argument(
        "--log-level",
        default=None,
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="log level of fashionops' own messages (default: $FASHIONOPS_LOG_LEVEL or INFO)",
    )
    parser.add_argument(
        "--version", action="version", version=f"%(prog)s {installed_version()}", help="print the version and exit"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=Parser)

    def add(
        name: str,
        func: Callable[[Params, argparse.Namespace], Any],
        help_: str,
        parent: argparse._SubParsersAction[Parser] | None = None,
    ) -> argparse.ArgumentParser:
        sp = (parent or sub).add_parser(name, help=help_, description=help_, formatter_class=HelpFormatter)
        sp.add_argument("--params", default="params.yaml", help="params file")
        sp.add_argument(
            "--set",
            dest="overrides",
            action="append",
            default=[],
            metavar="SECTION.KEY=VALUE",
            help="override a parameter (repeatable), validated like the file (default: none)",
        )
        sp.set_defaults(func=func)
        return sp

    sp = add("import", cmd_import, "bring a catalogue into data/raw and track it with DVC")
    sp.add_argument(
        "--source",
        help="catalogue directory, Kaggle layout or folder-per-class (default: data.source, else $FASHION_DATA, "
        "else ../shared/..., else the Kaggle download)",
    )
    sp.add_argument("--no-dvc", action="store_true", help="copy only; do not run `dvc add`")

    sp = add("validate", cmd_validate, "run the Great Expectations suites on a catalogue")
    sp.add_argument("--data", help="catalogue directory (default: paths.raw_dir)")

    add(
        "prepare", cmd_prepare, "filter, encode labels, split without duplicate leakage, balance, build the image cache"
    )

    sp = add("train", cmd_train, "train the classifier (or autoencoder) with Lightning")
    sp.add_argument("--resume", action="store_true", help="continue from the last checkpoint (default: start anew)")

    sp = add("evaluate", cmd_evaluate, "score a model on the test split (or a labelled catalogue)")
    sp.add_argument(
        "--model-uri",
        help="MLflow model URI, e.g. models:/fashion-classifier@champion (default: the model in paths.classifier_dir)",
    )
    sp.add_argument(
        "--data", help="labelled catalogue directory to score instead of the test split (default: the test split)"
    )

    add("index", cmd_index, "embed the catalogue and build the tuned Annoy index")

    sp = add("search", cmd_search, "visual search: print the most similar catalogue items as JSON")
    sp.add_argument("images", nargs="+", help="image files")
    _top_k_option(sp, 5, "how many similar items per image")
    sp.add_argument("--index-dir", help="index directory (default: paths.index_dir)")

    add("register", cmd_register, "register classifier and index; move @champion if better")

    sp = add("promote", cmd_promote, "manually promote a classifier version (and its paired index)")
    sp.add_argument("--version", required=True, type=int, help="the classifier version to make @champion")
    sp.add_argument("--reason", required=True, help="why, recorded on the versions' alias history")

    sp = add("rollback", cmd_rollback, "put @previous back as @champion (both models)")
    sp.add_argument("--reason", default="rollback", help="why, recorded on the versions' alias history")

    sp = add("pull", cmd_pull, "download both models of an alias with a manifest")
    sp.add_argument("--alias", default="champion", help="registry alias of the pair to download")
    sp.add_argument(
        "--dest", required=True, help="directory to download into: absent, empty or an earlier pull (replaced)"
    )

    sp = add("predict", cmd_predict, "classify image files; prints JSON lines")
    sp.add_argument("images", nargs="+", help="image files (all checked before the model is loaded)")
    sp.add_argument(
        "--model-uri",
        help="MLflow model URI or a `fashionops pull` directory "
        "(default: the classifier of models:/<register.classifier_name>@champion)",
    )
    _top_k_option(sp, 3, "how many most probable classes per image")

    sp = add("serve", cmd_serve, "serve the visual search web app and API")
    sp.add_argument("--host", help="interface to listen on (default: serve.host, 127.0.0.1)")
    sp.add_argument("--port", type=int, help="port to listen on (default: serve.port, 8000)")

    sp = add("params", cmd_params, "print the effective configuration")
    sp.add_argument(
        "--presets",
        action="store_true",
        help="list the shipped presets, what each trains and the published result it reproduces",
    )

    sp = add("gx-init", cmd_gx_init, "(re)create the Great Expectations context (suites, data source) in gx/")
    sp.add_argument("--gx-dir", help="directory to create (default: paths.gx_dir)")

    add_operation_commands(add)

    help_ = "the MLflow steps of the index-refresh flow (run in the workspace)"
    steps = sub.add_parser("refresh", help=help_, description=help_).add_subparsers(
        dest="step", required=True, metavar="STEP"
    )
    sp = add(
        "fetch-champion",
        cmd_refresh_fetch_champion,
        "download the classifier version holding an alias; prints RESULT {json}",
        steps,
    )
    sp.add_argument("--dest", required=True, help="directory to download into (replaced)")
    sp.add_argument("--alias", default="champion", help="registry alias to download")
    sp = add(
        "register-index",
        cmd_refresh_register_index,
        "register an index paired with a classifier version; prints RESULT {json}",
        steps,
    )
    sp.add_argument("--index-dir", required=True, help="the built index directory to register")
    sp.add_argument("--classifier-version", required=True, help="the classifier version the index was built with")

    help_ = "the production stack on 127.0.0.1 (PostgreSQL, S3, MLflow and Prefect servers, a worker)"
    actions = sub.add_parser("stack", help=help_, description=help_).add_subparsers(
        dest="step", required=True, metavar="ACTION"
    )
    add("up", cmd_stack_up, "start the stack (or find it running), apply the deployments, write .stack/env", actions)
    add("down", cmd_stack_down, "stop exactly the processes `stack up` started", actions)
    add("status", cmd_stack_status, "each service: running (pid) or stopped, its URL and log", actions)
    return parser


def _top_k_option(sp: argparse.ArgumentParser, default: int, help_: str) -> None:
    """``--top-k N`` (the pyfunc's and the API's ``top_k``); ``--k`` is its old name, still accepted."""
    sp.add_argument(
        "--top-k", "--k", dest="top_k", type=positive_int, default=default, help=f"{help_}; --k is the old name"
    )


def _raise_terminated(signum: int, frame: Any) -> None:
    raise Terminated(f"terminated by signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(args.log_level)
    command = " ".join(x for x in (args.command, getattr(args, "step", None)) if x)
    # SIGTERM unwinds like Ctrl-C: staging folders are removed, worker pools killed, the MLflow
    # run marked KILLED, the previous outputs left as they were.
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _raise_terminated) if in_main_thread else None
    try:
        params = load_params(args.params, args.overrides)
        result = args.func(params, args)
    except FashionOpsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:
        from fashionops.tracking import tracking_unreachable

        # A tracking server that does not answer, disk full, read-only, a file where a folder
        # should be...: one line, the traceback at DEBUG.
        unreachable = tracking_unreachable(exc, f"fashionops {command}")
        if unreachable is not None:
            message = str(unreachable)
        elif isinstance(exc, OSError):
            message = os_error_message(exc, command)
        else:
            raise
        log.debug("fashionops %s failed", command, exc_info=True)
        print(f"error: {message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Terminated:
        if args.command == "serve":  # how a server is told to stop: uvicorn already shut down cleanly
            log.info("fashionops serve stopped (SIGTERM)")
            return 0
        print(f"error: fashionops {command} terminated (SIGTERM); its previous outputs are unchanged", file=sys.stderr)
        return 143
    finally:
        if in_main_thread and previous is not None:
            signal.signal(signal.SIGTERM, previous)
    if result is not None:
        _print_json(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
