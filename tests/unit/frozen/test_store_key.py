"""The embedding store's key: what changes the embeddings changes the key, and nothing else does."""

from __future__ import annotations

import pyarrow as pa

from hssal_ray.config import load_config
from hssal_ray.frozen.encode import store_key

IDS = pa.array(["a/1.tif", "a/2.tif", "b/3.tif"])


def key(*over: str) -> str:
    return store_key(load_config(None, ["ssl.finetune=frozen", *over]), IDS, "/data/chips")


def test_band_selection_and_scaling_change_the_key() -> None:
    base = key()
    assert key("data.band_select=[3,2,1]") != base  # other bands -> other features
    assert key("data.value_range=[0,3000]") != key("data.value_range=[0,10000]") != base
    assert key("data.band_select=[3,2,1]") != key("data.band_select=[1,2,3]")


def test_settings_outside_the_encode_keep_the_key() -> None:
    base = key()
    assert key("query.budget=7", "seed=3", "ssl.lr=0.1") == base  # a shared cache across runs and seeds
    assert store_key(load_config(None, ["ssl.finetune=frozen"]), IDS, "/data/other") != base


def test_bfloat16_encodes_get_their_own_store_and_channels_last_does_not() -> None:
    """bf16 autocast moves the features (lowest row cosine 0.94 on UCM): a store of its own. channels_last
    moves them by fp32 rounding: it shares the store, so caches built before it stay in use."""
    base = key()
    assert key("ssl.channels_last=false") == key("ssl.channels_last=true") == base
    assert key("ssl.amp=none") == key("ssl.amp=auto") == base  # auto: no autocast on a CPU encode
    assert key("ssl.amp=bf16") != base
    assert key("ssl.amp=auto", "resources.use_gpu=true") == key("ssl.amp=bf16")  # auto on a GPU: bf16
