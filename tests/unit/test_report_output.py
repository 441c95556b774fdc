"""A stored report file read back a chunk at a time (``Output.chunks``)."""

from __future__ import annotations

import gzip
import hashlib
import random

import pytest

from reports.jobs import Output


def _rendered(size: int) -> bytes:
    """Text like a statement's: repetitive (it compresses well), not uniform."""
    rng = random.Random(size)
    lines = [
        f"w{rng.randrange(10_000):05d},token,0,usage_daily,{rng.randrange(10**6)}\n"
        for _ in range(size // 30)
    ]
    return "".join(lines).encode()


@pytest.mark.parametrize("most", [1, 1000, 1 << 20])
def test_a_gzip_stored_file_is_read_back_a_bounded_chunk_at_a_time(most: int) -> None:
    rendered = _rendered(300_000 if most > 1 else 20_000)
    stored = gzip.compress(rendered, compresslevel=6, mtime=0)
    out = Output("f.csv", "text/csv", hashlib.sha256(rendered).hexdigest(), stored, "gzip")
    chunks = list(out.chunks(most))
    assert b"".join(chunks) == rendered == out.content
    assert all(0 < len(chunk) <= most for chunk in chunks)
    assert len(chunks) >= len(rendered) // most


def test_a_file_stored_as_rendered_is_sliced() -> None:
    rendered = _rendered(50_000)
    out = Output("f.parquet", "application/vnd.apache.parquet", "x", rendered, None)
    chunks = list(out.chunks(4096))
    assert b"".join(chunks) == rendered
    assert max(len(c) for c in chunks) == 4096


def test_a_truncated_gzip_file_is_an_error_not_a_short_file() -> None:
    stored = gzip.compress(_rendered(100_000), mtime=0)
    out = Output("f.json", "application/json", "x", stored[: len(stored) // 2], "gzip")
    with pytest.raises(ValueError, match="ends before"):
        b"".join(out.chunks())


@pytest.mark.parametrize("fmt", ["csv", "json", "html", "parquet"])
def test_a_file_is_stored_as_the_same_bytes_whenever_it_is_made(fmt: str) -> None:
    """The same rendered file, stored now and stored later, is the same bytes (a gzip
    header carries no time), so a report made again or a backup of it compares equal;
    its digest is of the file as rendered, whatever the pieces it came in."""
    from reports.jobs import _stored

    rendered = _rendered(40_000)
    first = _stored(fmt, [rendered[:1000], b"", rendered[1000:]])
    later = _stored(fmt, [rendered])
    assert first == later
    assert first.sha256 == hashlib.sha256(rendered).hexdigest()
    if fmt == "parquet":  # compressed by its own format
        assert (first.encoding, first.data) == (None, rendered)
    else:
        assert first.encoding == "gzip"
        assert first.data[4:8] == bytes(4)  # the header's modification time: none
        assert gzip.decompress(first.data) == rendered
