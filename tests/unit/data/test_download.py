"""Dataset download, offline: a test-built archive served on 127.0.0.1 (resume, checksum, safety)."""

from __future__ import annotations

import hashlib
import os

import pytest

from hssal_ray.data.catalog import scan
from hssal_ray.data.download import DATASETS, download_dataset, fetch, main, safe_extract
from hssal_ray.errors import DownloadError
from tests.data.make_tiny import build_tar, build_zip, tiny_imagefolder, zip_tree
from tests.unit.data._range_server import RangeServer

ZIP = "UCMerced_LandUse.zip"


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    d = tmp_path_factory.mktemp("arch")
    tree = tiny_imagefolder(str(d / "tree"), num_classes=2, per_class=3, size=16)
    path = zip_tree(str(d / ZIP), tree, "UCMerced_LandUse/Images")
    data = open(path, "rb").read()
    return data, hashlib.sha256(data).hexdigest()


@pytest.fixture()
def server(archive):
    with RangeServer({ZIP: archive[0], "blob.bin": bytes(range(256)) * 40}) as s:
        yield s


def test_registry_has_no_invented_checksums():
    assert set(DATASETS) == {"ucm", "aid", "nwpu"}
    assert DATASETS["ucm"].urls[0] == "http://weegee.vision.ucmerced.edu/datasets/UCMerced_LandUse.zip"
    assert all(spec.sha256 is None for spec in DATASETS.values())  # none verified here: never guessed
    assert DATASETS["aid"].urls == () and "captain-whu" in DATASETS["aid"].manual


def test_download_verify_extract_and_idempotent(tmp_path, server, archive, capsys):
    root = str(tmp_path / "root")
    r = download_dataset("ucm", root, url=server.url(ZIP), sha256=archive[1], progress=False)
    assert not r.already and r.sha256 == archive[1]
    assert r.data_dir == os.path.join(root, "UCMerced_LandUse", "Images")
    cat = scan(r.data_dir)
    assert len(cat) == 6 and cat.num_classes == 2
    assert not os.path.exists(os.path.join(root, ZIP + ".part"))
    assert not [n for n in os.listdir(root) if n.startswith(".extract")]
    n_requests = len(server.requests)
    assert (
        main(["ucm", "--root", root, "--url", server.url(ZIP), "--sha256", archive[1], "--no-progress"]) == 0
    )
    assert "already downloaded and extracted (sha256" in capsys.readouterr().out
    assert len(server.requests) == n_requests  # nothing fetched again


def test_resume_from_partial_file(tmp_path, server, archive):
    root = tmp_path / "root"
    root.mkdir()
    half = len(archive[0]) // 2
    (root / (ZIP + ".part")).write_bytes(archive[0][:half])
    r = download_dataset("ucm", str(root), url=server.url(ZIP), sha256=archive[1], progress=False)
    assert server.requests == [(f"/{ZIP}", f"bytes={half}-")]
    assert open(r.archive, "rb").read() == archive[0]


def test_interrupted_download_then_resume(tmp_path, server, archive):
    dest = str(tmp_path / "blob.bin")
    server.mode = "cut"
    with pytest.raises(DownloadError, match="interrupted after .* run again to resume"):
        fetch(server.url("blob.bin"), dest, progress=False)
    got = os.path.getsize(dest + ".part")
    assert 0 < got < 10240 and not os.path.exists(dest)
    server.mode = "normal"
    fetch(server.url("blob.bin"), dest, progress=False)
    assert server.requests[-1][1] == f"bytes={got}-"
    assert open(dest, "rb").read() == bytes(range(256)) * 40


def test_server_ignoring_range_restarts(tmp_path, server):
    dest = str(tmp_path / "blob.bin")
    with open(dest + ".part", "wb") as f:
        f.write(b"WRONG BYTES" * 10)
    server.mode = "ignore_range"
    fetch(server.url("blob.bin"), dest, progress=False)
    assert open(dest, "rb").read() == bytes(range(256)) * 40


def test_complete_partial_gets_416(tmp_path, server):
    dest = str(tmp_path / "blob.bin")
    with open(dest + ".part", "wb") as f:
        f.write(bytes(range(256)) * 40)
    fetch(server.url("blob.bin"), dest, progress=False)
    assert open(dest, "rb").read() == bytes(range(256)) * 40


def test_checksum_mismatch(tmp_path, server):
    root = str(tmp_path / "root")
    with pytest.raises(DownloadError, match="sha256 mismatch"):
        download_dataset("ucm", root, url=server.url(ZIP), sha256="0" * 64, progress=False)
    assert sorted(os.listdir(root)) == []  # bad archive removed, nothing extracted
    # the registry's (torchgeo) MD5 is for the real archive, so this test zip fails it
    with pytest.raises(DownloadError, match="md5 mismatch"):
        download_dataset("ucm", root, url=server.url(ZIP), progress=False)
    assert not os.path.exists(os.path.join(root, "UCMerced_LandUse"))


def test_unknown_checksum_requires_explicit_choice(tmp_path, server, archive, capsys):
    root = str(tmp_path / "root")
    with pytest.raises(DownloadError, match=f"sha256 {archive[1]}.*--sha256 <digest>.*--no-verify"):
        download_dataset("aid", root, url=server.url(ZIP), progress=False)
    r = download_dataset("aid", root, url=server.url(ZIP), verify=False, progress=False)
    assert r.data_dir == root  # the test zip has no AID/ folder: the root is reported
    assert main(["aid", "--root", str(tmp_path / "r2")]) == 2
    assert "no direct download link" in capsys.readouterr().err


def test_http_errors(tmp_path, server):
    with pytest.raises(DownloadError, match="HTTP 404"):
        fetch(server.url("missing.zip"), str(tmp_path / "m.zip"), progress=False)
    with pytest.raises(DownloadError, match="could not download"):
        download_dataset("ucm", str(tmp_path / "r"), url=server.url("missing.zip"), progress=False)
    with pytest.raises(DownloadError, match="unknown dataset"):
        download_dataset("mnist", str(tmp_path / "r"))


@pytest.mark.parametrize(
    "members, links, bad",
    [
        ({"ok/a.txt": b"a", "../evil.txt": b"x"}, {}, "../evil.txt"),
        ({"ok/a.txt": b"a", "ok/../../evil.txt": b"x"}, {}, "ok/../../evil.txt"),
        ({"/tmp/evil_abs.txt": b"x"}, {}, "/tmp/evil_abs.txt"),
        ({"ok/a.txt": b"a"}, {"ok/link": "../../evil.txt"}, "ok/link"),
        ({"ok/a.txt": b"a"}, {"ok/abs": "/etc/passwd"}, "ok/abs"),
    ],
)
@pytest.mark.parametrize("fmt", ["zip", "tar"])
def test_unsafe_members_rejected_and_nothing_written(tmp_path, members, links, bad, fmt):
    build = build_zip if fmt == "zip" else build_tar
    arch = build(str(tmp_path / f"evil.{fmt}"), members, symlinks=links)
    dest = tmp_path / "a" / "b" / "root"
    with pytest.raises(DownloadError, match="unsafe archive member") as e:
        safe_extract(arch, str(dest))
    assert repr(bad) in str(e.value)
    assert not (tmp_path / "a" / "b" / "evil.txt").exists() and not (tmp_path / "a" / "evil.txt").exists()
    assert list(dest.iterdir()) == []  # validated before anything was written


def test_safe_links_inside_are_kept_and_tar_extracts(tmp_path):
    arch = build_zip(str(tmp_path / "ok.zip"), {"d/a.txt": b"hello"}, symlinks={"d/b.txt": "a.txt"})
    safe_extract(arch, str(tmp_path / "z"))
    assert (tmp_path / "z" / "d" / "b.txt").read_bytes() == b"hello"
    tar = build_tar(str(tmp_path / "ok.tar"), {"d/a.txt": b"hi"})
    safe_extract(tar, str(tmp_path / "t"))
    assert (tmp_path / "t" / "d" / "a.txt").read_bytes() == b"hi"


def test_rar_and_unknown_archives(tmp_path, server):
    rar = tmp_path / "x.rar"
    rar.write_bytes(b"Rar!\x1a\x07\x00" + b"\x00" * 64)
    with pytest.raises(DownloadError, match="RAR extraction is out of scope"):
        safe_extract(str(rar), str(tmp_path / "out"))
    junk = tmp_path / "x.zip"
    junk.write_bytes(b"not an archive at all")
    with pytest.raises(DownloadError, match="not a zip or tar"):
        safe_extract(str(junk), str(tmp_path / "out"))


def test_file_url_for_manually_downloaded_archive(tmp_path, archive):
    local = tmp_path / "AID.zip"
    local.write_bytes(archive[0])
    root = tmp_path / "root"
    root.mkdir()
    (root / "AID.zip.part").write_bytes(b"stale partial")  # file:// ignores Range: restarted
    r = download_dataset("aid", str(root), url=local.as_uri(), sha256=archive[1], progress=False)
    assert r.verified and len(scan(os.path.join(str(root), "UCMerced_LandUse", "Images"))) == 6
