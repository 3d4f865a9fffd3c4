"""The serving API's request and response bodies as pydantic models (what ``/openapi.json`` shows).

Field names are the pyfunc models' (:mod:`fashionops.registry.pyfunc`): the request's ``top_k``
(``k`` is its deprecated old name, still accepted), ``/classify``'s ``label``, ``probability``,
``top_labels``, ``top_probabilities`` and ``attributes``. Items use the catalogue's column names (``articleType``,
``baseColour``, ...); an item's ``name`` is its ``productDisplayName`` (the visual-search pyfunc's
``names`` column holds one per result).

Request fields ``top_k`` and ``item_id`` are parsed by :func:`parse_k` / :func:`parse_item_id`.
A value that does not parse is not refused while the body is validated: the field holds its
:class:`FieldError`, raised when a route uses the field (:func:`used`). A value the request does
not need (a query ``top_k`` under a body ``top_k``, an ``item_id`` beside an upload) has never been
an error.

Responses carry the answering model's name, version and run, never its metrics (``/health``
has those).

Responses are validated against these models and sent without the optional keys a value did
not set (``response_model_exclude_unset``), so a body holds exactly the keys it always held.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Literal

from fastapi import HTTPException, UploadFile
from pydantic import BaseModel, ConfigDict, Field, ValidatorFunctionWrapHandler, WrapValidator

MAX_K = 50


class FieldError(HTTPException):
    """A request field whose value does not parse (422 with the reason, once the field is used)."""

    def __init__(self, detail: str) -> None:
        super().__init__(422, detail)


def parse_k(value: Any, field: str = "top_k") -> int | None:
    """``top_k`` (or the old ``k``: ``field`` names it in the message) from a form field, JSON or
    the query string: an integer in [1, MAX_K] (None: not given)."""
    if value is None:
        return None
    # int() would take True as 1 and truncate 1.7 to 1: only whole numbers are integers here
    if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
        raise FieldError(f"{field} must be an integer (got {value!r})")
    try:
        k = int(value)
    except (TypeError, ValueError, OverflowError):
        raise FieldError(f"{field} must be an integer (got {value!r})") from None
    if not 1 <= k <= MAX_K:
        raise FieldError(f"{field} must be between 1 and {MAX_K} (got {k})")
    return k


def parse_old_k(value: Any) -> int | None:
    """The deprecated ``k``: parsed like ``top_k``, its messages name ``k``."""
    return parse_k(value, "k")


def parse_item_id(value: Any) -> int | None:
    """A catalogue item id from a form field, JSON or the query string (None: not given)."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise FieldError("item_id must be an integer")
    if isinstance(value, int):
        return value
    try:
        return int(str(value).strip())
    except ValueError:
        raise FieldError(f"item_id must be an integer (got {value!r})") from None


def _parsed_when_used(parse: Callable[[Any], int | None]) -> WrapValidator:
    """Validate a field with ``parse``; a value that does not parse becomes its ``FieldError``."""

    def validate(value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        try:
            return parse(value)
        except FieldError as exc:
            return exc

    return WrapValidator(validate)


def used(value: int | None) -> int | None:
    """The value of a ``k``/``item_id`` field a route is about to use; raises its ``FieldError``."""
    if isinstance(value, FieldError):
        raise value
    return value


# The JSON schema shows the parsed type: an integer (top_k: 1..MAX_K) or nothing.
TopK = Annotated[
    Annotated[int, Field(ge=1, le=MAX_K)] | None,
    _parsed_when_used(parse_k),
    Field(description=f"how many results (1-{MAX_K}; default serve.top_k)"),
]
OldK = Annotated[
    Annotated[int, Field(ge=1, le=MAX_K)] | None,
    _parsed_when_used(parse_old_k),
    Field(description="deprecated: the old name of top_k (top_k wins when both are sent)", deprecated=True),
]
ItemId = Annotated[int | None, _parsed_when_used(parse_item_id), Field(description="a catalogue item id")]


# --------------------------------------------------------------------------- requests
class ClassifyForm(BaseModel):
    """``POST /classify`` multipart body."""

    file: UploadFile = Field(description="the product photo (JPEG, PNG, WebP, ...)")
    top_k: TopK = None
    k: OldK = None


class SearchForm(BaseModel):
    """``POST /search`` multipart (or urlencoded) body: a photo in ``file``, or an ``item_id``."""

    file: UploadFile | None = Field(None, description="the query photo; wins over item_id")
    item_id: ItemId = None
    top_k: TopK = None
    k: OldK = None


class SearchByItem(BaseModel):
    """``POST /search`` JSON body: the items most similar to a catalogue item."""

    item_id: ItemId = None
    top_k: TopK = None
    k: OldK = None


# --------------------------------------------------------------------------- responses
class ErrorBody(BaseModel):
    """Every error response: what went wrong, in words."""

    detail: str


class ModelRef(BaseModel):
    """The registered model that answered: registry name/version/run (local models: the directory's
    name and version ``local``). Never a filesystem path: clients need not know the server's layout,
    and never its metrics (``/health`` shows them once, not every answer)."""

    model_config = ConfigDict(extra="ignore")

    name: str | None = None
    version: str | int | None = None
    run_id: str | None = None
    uri: str | None = None


class ModelInfo(ModelRef):
    """``/health``'s model entry: the reference and the metrics it was registered with."""

    model_config = ConfigDict(extra="allow")

    metrics: dict[str, Any] | None = None


class IndexSettings(BaseModel):
    """The index's own settings (what an answer and ``/health`` show of it)."""

    n_items: int | None = None
    backend: str | None = None  # annoy | hnsw (absent: an index built before HNSW existed, Annoy)
    n_trees: int | None = None  # annoy
    hnsw_m: int | None = None  # hnsw: graph degree M
    ef_search: int | None = None  # hnsw: ef (= search_k)
    search_k: int | None = None
    metric: str | None = None
    dim: int | None = None


class IndexInfo(ModelInfo, IndexSettings):
    """``/health``'s index entry: its model entry plus the index's own settings."""


class Served(BaseModel):
    """Where the answering pair came from (added to a response's ``model``)."""

    alias: str | None = None
    source: str


class ClassifierAnswer(ModelRef, Served):
    """The ``model`` of a ``/classify`` answer (no metrics)."""


class IndexAnswer(ModelRef, IndexSettings, Served):
    """The ``model`` of a ``/search`` answer: the index and its settings (no metrics)."""

    model_config = ConfigDict(extra="ignore")


class AttributeTag(BaseModel):
    """One attribute's most probable value and its probability."""

    label: str
    probability: float


class ClassifyResponse(BaseModel):
    """The predicted class and its probability, then the ``top_k`` most probable classes and their
    probabilities, most probable first, and every attribute the classifier tags (the classifier
    pyfunc's output columns)."""

    label: str
    probability: float
    top_labels: list[str]
    top_probabilities: list[float]
    attributes: dict[str, AttributeTag] = Field(
        description="every attribute the classifier tags -> its most probable value and probability, the "
        "primary label (the answer's label) first; a single-head classifier gives the primary alone",
        examples=[
            {
                "articleType": {"label": "Tshirts", "probability": 0.91},
                "gender": {"label": "Men", "probability": 0.88},
                "baseColour": {"label": "Black", "probability": 0.64},
            }
        ],
    )
    model: ClassifierAnswer


class Item(BaseModel):
    """A catalogue item."""

    id: int
    name: str | None  # productDisplayName
    masterCategory: str | None  # the catalogue's column names
    subCategory: str | None
    articleType: str | None
    # absent (None) for an index built before items carried them
    gender: str | None = None
    baseColour: str | None = None
    year: int | None = None
    image_url: str
    item_url: str


class SearchHit(Item):
    """A search result: an item and its distance to the query (smaller is closer)."""

    distance: float


class SearchQuery(BaseModel):
    """What was searched for: an upload (its file name) or a catalogue item."""

    type: Literal["upload", "item"]
    filename: str | None = None
    item: Item | None = None


class SearchResponse(BaseModel):
    query: SearchQuery
    results: list[SearchHit]
    model: IndexAnswer


class PairInfo(BaseModel):
    """The classifier/index pair being served."""

    source: str
    alias: str | None
    classifier: ModelInfo
    index: IndexInfo
    fingerprint: str
    loaded_at: float
    items: int
    classes: int
    label_column: str | None
    jit: bool


class Health(PairInfo):
    """``GET /health``: the served pair, reloads and settings."""

    status: Literal["ok"]
    reloads: int
    last_reload_error: str | None
    auth: bool
    reload_poll_s: float


class ReloadResult(PairInfo):
    """``POST /reload``: whether a new pair was swapped in, then the pair now served."""

    reloaded: bool
    changed: bool | None = None
    previous: str | None = None
