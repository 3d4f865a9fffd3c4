"""The index stage's encoder: the prepared pixel cache, the background reader and the NHWC trace
give what decoding every file with the eager model gives."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from fashionops.data.imaging import load_rgb
from fashionops.errors import DataError
from fashionops.inference.predictor import Predictor
from fashionops.search.items import PixelCache, catalogue_items, embed_catalogue, load_item_pixels


@pytest.fixture(scope="module")
def model_and_items(tiny_pipeline):
    p = tiny_pipeline
    predictor = Predictor.from_dir(p.paths.classifier_dir)
    cat = catalogue_items(p.paths.raw_dir)
    return p, predictor, cat


def test_cached_pixels_equal_decoded_files(model_and_items):
    p, predictor, cat = model_and_items
    cache = PixelCache.open(p.paths.prepared_dir)
    assert cache is not None and cache.size == tuple(predictor.pixel_size)
    files = cat["file"].astype(str).tolist()
    images, shas, n_cached = load_item_pixels(files, predictor, cache)
    prepared = pd.read_parquet(Path(p.paths.prepared_dir) / "index.parquet")
    assert n_cached == len(set(shas) & set(prepared["sha256"]))  # every prepared image comes from the cache
    assert 0 < n_cached  # the tiny catalogue's images are the prepared ones
    decoded = np.stack([predictor.fit(load_rgb(f))[0] for f in files])
    np.testing.assert_array_equal(images, decoded)


def test_copies_are_never_taken_from_the_cache(model_and_items, tmp_path):
    p, predictor, cat = model_and_items
    prepared = tmp_path / "prepared"
    shutil.copytree(p.paths.prepared_dir, prepared)
    index = pd.read_parquet(prepared / "index.parquet")
    index["is_copy"] = True  # as if every row were an augmented copy
    index.to_parquet(prepared / "index.parquet", index=False)
    cache = PixelCache.open(prepared)
    assert cache is not None and cache.row_of_sha == {}
    assert PixelCache.open(tmp_path / "nothing-here") is None


def test_encoder_matches_eager_decoding(model_and_items):
    p, predictor, cat = model_and_items
    cat = cat.iloc[:40]
    eager, _ = embed_catalogue(cat, predictor, 16, flip_tta=True, with_probs=True, pixels=None)
    encoder = predictor.compiled(["embed_with_logits"], channels_last=True)
    assert encoder is not predictor and encoder.channels_last and encoder.is_scripted
    threads_before = torch.get_num_threads()
    cache = PixelCache.open(p.paths.prepared_dir)
    # two single-threaded forward passes at a time, three chunks read in the background
    fast, items = embed_catalogue(cat, encoder, 8, flip_tta=True, with_probs=True, pixels=cache, chunk=16, threads=2)
    assert torch.get_num_threads() == threads_before  # restored after the parallel passes
    assert len(items) == len(cat) and list(items["annoy_idx"]) == list(range(len(cat)))
    np.testing.assert_allclose(fast.embeddings, eager.embeddings, atol=1e-4)
    assert fast.class_probs is not None and eager.class_probs is not None
    np.testing.assert_allclose(fast.class_probs, eager.class_probs, atol=1e-4)
    # the eager module was not switched to channels_last by tracing a copy of it
    again, _ = embed_catalogue(cat.iloc[:8], predictor, 8, flip_tta=True, with_probs=True)
    np.testing.assert_array_equal(again.embeddings, eager.embeddings[:8])


def test_another_input_size_decodes_the_files(model_and_items):
    p, predictor, cat = model_and_items
    h, w = predictor.input_size
    # a model fed images of its own input size (no cache_height/width: one trained before they existed)
    unsized = {"input_height": h + 8, "cache_height": None, "cache_width": None}
    bigger = Predictor(predictor.module, predictor.spec.model_copy(update=unsized))
    assert bigger.input_size == bigger.pixel_size == (h + 8, w)
    cache = PixelCache.open(p.paths.prepared_dir)
    files = cat["file"].astype(str).tolist()[:5]
    encoded, _ = embed_catalogue(cat.iloc[:5], bigger, 4, pixels=cache)
    direct = bigger.encode([load_rgb(f) for f in files], 4)
    np.testing.assert_allclose(encoded.embeddings, direct.embeddings, atol=1e-5)


def test_unreadable_file_names_the_file(model_and_items, tmp_path):
    _, predictor, cat = model_and_items
    broken = cat.iloc[:3].copy()
    missing = tmp_path / "gone.jpg"
    broken.loc[broken.index[1], "file"] = str(missing)
    with pytest.raises(DataError, match="gone.jpg"):
        embed_catalogue(broken, predictor, 2)
