"""One typed configuration for every stage, loaded from ``params.yaml``.

``params.yaml`` has ``paths`` (where every stage reads and writes), one section per stage
(``data``, ``validate``, ``prepare``, ``train``, ``evaluate``, ``index``, ``register``,
``serve``), ``tracking`` and ``stack`` (``fashionops stack up``, no stage reads it). A stage
function takes only the sections it reads plus ``paths``, so its signature says which params it
depends on (``dvc.yaml`` declares the same). Every section is a pydantic model that forbids
unknown keys, so a typo is an error naming ``section.key``.
``--set section.key=value`` overrides go through the same validation.
A ``train.preset`` names a file in ``fashionops/presets/``; its sections are applied over
the file's values and under the ``--set`` overrides.
"""

from __future__ import annotations

import copy
import difflib
import warnings
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from fashionops.config_base import Section as Section  # every section's base (forbids unknown keys)
from fashionops.config_operations import MonitorConfig, ScoreConfig, SweepConfig
from fashionops.errors import ConfigError as ConfigError  # raised here; importable from config as before
from fashionops.errors import did_you_mean as did_you_mean
from fashionops.presets import PRESETS_DIR as PRESETS_DIR  # the preset files and their descriptions
from fashionops.presets import PresetInfo as PresetInfo
from fashionops.presets import list_presets as list_presets
from fashionops.presets import load_preset
from fashionops.presets import preset_info as preset_info


class PathsConfig(Section):
    """Where the stages read and write, relative to the workspace (``configs/paths`` of
    lightning-hydra-template). Each stage gets this section beside the sections it reads;
    ``dvc.yaml`` interpolates the same values (``${paths.prepared_dir}``)."""

    raw_dir: str = "data/raw"  # the imported catalogue (styles.csv + images/)
    gx_dir: str = "gx"  # the Great Expectations file context
    facts: str = "data/validated/image_facts.parquet"  # per-image facts of a validated catalogue
    prepared_dir: str = "data/prepared"  # the split, labels and uint8 image cache
    classifier_dir: str = "models/classifier"  # the trained model (weights + model_spec.json)
    index_dir: str = "models/index"  # the visual-search index
    reports_dir: str = "reports"  # each stage reports into <reports_dir>/<stage>/

    def reports(self, stage: str) -> Path:
        """The report folder of ``stage`` (``validation``, ``prepare``, ``train``, ...)."""
        return Path(self.reports_dir) / stage

    @property
    def run_file(self) -> Path:
        """The MLflow run of this pipeline run: written by ``train``, reopened by the later stages."""
        return self.reports("train") / "mlflow_run.json"


class DataConfig(Section):
    """``import`` stage: where the catalogue comes from (it lands in ``paths.raw_dir``)."""

    source: str | None = None  # else $FASHION_DATA, else ../shared/..., else Kaggle download
    limit: int | None = Field(default=None, ge=1)  # stratified sample of N images
    stratify_by: str = "articleType"
    seed: int = 42
    kaggle_dataset: str = "paramaggarwal/fashion-product-images-small"
    download: bool = True  # allow the Kaggle download when no local source is found


class ValidateConfig(Section):
    """``validate`` stage: Great Expectations suites over metadata and per-image facts."""

    required_columns: list[str] = ["id", "gender", "masterCategory", "subCategory", "articleType"]
    genders: list[str] = ["Men", "Women", "Unisex", "Boys", "Girls"]
    year_min: int = 1990
    year_max: int = 2030
    min_width: int = 32
    min_height: int = 32
    image_modes: list[str] = ["RGB", "L", "RGBA"]
    # expectation name -> "critical" (fails the stage) or "warning" (reported only)
    severity: dict[str, Literal["critical", "warning"]] = {}
    workers: int = Field(default=2, ge=1)
    max_examples: int = Field(default=10, ge=1)


class SplitConfig(Section):
    train: float = Field(default=0.8, gt=0, lt=1)
    val: float = Field(default=0.1, gt=0, lt=1)
    test: float = Field(default=0.1, gt=0, lt=1)


Attribute = Literal["masterCategory", "subCategory", "articleType", "baseColour", "gender", "season", "usage"]


class PrepareConfig(Section):
    """``prepare`` stage: filtering, label encoding, duplicate-aware split, balancing, cache."""

    label: Literal["masterCategory", "subCategory", "articleType"] = "articleType"
    # Multi-attribute tagging: one backbone, one head per attribute; `label` is always the first
    # head (its classes are filtered, split and balanced as always; listing it here is optional),
    # the others are tagged where the catalogue has them. [] = `label` alone.
    labels: list[Attribute] = []
    min_images_per_class: int = Field(default=100, ge=1)
    include: list[str] = []
    exclude: list[str] = []
    split: SplitConfig = SplitConfig()
    seed: int = 42
    # none | class_weights (weighted loss) | weighted_sampler | oversample (augmented copies)
    balance: Literal["none", "class_weights", "weighted_sampler", "oversample"] = "none"
    oversample_target: int = Field(default=500, ge=1)
    image_height: int = Field(default=80, ge=8)
    image_width: int = Field(default=60, ge=8)
    workers: int = Field(default=2, ge=1)

    @field_validator("labels")
    @classmethod
    def _no_repeats(cls, labels: list[str]) -> list[str]:
        if len(set(labels)) != len(labels):
            raise ValueError("repeats an attribute")
        return labels

    @property
    def attributes(self) -> list[str]:
        """The attributes the classifier tags: ``label`` first, then the other ``labels`` in their order."""
        return [self.label, *(a for a in self.labels if a != self.label)]


class AugmentConfig(Section):
    hflip: bool = True
    crop_scale: float = Field(default=0.0, ge=0, lt=1)  # random resized crop: min area lost
    affine_degrees: float = Field(default=0.0, ge=0)
    color_jitter: float = Field(default=0.0, ge=0)
    # mixing two images of a batch and their labels (training/mixing.py): Beta(alpha, alpha), 0 = off
    mixup_alpha: float = Field(default=0.0, ge=0)
    cutmix_alpha: float = Field(default=0.0, ge=0)
    mix_prob: float = Field(default=1.0, ge=0, le=1)  # share of training batches mixed


class TrainConfig(Section):
    """``train`` stage: Lightning + timm classifier or autoencoder."""

    preset: str | None = None
    task: Literal["classifier", "autoencoder"] = "classifier"
    backbone: str = "tf_efficientnet_lite0"  # any timm model name, or a built-in (small_cnn, conv_autoencoder, ...)
    pretrained: str = "efficientnet_lite0"  # none | timm | file:PATH | efficientnet_lite0/1/2 (offline, PyPI)
    attention: Literal["none", "cbam", "spatial"] = "none"
    cbam_reduction: int = Field(default=16, ge=1)
    cbam_kernel: int = Field(default=7, ge=1)
    head: Literal["linear", "mlp", "svm"] = "linear"
    head_hidden: int = Field(default=512, ge=1)
    dropout: float = Field(default=0.2, ge=0, lt=1)
    latent_dim: int = Field(default=16, ge=1)  # autoencoder bottleneck
    input_height: int | None = None  # None: the cache's size
    input_width: int | None = None
    # progressive resizing: [height, width] of the training images in each of the first epochs (one
    # entry per epoch); the later epochs, validation and the saved model use input_height x input_width
    early_epoch_sizes: list[tuple[Annotated[int, Field(ge=8)], Annotated[int, Field(ge=8)]]] = []
    normalization: Literal["imagenet", "backbone", "none"] = "imagenet"
    # Freeze the first N parameter groups of a timm backbone (stem, then stages): their ImageNet
    # filters are generic, and skipping their gradients makes CPU training ~1.3x faster.
    freeze_groups: int = Field(default=0, ge=0)
    loss: Literal["ce", "weighted_ce", "mse"] = "ce"
    label_smoothing: float = Field(default=0.1, ge=0, lt=1)
    # exponential moving average of the weights (per step; 0 = off): validation, checkpoints and
    # the saved model use the average
    ema_decay: float = Field(default=0.0, ge=0, lt=1)
    # the saved classifier classifies each image with its mirror image too (model_spec.flip_tta)
    flip_tta: bool = False
    # multi-attribute tagging (prepare.labels): attribute -> weight of its head's loss (absent: 1.0)
    loss_weights: dict[str, float] = {}
    optimizer: Literal["adamw", "adam", "sgd"] = "adamw"
    lr: float = Field(default=1e-3, gt=0)
    # discriminative learning rates: the pretrained backbone learns at lr * this, the new layers
    # (attention, heads) at lr
    backbone_lr_scale: float = Field(default=1.0, gt=0, le=1)
    weight_decay: float = Field(default=0.01, ge=0)
    momentum: float = Field(default=0.9, ge=0)
    scheduler: Literal["onecycle", "cosine", "plateau", "none"] = "onecycle"
    epochs: int = Field(default=3, ge=1)
    batch_size: int = Field(default=64, ge=1)
    early_stopping_patience: int = Field(default=6, ge=1)
    augment: AugmentConfig = AugmentConfig()
    accelerator: str = "auto"
    devices: str | int = "auto"
    strategy: str = "auto"
    num_nodes: int = Field(default=1, ge=1)
    precision: str = "auto"  # auto: bf16-mixed on GPU, 32-true on CPU
    compile: bool = False
    num_workers: int = Field(default=0, ge=0)
    cpu_threads: int | None = Field(default=None, ge=1)  # torch threads on CPU; None: every core allowed
    seed: int = 42
    limit_batches: float | int | None = None  # for smoke runs: limit train/val/test batches

    @model_validator(mode="after")
    def _early_sizes_leave_the_last_epoch(self) -> TrainConfig:
        if self.early_epoch_sizes and self.task != "classifier":
            raise ValueError("train.early_epoch_sizes: progressive resizing is for classifiers (train.task)")
        if len(self.early_epoch_sizes) >= self.epochs:
            raise ValueError(
                f"train.early_epoch_sizes names {len(self.early_epoch_sizes)} epochs of train.epochs={self.epochs}: "
                "at least the last epoch must train at train.input_height x input_width"
            )
        return self


class EvaluateConfig(Section):
    """``evaluate`` stage: test-split metrics and plots."""

    batch_size: int = Field(default=256, ge=1)
    top_misclassified: int = Field(default=20, ge=1)


class IndexConfig(Section):
    """``index`` stage: embeddings and an ANN index (Annoy or HNSW) with recall-targeted tuning."""

    embedder: Literal["classifier", "autoencoder"] = "classifier"
    embedder_dir: str | None = None  # None: paths.classifier_dir
    # annoy: random-projection trees (n_trees, max_trees); hnsw: FAISS HNSW graph (hnsw_*), ~1M-item catalogues
    backend: Literal["annoy", "hnsw"] = "annoy"
    metric: Literal["angular", "euclidean", "manhattan", "hamming", "dot"] = "angular"
    n_trees: int = Field(default=50, ge=1)
    search_k: int = -1  # -1: tuned to reach recall_target
    recall_target: float = Field(default=0.95, gt=0, le=1)
    recall_margin: float = Field(default=0.02, ge=0, lt=1)  # tuned for target + margin (sampling noise)
    recall_k: int = Field(default=10, ge=1)
    tune_queries: int = Field(default=500, ge=1)
    max_trees: int = Field(default=200, ge=1)
    # HNSW graph degree M (the tuner doubles it up to hnsw_max_m when ef alone misses the target)
    hnsw_m: int = Field(default=16, ge=2)
    hnsw_max_m: int = Field(default=64, ge=2)
    hnsw_ef_construction: int = Field(default=200, ge=1)  # build-time candidate list: graph quality
    seed: int = 42
    # images per forward pass (each with its mirror image); small batches stay in cache on the CPU
    batch_size: int = Field(default=32, ge=1)
    # parallel forward passes, each single-threaded (None: one per usable core; 1: one pass with
    # torch's intra-op threads): measured faster for 80x60 images on the 2-core machine
    encode_threads: int | None = Field(default=None, ge=1)
    retrieval_queries: int = Field(default=8, ge=1)
    # SVD projection to this many dimensions before Annoy (fitted on the catalogue, applied to
    # queries); None: index the embeddings as they are. Chosen by measurement (benchmarks/bench_index.py).
    dim: int | None = Field(default=256, ge=2)
    # Embed each image together with its mirror image (catalogue and queries alike).
    flip_tta: bool = True
    # Category-aware re-ranking of the rerank_candidates nearest items: similarity + rerank_weight
    # x P(query is of the item's category), P = the classifier's probabilities blended with the
    # neighbours' label vote (rerank_knn_weight). Weights chosen on the validation split.
    rerank: Literal["none", "category"] = "category"
    rerank_candidates: int = Field(default=50, ge=1)
    rerank_weight: float = Field(default=1.0, ge=0)
    rerank_knn_weight: float = Field(default=0.5, ge=0, le=1)
    rerank_knn_neighbours: int = Field(default=20, ge=1)
    refresh_cron: str | None = None  # schedule of the index-refresh deployment (`make ui`)


class RegisterConfig(Section):
    """``register`` stage: MLflow Model Registry with paired aliases."""

    classifier_name: str = "fashion-classifier"
    index_name: str = "fashion-visual-search"
    selection_metric: str = "test/macro_f1"  # a name in reports/evaluate/metrics.json
    min_delta: float = 0.0
    promote: bool = True
    metrics_path: str | None = None  # None: <paths.reports_dir>/evaluate/metrics.json


class ServeConfig(Section):
    """``serve``: FastAPI app over the champion models."""

    host: str = "127.0.0.1"
    port: int = 8000
    alias: str = "champion"
    model_dir: str | None = None  # a `fashionops pull` directory instead of the registry
    # auto: model_dir if set, else the registry alias, else paths.classifier_dir + paths.index_dir (dev)
    source: Literal["auto", "registry", "dir", "local"] = "auto"
    images_dir: str | None = None  # catalogue images; None: <paths.raw_dir>/images
    # torch threads per forward pass in `fashionops serve` (0: torch's default); passes run in
    # parallel up to cores // threads
    torch_threads: int = Field(default=1, ge=0)
    jit: bool = True  # serve frozen TorchScript traces (checked against eager; eager if tracing fails)
    max_upload_mb: float = Field(default=10.0, gt=0)
    max_pixels: int = Field(default=4_000_000, ge=1)
    # seconds a client has to send a whole request body; then 408 and the connection is closed
    body_timeout_s: float = Field(default=30.0, gt=0)
    token_env: str = "FASHIONOPS_API_TOKEN"
    reload_poll_s: float = Field(default=0.0, ge=0)  # 0: only POST /reload
    top_k: int = Field(default=5, ge=1)


class TrackingConfig(Section):
    """MLflow tracking; ``MLFLOW_TRACKING_URI`` overrides ``tracking_uri``."""

    experiment: str = "fashionops"
    tracking_uri: str = "sqlite:///mlflow/mlflow.db"
    artifact_location: str = "mlflow/artifacts"


class StackConfig(Section):
    """``fashionops stack up|down|status``: the production stack on 127.0.0.1 (``fashionops.stack``)."""

    dir: str = ".stack"  # pids, logs, PostgreSQL data, Prefect home, the env file
    postgres_port: int = Field(default=15432, ge=1, le=65535)
    s3_port: int = Field(default=19000, ge=1, le=65535)
    mlflow_port: int = Field(default=15000, ge=1, le=65535)
    prefect_port: int = Field(default=14200, ge=1, le=65535)
    mlflow_bucket: str = "fashionops-mlflow"  # MLflow's artifact store (s3://<bucket>/)
    dvc_bucket: str = "fashionops-dvc"  # the DVC remote `stack` (s3://<bucket>)
    ready_timeout_s: float = Field(default=180.0, gt=0)  # per service, before `up` gives up


# "validate" and "register" shadow BaseModel/ABC class attributes; as instance fields they are fine.
warnings.filterwarnings("ignore", message='Field name "(validate|register)"', category=UserWarning)


class Params(Section):
    paths: PathsConfig = PathsConfig()
    data: DataConfig = DataConfig()
    validate: ValidateConfig = ValidateConfig()  # type: ignore[assignment]
    prepare: PrepareConfig = PrepareConfig()
    train: TrainConfig = TrainConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    index: IndexConfig = IndexConfig()
    register: RegisterConfig = RegisterConfig()
    serve: ServeConfig = ServeConfig()
    tracking: TrackingConfig = TrackingConfig()
    stack: StackConfig = StackConfig()
    score: ScoreConfig = ScoreConfig()
    monitor: MonitorConfig = MonitorConfig()
    sweep: SweepConfig = SweepConfig()

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict with the section names of ``params.yaml``."""
        return self.model_dump()

    def flat(self) -> dict[str, Any]:
        """``section.key`` -> value, for logging as MLflow params."""
        return flatten(self.to_dict())


def flatten(tree: dict[str, Any]) -> dict[str, Any]:
    """``{"train": {"epochs": 3}}`` -> ``{"train.epochs": 3}`` (nested keys joined with dots)."""
    out: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict) and value:
            for key, sub in value.items():
                walk(f"{prefix}.{key}" if prefix else str(key), sub)
        else:
            out[prefix] = value

    walk("", tree)
    return out


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"train.epochs=2"`` -> (["train", "epochs"], 2); the value is parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected section.key=value")
    key, raw = text.split("=", 1)
    parts = [p for p in key.strip().split(".") if p]
    if len(parts) < 2:
        raise ConfigError(f"override {text!r}: key must be section.key (e.g. train.epochs=2)")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {text!r}: value is not valid YAML: {exc}") from exc
    return parts, value


def _set_path(tree: dict[str, Any], parts: list[str], value: Any, origin: str) -> None:
    node = tree
    for depth, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"{origin}: {'.'.join(parts[: depth + 1])} is not a section")
        node = child
    node[parts[-1]] = value


def _merge(base: dict[str, Any], extra: dict[str, Any], origin: str, prefix: str = "") -> None:
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value, origin, f"{prefix}{key}.")
        else:
            base[key] = copy.deepcopy(value)


def _section_keys(loc: tuple[Any, ...]) -> list[str]:
    """The keys the section at ``loc`` (``("train", "augment")``) accepts; [] if it is no section."""
    model: type[BaseModel] = Params
    for part in loc:
        field = model.model_fields.get(str(part))
        annotation = field.annotation if field is not None else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        model = annotation
    return list(model.model_fields)


def _unknown_key(loc: tuple[Any, ...], value: Any) -> str:
    """``train.epoch: unknown key (did you mean train.epochs?)``: the closest key of the same
    section; for an unknown section holding one key, the closest section with that key."""
    *parent, key = (str(p) for p in loc)
    prefix = "".join(f"{p}." for p in parent)
    close = difflib.get_close_matches(key, _section_keys(tuple(parent)), n=1)
    if not close:
        return f"{prefix}{key}: unknown key"
    suggestion = f"{prefix}{close[0]}"
    if isinstance(value, dict) and len(value) == 1:  # `trian.epochs=2`: suggest train.epochs
        inner = str(next(iter(value)))
        if inner in _section_keys((*parent, close[0])):
            suggestion += f".{inner}"
    return f"{prefix}{key}: unknown key (did you mean {suggestion}?)"


def _format_errors(exc: ValidationError, origin: str) -> str:
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"])
        if err["type"] == "extra_forbidden":
            lines.append(_unknown_key(tuple(err["loc"]), err.get("input")))
        else:
            got = err.get("input")
            lines.append(f"{loc}: {err['msg']}" + ("" if isinstance(got, dict) else f" (got {got!r})"))
    return f"invalid configuration in {origin}:\n  " + "\n  ".join(lines)


def load_params(path: str | Path = "params.yaml", overrides: list[str] | None = None) -> Params:
    """Load and validate ``params.yaml`` with preset and ``--set`` overrides applied.

    Raises ``ConfigError`` naming the offending ``section.key`` for unknown keys, wrong
    types and unparsable overrides. A missing file means all defaults.
    """
    path = Path(path)
    tree: dict[str, Any] = {}
    if path.is_file():
        loaded = yaml.safe_load(path.read_text()) or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: expected a mapping of sections at the top level")
        tree = loaded
    elif str(path) != "params.yaml":
        raise ConfigError(f"params file not found: {path}")

    parsed = [parse_override(o) for o in overrides or []]
    preset = tree.get("train", {}).get("preset") if isinstance(tree.get("train"), dict) else None
    for parts, value in parsed:
        if parts == ["train", "preset"]:
            preset = value
    if preset:
        _merge(tree, load_preset(str(preset)), f"preset {preset}")
    for (parts, value), text in zip(parsed, overrides or []):
        _set_path(tree, parts, value, f"--set {text}")
    try:
        return Params.model_validate(tree)
    except ValidationError as exc:
        origin = f"{path}" + (" with overrides" if overrides else "")
        raise ConfigError(_format_errors(exc, origin)) from None


def dump_params(params: Params) -> str:
    """YAML text of a full configuration (what a run actually used)."""
    return yaml.safe_dump(params.to_dict(), sort_keys=False)
