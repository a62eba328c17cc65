"""Which files a backfill reads (img2pose_client.inputs): directories, files, list files."""

from __future__ import annotations

import os

import pytest

from img2pose_client import inputs


def test_directories_are_walked_sorted_recursively_keeping_image_extensions(tmp_path):
    for name in ["b.JPG", "a.png", "sub/c.webp", "sub/deeper/d.TIFF", "notes.txt", "z.jpeg.bak", "sub/e.gif"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "link").symlink_to(tmp_path / "sub")  # not followed: no duplicates, no cycles
    found = [item.path for item in inputs.iter_inputs([str(tmp_path)])]
    assert found == [str(tmp_path / n) for n in ["a.png", "b.JPG", "sub/c.webp", "sub/deeper/d.TIFF", "sub/e.gif"]]


def test_explicit_files_and_list_files(tmp_path, monkeypatch):
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "x.jpg").write_bytes(b"x")
    (tmp_path / "odd.dat").write_bytes(b"x")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "list.TXT").write_text("odd.dat\n\nphotos\r\n/missing.jpg\n")
    (tmp_path / "paths").write_text(f"{tmp_path}/odd.dat\n")
    found = [item.path for item in inputs.iter_inputs(["list.TXT", "@paths", "odd.dat"])]
    odd = str(tmp_path / "odd.dat")
    assert found == [odd, str(tmp_path / "photos" / "x.jpg"), "/missing.jpg", odd, odd]
    with pytest.raises(OSError):
        list(inputs.iter_inputs(["absent.lst"]))


def test_an_unlistable_directory_is_an_error_item(tmp_path, monkeypatch):
    (tmp_path / "a.jpg").write_bytes(b"x")
    (tmp_path / "locked").mkdir()
    real_scandir = os.scandir

    def scandir(path):
        if str(path).endswith("locked"):
            raise PermissionError(13, "Permission denied")
        return real_scandir(path)

    monkeypatch.setattr(inputs.os, "scandir", scandir)
    items = list(inputs.iter_inputs([str(tmp_path)]))
    assert items[0] == inputs.Item(str(tmp_path / "a.jpg"))
    assert items[1].path == str(tmp_path / "locked") and "Permission denied" in items[1].error
