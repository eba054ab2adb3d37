"""The object store: content addressing, compression, batch durability, dedup."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from mailvault.errors import StoreError
from mailvault.store import BlobStore


@pytest.mark.parametrize("compress", [True, False])
def test_put_publish_read(tmp_path: Path, compress: bool) -> None:
    (tmp_path / "tmp").mkdir()
    store = BlobStore(tmp_path, compress=compress)
    payloads = [b"From: a\r\n\r\nbody %d\r\n" % i for i in range(3)] + [
        b"From: a\r\n\r\nbody 0\r\n"
    ]
    staged = []
    for data in payloads:
        writer = store.writer()
        for i in range(0, len(data), 5):
            writer.write(data[i : i + 5])
        staged.append(writer.finish())
    assert store.publish(staged) == [True, True, True, False]
    assert not list((tmp_path / "tmp").iterdir())
    for data in payloads:
        digest = hashlib.sha256(data).hexdigest()
        assert store.read_bytes(digest) == data
        assert store.rehash(digest) == digest
        path = store.find(digest)
        assert path is not None
        assert path.parent == tmp_path / "objects" / digest[:2]
        assert (path.suffix == ".zst") is compress
        assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert sorted(store.iter_digests()) == sorted({hashlib.sha256(p).hexdigest() for p in payloads})


def test_invalid_digest_never_becomes_a_path(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    with pytest.raises(StoreError, match="invalid blob name"):
        store.find("../../etc/passwd")


def test_missing_blob_error_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="mailvault verify"):
        BlobStore(tmp_path).open("a" * 64)


def test_clean_tmp(tmp_path: Path) -> None:
    (tmp_path / "tmp").mkdir()
    store = BlobStore(tmp_path)
    writer = store.writer()
    writer.write(b"partial")
    assert store.clean_tmp() == 1
    assert os.listdir(tmp_path / "tmp") == []
