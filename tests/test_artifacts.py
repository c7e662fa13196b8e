"""The artifact store: content addressing, atomic folders, integrity checks."""

import json
import shutil
import tempfile
from pathlib import Path

import pytest

from ftcommon.artifacts import MANIFEST, ArtifactIntegrityError, ArtifactStore
from ftcommon.ids import sha256_bytes


def test_bytes_are_addressed_by_their_sha256(tmp_path):
    store = ArtifactStore(str(tmp_path / "store"))
    first = store.put_bytes(b"hello")
    again = store.put_bytes(b"hello")
    assert first == again
    assert first.sha256 == sha256_bytes(b"hello") and first.uri == f"blobs/{first.sha256}"
    assert store.read_bytes(first.uri) == b"hello"


def test_folders_get_a_tree_hash_and_a_manifest_written_last(tmp_path):
    folder = tmp_path / "model"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.txt").write_text("a")
    (folder / "sub" / "b.txt").write_text("b")
    store = ArtifactStore(str(tmp_path / "store"))
    artifact = store.put_dir(folder)
    assert store.exists(artifact.uri)
    assert store.put_dir(folder) == artifact
    local = store.local_dir(artifact.uri, verify=True)
    assert (local / "sub" / "b.txt").read_text() == "b"
    manifest = json.loads((local / MANIFEST).read_text())
    assert {f["path"] for f in manifest["files"]} == {"a.txt", "sub/b.txt"}
    assert not list((tmp_path / "store" / "tmp").iterdir())


def test_a_changed_file_changes_the_tree_and_corruption_is_detected(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "w.bin").write_bytes(b"1")
    store = ArtifactStore(str(tmp_path / "store"))
    first = store.put_dir(folder)
    (folder / "w.bin").write_bytes(b"2")
    second = store.put_dir(folder)
    assert first.sha256 != second.sha256
    (store.local_dir(first.uri) / "w.bin").write_bytes(b"corrupt")
    with pytest.raises(ArtifactIntegrityError):
        store.local_dir(first.uri, verify=True)


def test_remote_stores_download_into_a_verified_cache(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "w.bin").write_bytes(b"weights")
    store = ArtifactStore("memory://bucket/artifacts", cache_dir=tmp_path / "cache")
    artifact = store.put_dir(folder)
    local = store.local_dir(artifact.uri)
    assert local.parent == tmp_path / "cache"
    assert (local / "w.bin").read_bytes() == b"weights"


@pytest.mark.parametrize("scratch_root", ["same filesystem", "/dev/shm"])
def test_a_folder_given_up_is_moved_in_and_stored_as_a_copy_would_be(tmp_path, scratch_root):
    """put_dir(move_files=True) takes a scratch folder's files by renaming them where the store shares
    their filesystem, and copies them where it does not (tmpfs beside the disk: a real EXDEV)."""
    root = tmp_path if scratch_root == "same filesystem" else Path(scratch_root)
    if not root.is_dir():
        pytest.skip(f"{root} is absent")
    store = ArtifactStore(str(tmp_path / "store"))
    copied = tmp_path / "copied"
    (copied / "sub").mkdir(parents=True)
    (copied / "a.txt").write_text("a")
    (copied / "sub" / "b.bin").write_bytes(b"\0b")
    with tempfile.TemporaryDirectory(dir=root) as scratch:
        moved = Path(scratch) / "moved"
        shutil.copytree(copied, moved)
        artifact = store.put_dir(moved, move_files=True)
        assert artifact == ArtifactStore(str(tmp_path / "other")).put_dir(copied)
        local = store.local_dir(artifact.uri, verify=True)
        assert (local / "sub" / "b.bin").read_bytes() == b"\0b"
        left = {p.relative_to(moved).as_posix() for p in moved.rglob("*") if p.is_file()}
        assert left == (set() if scratch_root == "same filesystem" else {"a.txt", "sub/b.bin"})
    assert not list((tmp_path / "store" / "tmp").iterdir())
