from __future__ import annotations

import pytest

#: Every codec a store may be opened with; entries record what was applied.
CODECS = ["none", "lz4", "zstd", "gzip", "blosc2", "blosc2:zstd"]

#: What numpy/pandas/pickle-with-buffers entries record for each store codec.
ARRAY_LABEL = {
    "none": "none",
    "lz4": "blosc2:lz4",
    "zstd": "blosc2:zstd",
    "gzip": "blosc2:zlib",
    "blosc2": "blosc2:lz4",
    "blosc2:zstd": "blosc2:zstd",
}


@pytest.fixture(params=CODECS)
def codec(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def array_label(codec: str) -> str:
    """The codec label an array-like entry records when compression paid off."""
    return ARRAY_LABEL[codec]
