"""The ``fashionops`` command line: one subcommand per stage, thin callers of library functions.

Every stage subcommand takes ``--params PATH`` and repeatable ``--set section.key=value``.
Expected failures (``FashionOpsError``) print ``error: ...`` and exit with status 1.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

from fashionops.config import Params, dump_params, list_presets, load_params
from fashionops.errors import FashionOpsError


def _print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, default=str))


def cmd_import(p: Params, a: argparse.Namespace) -> Any:
    from fashionops.data.catalogue import import_catalogue

    return import_catalogue(p, source=a.source, track=not a.no_dvc)


def cmd_validate(p: Params, a: argparse.Namespace) -> Any:
    from fashionops.data.validate import run_validate

    return run_validate(p, data_dir=a.data)


def cmd_prepare(p: Params, a: argparse.Namespace) -> Any:
    from fashionops.data.prepare import run_prepare

    return run_prepare(p)


def cmd_train(p: Params, a: argparse.Namespace) -> Any:
    from fashionops.training.stage import run_train

    return run_train(p, resume=a.resume)


def cmd_evaluate(p: Params, a: argparse.Namespace) -> Any:
    from fashionops.evaluation.stage import run_evaluate

    return run_evaluate(p, model_uri=a.model_uri, data_dir=a.data)


def cmd_index(p: Params, a: argparse.Namespace) -> Any:
    from fashionops.search.index import run_index

    return run_index(p)


def cmd_search(p: Params, a: argparse.Namespace) -> Any:
    from fashionops.search.index import search_images

    return search_images(p, a.images, k=a.k, index_dir=a.index_dir)


def cmd_register(p: Params, a: argparse.Namespace) -> Any:
    from fashionops.registry.register import run_register

    return run_register(p)


def cmd_promote(p: Params, a: argparse.Namespace) -> Any:
    from fashionops.registry.register import promote

    return promote(p, version=a.version, reason=a.reason)


def cmd_rollback(p: Params, a: argparse.Namespace) -> Any:
    from fashionops.registry.register import rollback

    return rollback(p, reason=a.reason)


def cmd_pull(p: Params, a: argparse.Namespace) -> Any:
    from fashionops.registry.register import pull

    return pull(p, alias=a.alias, dest=a.dest)


def cmd_predict(p: Params, a: argparse.Namespace) -> Any:
    from fashionops.inference.predict import predict_images

    for line in predict_images(p, a.images, model_uri=a.model_uri, k=a.k):
        print(json.dumps(line, default=str))
    return None


def cmd_serve(p: Params, a: argparse.Namespace) -> Any:
    from fashionops.serving.app import run_serve

    return run_serve(p, host=a.host, port=a.port)


def cmd_params(p: Params, a: argparse.Namespace) -> Any:
    if a.presets:
        print("\n".join(list_presets()))
    else:
        print(dump_params(p), end="")
    return None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fashionops", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, func: Callable[[Params, argparse.Namespace], Any], help_: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help_, description=help_)
        sp.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
        sp.add_argument(
            "--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
            help="override a parameter (repeatable), validated like the file",
        )
        sp.set_defaults(func=func)
        return sp

    sp = add("import", cmd_import, "bring a catalogue into data/raw and track it with DVC")
    sp.add_argument("--source", help="catalogue directory (Kaggle layout or folder-per-class)")
    sp.add_argument("--no-dvc", action="store_true", help="copy only; do not run `dvc add`")

    sp = add("validate", cmd_validate, "run the Great Expectations suites on a catalogue")
    sp.add_argument("--data", help="catalogue directory (default: validate.data_dir)")

    add("prepare", cmd_prepare, "filter, encode labels, split without duplicate leakage, balance, build the image cache")

    sp = add("train", cmd_train, "train the classifier (or autoencoder) with Lightning")
    sp.add_argument("--resume", action="store_true", help="continue from the last checkpoint")

    sp = add("evaluate", cmd_evaluate, "score a model on the test split (or a labelled catalogue)")
    sp.add_argument("--model-uri", help="MLflow model URI, e.g. models:/fashion-classifier@champion")
    sp.add_argument("--data", help="labelled catalogue directory to score instead of the test split")

    add("index", cmd_index, "embed the catalogue and build the tuned Annoy index")

    sp = add("search", cmd_search, "visual search: print the most similar catalogue items as JSON")
    sp.add_argument("images", nargs="+", help="image files")
    sp.add_argument("--k", type=int, default=5)
    sp.add_argument("--index-dir", help="index directory (default: index.out_dir)")

    add("register", cmd_register, "register classifier and index; move @champion if better")

    sp = add("promote", cmd_promote, "manually promote a classifier version (and its paired index)")
    sp.add_argument("--version", required=True, type=int)
    sp.add_argument("--reason", required=True)

    sp = add("rollback", cmd_rollback, "put @previous back as @champion (both models)")
    sp.add_argument("--reason", default="rollback")

    sp = add("pull", cmd_pull, "download both models of an alias with a manifest")
    sp.add_argument("--alias", default="champion")
    sp.add_argument("--dest", required=True)

    sp = add("predict", cmd_predict, "classify image files; prints JSON lines")
    sp.add_argument("images", nargs="+")
    sp.add_argument("--model-uri", help="default: models:/<register.classifier_name>@champion")
    sp.add_argument("--k", type=int, default=3)

    sp = add("serve", cmd_serve, "serve the visual search web app and API")
    sp.add_argument("--host")
    sp.add_argument("--port", type=int)

    sp = add("params", cmd_params, "print the effective configuration")
    sp.add_argument("--presets", action="store_true", help="list the shipped presets")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        params = load_params(args.params, args.overrides)
        result = args.func(params, args)
    except FashionOpsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    if result is not None:
        _print_json(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
