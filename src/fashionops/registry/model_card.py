"""The model card: what a registered classifier was trained on, how well it does and how to use it.

Logged as ``model_card.md`` in the candidate's MLflow run and used as the registered versions'
description (:mod:`fashionops.registry.register`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def model_card(
    name: str,
    spec: Mapping[str, Any],
    run_params: Mapping[str, str],
    metrics: dict[str, float],
    tags: dict[str, str],
    extra: dict[str, Any] | None = None,
) -> str:
    """A short markdown model card: what was trained on what, how well, and how to use it.

    ``name``: the registered classifier; ``spec``: its ``model_spec.json``; ``run_params``: the
    params logged in its training run (``train.epochs``, ``prepare.balance``, ...), so the card
    describes the training that made the weights, not today's params.yaml.
    """

    def trained(key: str) -> str:
        return run_params.get(key, "?")

    lines = [
        f"# {name}",
        "",
        f"Classifier of `{spec.get('label_column')}` on Fashion Product Images (Small), "
        f"{spec.get('backbone')} (pretrained: {spec.get('pretrained')}, attention: {spec.get('attention')}, "
        f"head: {spec.get('head')}), {trained('train.epochs')} epoch(s), batch {trained('train.batch_size')}, "
        f"lr {trained('train.lr')}, balance: {trained('prepare.balance')}.",
        "",
        "## Metrics (test split)",
        "",
        "| metric | value |",
        "| --- | --- |",
        *[f"| {k} | {v:.4f} |" for k, v in sorted(metrics.items())],
        "",
        "## Lineage",
        "",
        *[f"- {k}: `{v}`" for k, v in sorted(tags.items()) if not k.startswith("mlflow.")],  # git_commit says it
    ]
    for key, value in (extra or {}).items():
        lines.append(f"- {key}: `{value}`")
    lines += [
        "",
        "## Use",
        "",
        "```python",
        "import mlflow, pandas as pd",
        f'model = mlflow.pyfunc.load_model("models:/{name}@champion")',
        'model.predict(pd.DataFrame({"image": [open("shirt.jpg", "rb").read()]}), params={"top_k": 3})',
        "```",
        "",
        "Input: column `image` of encoded image file bytes (JPEG/PNG...); HxWx3 uint8 arrays and file",
        "paths are accepted in Python too. Output: `label`, `probability`, `top_labels`,",
        "`top_probabilities`, `probabilities` (classes order, see the model metadata `classes`),",
        "`attributes` (every attribute tagged -> `{label, probability}`, the primary first).",
        "",
        "Limits: trained on studio catalogue photos (80x60); other photos are out of distribution.",
    ]
    return "\n".join(lines) + "\n"
