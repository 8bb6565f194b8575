"""A data root is untrusted: links out of it, dangling links, FIFOs and empty class folders.

By default only files whose resolved path is inside the resolved root are used (``data.follow_symlinks``
restores following every link); whatever the scan does not use is listed with a reason (the
catalog's ``refused``, then ``RUN/bad_samples.csv``) and logged once with a count; a FIFO is never
opened for reading, by the scan or by a later read.
"""

from __future__ import annotations

import csv
import logging
import os
import threading
import time

import pytest

from hssal_ray.config import load_config
from hssal_ray.data.bootstrap import ensure
from hssal_ray.data.catalog import scan
from hssal_ray.data.decode import decode_batch
from hssal_ray.data.fetch import load_bytes
from tests.data.make_tiny import tiny_imagefolder


def _tree(tmp_path) -> tuple[str, str]:
    """A 2-class root (``synthetic_farmland``, ``synthetic_forest``, 3 PNGs each) and an outside folder."""
    root = str(tmp_path / "ds")
    tiny_imagefolder(root, num_classes=2, per_class=3, size=16)
    outside = tmp_path / "outside"
    (outside / "scenes").mkdir(parents=True)
    first = os.path.join(root, "synthetic_farmland", "synthetic_farmland_0000.png")
    png = open(first, "rb").read()
    (outside / "elsewhere.png").write_bytes(png)
    (outside / "scenes" / "s.png").write_bytes(png)
    (outside / "secret.txt").write_text("root:x:0:0:root:/root:/bin/bash\n")
    return root, str(outside)


def _link(target: str, *where: str) -> None:
    os.symlink(target, os.path.join(*where))


def _bad_rows(run_dir: str) -> dict[str, str]:
    with open(os.path.join(run_dir, "bad_samples.csv"), newline="") as f:
        return {r["sample_id"]: r["reason"] for r in csv.DictReader(f)}


def test_links_out_of_the_root_are_refused_by_default_and_links_inside_it_kept(tmp_path, caplog):
    root, outside = _tree(tmp_path)
    farm = os.path.join(root, "synthetic_farmland")
    _link(os.path.join(outside, "elsewhere.png"), farm, "out.png")  # a file elsewhere
    _link(os.path.join(outside, "secret.txt"), farm, "passwd.jpg")  # any file behind an image name
    _link(os.path.join(outside, "scenes"), root, "linked_class")  # a folder elsewhere
    _link("synthetic_farmland_0001.png", farm, "inside.png")  # inside the root: kept
    os.makedirs(os.path.join(root, ".store", "imgs"))
    os.replace(os.path.join(farm, "synthetic_farmland_0002.png"), os.path.join(root, ".store/imgs/a.png"))
    _link(os.path.join(root, ".store", "imgs"), root, "stored_class")  # a folder inside the root: kept

    with caplog.at_level(logging.WARNING, logger="hssal_ray.data.catalog"):
        cat = scan(root)
    ids = set(cat.table["sample_id"].to_pylist())
    assert "synthetic_farmland/inside.png" in ids and "stored_class/a.png" in ids
    assert not {"synthetic_farmland/out.png", "synthetic_farmland/passwd.jpg", "linked_class/s.png"} & ids
    assert cat.class_names == ("stored_class", "synthetic_farmland", "synthetic_forest")
    real = os.path.realpath(outside)
    assert dict(cat.refused) == {
        "linked_class/": f"symlink outside data root: {real}/scenes",
        "synthetic_farmland/out.png": f"symlink outside data root: {real}/elsewhere.png",
        "synthetic_farmland/passwd.jpg": f"symlink outside data root: {real}/secret.txt",
    }
    (line,) = [r.getMessage() for r in caplog.records if "not used" in r.getMessage()]
    assert "3 entries not used (3 symlink outside data root)" in line and "data.follow_symlinks" in line

    followed = scan(root, follow_symlinks=True)  # the explicit option: every link is followed
    assert {"synthetic_farmland/out.png", "linked_class/s.png"} <= set(
        followed.table["sample_id"].to_pylist()
    )
    assert "linked_class" in followed.class_names and followed.refused == ()


def test_reading_refuses_a_file_that_became_a_link_out_of_the_root(tmp_path):
    root, outside = _tree(tmp_path)
    cat = scan(root)
    sid = "synthetic_forest/synthetic_forest_0000.png"
    path = os.path.join(root, sid)
    os.remove(path)
    _link(os.path.join(outside, "secret.txt"), path)  # swapped after the scan (or on a resume)
    row = cat.table.filter(cat.table["sample_id"].to_numpy(zero_copy_only=False) == sid)
    why: dict[int, str] = {}
    assert load_bytes(cat.root, cat.kind, row, unreadable=why) == [None]
    assert why == {0: f"symlink outside data root: {os.path.realpath(outside)}/secret.txt"}
    _, _, bad = decode_batch([None], [sid], unreadable=why)
    assert bad == [(sid, f"unreadable: {why[0]}")]
    assert load_bytes(cat.root, cat.kind, row, follow_symlinks=True) == [b"root:x:0:0:root:/root:/bin/bash\n"]


def test_dangling_links_fifos_and_empty_class_folders_are_listed_and_logged_once(tmp_path, caplog):
    root, _ = _tree(tmp_path)
    farm = os.path.join(root, "synthetic_farmland")
    _link(os.path.join(root, "gone.png"), farm, "dangling.png")
    os.mkfifo(os.path.join(farm, "pipe.png"))
    os.mkdir(os.path.join(root, "empty_class"))
    os.mkdir(os.path.join(root, "notes_only"))
    open(os.path.join(root, "notes_only", "README.txt"), "w").close()
    _link("..", farm, "up")  # a loop: the root itself

    with caplog.at_level(logging.WARNING, logger="hssal_ray.data.catalog"):
        cat = scan(root)  # never opens the FIFO: this would block forever otherwise
    assert dict(cat.refused) == {
        "empty_class/": "empty class folder: no usable image",
        "notes_only/": "empty class folder: no usable image",
        "synthetic_farmland/dangling.png": f"dangling symlink: {os.path.join(root, 'gone.png')}",
        "synthetic_farmland/pipe.png": "not a regular file (fifo)",
        "synthetic_farmland/up/": "symlink loop: a folder above it",
    }
    assert cat.class_names == ("synthetic_farmland", "synthetic_forest") and len(cat) == 6
    lines = [r.getMessage() for r in caplog.records if "not used" in r.getMessage()]
    assert len(lines) == 1
    assert (
        "5 entries not used (1 dangling symlink, 2 empty class folder, 1 not a regular file, 1 symlink loop)"
        in (lines[0])
    )


def test_a_fifo_is_never_opened_for_reading(tmp_path):
    root, _ = _tree(tmp_path)
    cat = scan(root)
    sid = "synthetic_forest/synthetic_forest_0001.png"
    path = os.path.join(root, sid)
    os.remove(path)
    os.mkfifo(path)  # swapped for a FIFO after the scan
    done = threading.Event()

    def unblock() -> None:  # a reader stuck in open() would hang the test: give it a writer after 5 s
        if not done.wait(5.0):
            try:
                os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
            except OSError:
                pass

    threading.Thread(target=unblock, daemon=True).start()
    row = cat.table.filter(cat.table["sample_id"].to_numpy(zero_copy_only=False) == sid)
    why: dict[int, str] = {}
    t0 = time.monotonic()
    out = load_bytes(cat.root, cat.kind, row, unreadable=why)
    done.set()
    assert out == [None] and why == {0: "not a regular file (fifo)"}
    assert time.monotonic() - t0 < 2.0


def test_the_run_lists_what_the_scan_refused_in_bad_samples_csv(tmp_path):
    root, outside = _tree(tmp_path)
    farm = os.path.join(root, "synthetic_farmland")
    _link(os.path.join(outside, "elsewhere.png"), farm, "out.png")
    os.mkfifo(os.path.join(farm, "pipe.png"))
    os.mkdir(os.path.join(root, "empty_class"))
    lines: list[str] = []
    run = str(tmp_path / "run")
    os.makedirs(run)
    cfg = load_config(None, [f"data.root={root}"])
    assert cfg.data.follow_symlinks is False
    cat = ensure(cfg, run, lines.append)
    assert "synthetic_farmland/out.png" not in set(cat.table["sample_id"].to_pylist())
    assert _bad_rows(run) == {
        "empty_class/": "empty class folder: no usable image",
        "synthetic_farmland/out.png": f"symlink outside data root: {os.path.realpath(outside)}/elsewhere.png",
        "synthetic_farmland/pipe.png": "not a regular file (fifo)",
    }
    assert "3 entries of the data root not used, listed in bad_samples.csv" in lines[-1]

    run2 = str(tmp_path / "run2")
    os.makedirs(run2)
    cat2 = ensure(load_config(None, [f"data.root={root}", "data.follow_symlinks=true"]), run2, lines.append)
    assert "synthetic_farmland/out.png" in set(cat2.table["sample_id"].to_pylist())
    assert set(_bad_rows(run2)) == {"empty_class/", "synthetic_farmland/pipe.png"}


@pytest.mark.parametrize("follow", [False, True])
def test_a_root_reached_through_a_link_is_its_own_inside(tmp_path, follow):
    root, _ = _tree(tmp_path)
    alias = str(tmp_path / "alias")
    os.symlink(root, alias)  # e.g. /data -> /mnt/disk/data
    cat = scan(alias, follow_symlinks=follow)
    assert len(cat) == 6 and cat.refused == ()
    assert None not in load_bytes(cat.root, cat.kind, cat.table, follow_symlinks=follow)
