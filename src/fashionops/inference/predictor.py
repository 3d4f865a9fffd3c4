"""``Predictor``: the one forward path over a trained model, used by evaluate, the index, both
pyfunc models and the server.

A predictor holds a module and its :class:`~fashionops.models.spec.ModelSpec` and turns uint8
RGB images into class probabilities, top-k labels, embeddings, or the index's encoding
(embedding + probabilities, optionally averaged with the mirror image). A multi-attribute model
(``spec.attributes``: extra heads) is classified in one pass of ``module.attribute_logits``;
:meth:`Predictor.classify` gives every attribute (the primary label first) for every model.
Resizing follows one rule: a uint8 NHWC batch is resized on the tensor, as training resizes the
prepared cache; single images of any size are resized with PIL first, as the cache itself was made.
"""

from __future__ import annotations

import copy
import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from fashionops.errors import DataError, FashionOpsError
from fashionops.inference.preprocess import preprocess_batch
from fashionops.models.spec import ModelSpec

log = logging.getLogger(__name__)

Images = Sequence[np.ndarray] | np.ndarray


@dataclass
class Encoded:
    """Images as the index sees them: L2-normalised embeddings (N, D) and, from a classifier
    when asked, its class probabilities (N, C) in the order of ``spec.classes``."""

    embeddings: np.ndarray
    class_probs: np.ndarray | None = None

    @classmethod
    def concat(cls, parts: Sequence[Encoded]) -> Encoded:
        """``parts`` one after the other (probabilities only when every part has them)."""
        probs = [p.class_probs for p in parts if p.class_probs is not None]
        return cls(
            np.concatenate([p.embeddings for p in parts], axis=0),
            np.concatenate(probs, axis=0) if len(probs) == len(parts) else None,
        )


class Predictor:
    """A trained model ready for inference (eval mode, no gradients) on ``device``."""

    def __init__(
        self, module: Any, spec: ModelSpec, device: str | torch.device = "cpu", channels_last: bool = False
    ) -> None:
        self.module = module
        self.spec = spec
        self.device = torch.device(device)
        # whether batches go to the module in channels_last memory format (see ``compiled``)
        self.channels_last = channels_last

    @classmethod
    def from_dir(cls, model_dir: str | Path, device: str | torch.device = "cpu") -> Predictor:
        """Load ``weights.pt`` + ``model_spec.json`` of a saved model directory."""
        from fashionops.models.factory import load_model

        module, spec = load_model(model_dir, device)
        # Inference only, but never flip autograd off process-wide: callers may train afterwards.
        module.requires_grad_(False)
        return cls(module, spec, device)

    # ------------------------------------------------------------------ what the model is
    @property
    def input_size(self) -> tuple[int, int]:
        """``(height, width)`` the model takes."""
        return self.spec.input_size

    @property
    def pixel_size(self) -> tuple[int, int]:
        """``(height, width)`` :meth:`fit` brings images to: the prepared cache's size the model was
        trained from (a model that upsamples it resizes on the tensor, as training did)."""
        return self.spec.pixel_size

    @property
    def task(self) -> str:
        return self.spec.task

    @property
    def classes(self) -> list[str]:
        """Class names in the order of the model's outputs (``0..C-1`` when the spec has none)."""
        return list(self.spec.classes) or [str(i) for i in range(self.spec.num_classes)]

    @property
    def attributes(self) -> dict[str, list[str]]:
        """Every attribute the model tags -> its classes, the primary label (``spec.label_column``,
        :attr:`classes`) first, then the extra heads in ``attribute_logits`` order."""
        return {self.spec.label_column: self.classes, **{a: list(c) for a, c in self.spec.attributes.items()}}

    @property
    def is_scripted(self) -> bool:
        """Whether the module is a (frozen) TorchScript trace."""
        return isinstance(self.module, torch.jit.ScriptModule)

    def require_classifier(self, where: str) -> Predictor:
        """``self``, or an error naming ``where`` when the model is not a classifier."""
        if not self.spec.is_classifier:
            raise FashionOpsError(f"{where} holds a {self.spec.task} model; a classifier is needed")
        return self

    # ------------------------------------------------------------------ input
    def fit(self, images: Images) -> np.ndarray:
        """Images as one uint8 NHWC batch at :attr:`pixel_size` (PIL resize of those of another
        size, as the prepared cache was made; the forward pass resizes on to the input size)."""
        h, w = self.pixel_size
        if isinstance(images, np.ndarray) and images.ndim == 4 and images.shape[1:3] == (h, w):
            return np.ascontiguousarray(images)
        if isinstance(images, np.ndarray) and images.ndim == 3:
            images = [images]
        from fashionops.data.imaging import resize_rgb

        return np.stack([img if img.shape[:2] == (h, w) else resize_rgb(img, h, w) for img in images])

    def _batches(self, images: Images, batch_size: int) -> Any:
        """Normalised float NCHW tensors of at most ``batch_size`` images, in order."""
        if len(images) == 0:
            raise DataError("no images given")
        batch = images if isinstance(images, np.ndarray) and images.ndim == 4 else self.fit(images)
        for start in range(0, len(batch), batch_size):
            yield self._layout(preprocess_batch(batch[start : start + batch_size], self.spec, self.device))

    def _layout(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` in the memory format the module was prepared for."""
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    # ------------------------------------------------------------------ outputs
    def predict_proba(self, images: Images, batch_size: int = 256) -> np.ndarray:
        """Softmax probabilities (N, C) float32 over :attr:`classes`."""
        self.require_classifier("the model")
        out = []
        with torch.inference_mode():
            for x in self._batches(images, batch_size):
                (logits,) = self._head_logits(x, "forward")
                out.append(torch.softmax(logits, dim=1).cpu().numpy())
        return np.concatenate(out)

    def _head_logits(self, x: torch.Tensor, method: str) -> tuple[torch.Tensor, ...]:
        """Float logits of every head ``method`` gives for batch ``x``; with ``spec.flip_tta`` the
        mean of each image's and its mirror image's (one pass over both, as :meth:`encode`)."""
        call = self.module if method == "forward" else getattr(self.module, method)
        if not self.spec.flip_tta:
            return tuple(t.float() for t in _as_tuple(call(x)))
        m = x.shape[0]
        both = _as_tuple(call(self._layout(_with_mirror_images(x))))
        return tuple(_mirror_mean(t, m) for t in both)

    @staticmethod
    def top_k(probs: np.ndarray, k: int) -> np.ndarray:
        """Indexes (N, k') of the ``k`` most probable classes per row, most probable first
        (``k'`` = ``k`` clipped to [1, C])."""
        k = max(1, min(int(k), probs.shape[1]))
        return np.argsort(-probs, axis=1)[:, :k]

    def predict_attribute_proba(self, images: Images, batch_size: int = 256) -> dict[str, np.ndarray]:
        """Softmax probabilities per attribute (name -> (N, C) float32 over its classes), in
        :attr:`attributes` order. A single-head model gives its primary label alone (the same
        pass as :meth:`predict_proba`); a multi-attribute model runs ``attribute_logits`` once
        for all heads."""
        names = list(self.attributes)
        if not self.spec.attributes:
            return {names[0]: self.predict_proba(images, batch_size)}
        self.require_classifier("the model")
        parts: list[list[np.ndarray]] = [[] for _ in names]
        with torch.inference_mode():
            for x in self._batches(images, batch_size):
                heads = self._head_logits(x, "attribute_logits")
                if len(heads) != len(names):
                    raise FashionOpsError(
                        f"the model gives {len(heads)} heads but its spec names {len(names)} attributes ({names})"
                    )
                for out, logits in zip(parts, heads):
                    out.append(torch.softmax(logits, dim=1).cpu().numpy())
        return {name: np.concatenate(p) for name, p in zip(names, parts)}

    def classify(self, images: Images, k: int, batch_size: int = 256) -> list[dict[str, Any]]:
        """Per image: ``{"label", "probability", "top": [{"label", "probability"}, ...],
        "attributes": {name: {"label", "probability"}}}``; ``top`` is the primary label's ``k``
        most probable classes, ``attributes`` every attribute's most probable class, the primary
        first (a single-head model: the primary alone, so the key is always there)."""
        probs = self.predict_attribute_proba(images, batch_size)
        primary = next(iter(probs.values()))
        orders = self.top_k(primary, k)
        classes = self.classes
        out = []
        for row, order, tags in zip(primary, orders, self.attribute_tags(probs, orders[:, 0])):
            top = [{"label": classes[i], "probability": float(row[i])} for i in order]
            out.append({"label": top[0]["label"], "probability": top[0]["probability"], "top": top, "attributes": tags})
        return out

    def attribute_tags(
        self, probs: dict[str, np.ndarray], primary_best: Sequence[int] | np.ndarray
    ) -> list[dict[str, Any]]:
        """Per image ``{attribute: {"label", "probability"}}`` from :meth:`predict_attribute_proba`'s
        output, the primary first; the primary's class is ``primary_best`` (the answer's top-1
        class, so the two agree even on a tie), every other attribute's its most probable."""
        attributes = self.attributes
        names = list(probs)
        best = [[int(i) for i in primary_best], *(probs[name].argmax(axis=1).tolist() for name in names[1:])]
        return [
            {
                name: {"label": attributes[name][b[n]], "probability": float(probs[name][n, b[n]])}
                for name, b in zip(names, best)
            }
            for n in range(len(best[0]))
        ]

    def encode(
        self, images: Images, batch_size: int = 256, flip_tta: bool = False, with_probs: bool = False
    ) -> Encoded:
        """Embed images with ``module.embed`` (and the head, for ``with_probs``).

        ``flip_tta``: each image and its mirror image go through the model together; the
        embedding is the normalised sum of both normalised features and the logits their mean
        (measured: +0.5 points same-type precision@5 on the validation split). Probabilities
        need a classifier (``embed_with_logits``); an autoencoder gives ``class_probs=None``.
        A search projection is applied by the searcher, not here.
        """
        with_probs = self.encoding_method(with_probs) == "embed_with_logits"
        self.module.eval()
        embeddings: list[np.ndarray] = []
        probs: list[np.ndarray] = []
        with torch.inference_mode():
            for x in self._batches(images, batch_size):
                m = x.shape[0]
                if flip_tta:
                    x = self._layout(_with_mirror_images(x))
                feats, logits = self.module.embed_with_logits(x) if with_probs else (self.module.embed(x), None)
                feats = F.normalize(feats.reshape(feats.shape[0], -1).float(), dim=1)
                if flip_tta:
                    feats = F.normalize(feats[:m] + feats[m:], dim=1)
                    logits = None if logits is None else _mirror_mean(logits, m)
                embeddings.append(feats.cpu().numpy().astype(np.float32))
                if logits is not None:
                    probs.append(torch.softmax(logits.float(), dim=1).cpu().numpy().astype(np.float32))
        return Encoded(np.concatenate(embeddings, axis=0), np.concatenate(probs, axis=0) if probs else None)

    def encoding_method(self, with_probs: bool) -> str:
        """The module method :meth:`encode` calls (what a trace for encoding must keep)."""
        return "embed_with_logits" if with_probs and hasattr(self.module, "embed_with_logits") else "embed"

    def embed(self, images: Images, batch_size: int = 256) -> np.ndarray:
        """L2-normalised embeddings (N, D) float32."""
        return self.encode(images, batch_size).embeddings

    def embedding_dim(self) -> int:
        """Size of :meth:`embed`'s vectors, measured on a blank image."""
        h, w = self.input_size
        return int(self.embed(np.full((1, h, w, 3), 255, dtype=np.uint8)).shape[-1])

    # ------------------------------------------------------------------ speed
    def traced_methods(self, methods: list[str]) -> list[str]:
        """``methods`` plus ``attribute_logits`` when ``forward`` is among them and the model has
        extra heads: what :meth:`classify` calls must be in the trace of a classifier."""
        if "forward" in methods and self.spec.attributes and "attribute_logits" not in methods:
            return [*methods, "attribute_logits"]
        return list(methods)

    def compiled(self, methods: list[str], *, channels_last: bool = False) -> Predictor:
        """A predictor over a frozen TorchScript trace of ``methods``; ``self`` on any doubt.
        A multi-attribute model's trace of ``forward`` also holds ``attribute_logits``
        (:meth:`traced_methods`).

        At 80x60 a forward pass is mostly Python overhead of many small layers; a frozen trace
        (batch norms folded into the convolutions) roughly halves it. ``channels_last``: trace a
        copy of the module in NHWC memory format and feed it NHWC batches, the layout oneDNN's
        CPU convolutions prefer (measured on the 2-core machine for bulk encoding: 2x the
        eager module's images/s; see benchmarks/bench_embed.py). The trace is made on a pair (a
        query and its mirror image go through together) and checked against the eager module on
        batches of 1 and 2.
        """
        methods = self.traced_methods(methods)
        h, w = self.input_size
        x = torch.rand(2, 3, h, w, generator=torch.Generator().manual_seed(0)).to(self.device)
        module = self.module
        try:
            traced_module = module
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
                traced_module = copy.deepcopy(module).to(memory_format=torch.channels_last)
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                traced = torch.jit.trace_module(traced_module, {m: x for m in methods}, check_trace=False)
                frozen = torch.jit.freeze(traced.eval(), preserved_attrs=[m for m in methods if m != "forward"])
                for m in methods:
                    for probe in (x[:1], x):
                        pairs = zip(_as_tuple(getattr(module, m)(probe)), _as_tuple(getattr(frozen, m)(probe)))
                        for want, got in pairs:
                            if want.shape != got.shape or not torch.allclose(want, got, atol=1e-4, rtol=1e-3):
                                raise ValueError(f"traced {m} differs from eager on a batch of {len(probe)}")
        except Exception as exc:  # noqa: BLE001 - any tracing trouble means: serve the eager module
            log.warning("TorchScript trace failed (%s); using the eager module", exc)
            return self
        return Predictor(frozen, self.spec, self.device, channels_last=channels_last)


def _with_mirror_images(x: torch.Tensor) -> torch.Tensor:
    """Batch ``x`` (NCHW) followed by its images mirrored left to right: one pass for both."""
    return torch.cat([x, torch.flip(x, dims=[3])])


def _mirror_mean(out: torch.Tensor, m: int) -> torch.Tensor:
    """Mean of each image's and its mirror image's output (float), from a pass over
    :func:`_with_mirror_images` of ``m`` images."""
    return (out[:m].float() + out[m:].float()) / 2


def _as_tuple(out: Any) -> tuple[Any, ...]:
    return tuple(out) if isinstance(out, (tuple, list)) else (out,)
