"""quant_engine.storage.atomic: a replaced file is whole, and a private one is private from its first byte."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from quant_engine.storage.atomic import write_bytes_atomic


@pytest.fixture
def open_umask():
    previous = os.umask(0)
    yield
    os.umask(previous)


def test_a_secret_is_created_private_whatever_the_umask(tmp_path: Path, open_umask: None) -> None:
    secret = write_bytes_atomic(tmp_path / "secret", b"s3cret", mode=0o600)
    public = write_bytes_atomic(tmp_path / "public", b"data")
    assert secret.stat().st_mode & 0o777 == 0o600 and secret.read_bytes() == b"s3cret"
    assert public.stat().st_mode & 0o777 == 0o666


def test_replacing_leaves_no_temp_file_and_a_failed_write_keeps_the_old_contents(tmp_path: Path) -> None:
    path = write_bytes_atomic(tmp_path / "a" / "file", b"old")
    with pytest.raises(TypeError):
        write_bytes_atomic(path, "not bytes")  # type: ignore[arg-type]
    assert path.read_bytes() == b"old" and os.listdir(path.parent) == ["file"]
    write_bytes_atomic(path, b"new")
    assert path.read_bytes() == b"new" and os.listdir(path.parent) == ["file"]
