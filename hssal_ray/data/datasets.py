"""The registry of downloadable RS scene datasets: :data:`DATASETS` of :class:`DatasetSpec`."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """One downloadable dataset.

    Args:
        name: Registry key.
        title: Human name.
        urls: Direct download URLs, tried in order (empty: no direct link exists).
        filename: Archive file name.
        sha256: Expected SHA-256, or ``None`` if not verified by us.
        md5: Expected MD5 as published by torchgeo (second-hand), or ``None``.
        data_dir: ImageFolder root relative to the download root after extraction.
        num_classes: Expected class folders.
        num_images: Expected images.
        homepage: Official page.
        manual: How to get the archive when there is no direct link (or it is a RAR).
    """

    name: str
    title: str
    urls: tuple[str, ...]
    filename: str
    sha256: str | None
    md5: str | None
    data_dir: str
    num_classes: int
    num_images: int
    homepage: str
    manual: str = ""


DATASETS: dict[str, DatasetSpec] = {
    # Official URL (the dataset's page links it); the torchgeo Hugging Face mirror serves the same
    # archive. MD5 from torchgeo (microsoft/torchgeo, torchgeo/datasets/ucmerced.py); no SHA-256 was
    # verified here, so none is stored.
    "ucm": DatasetSpec(
        name="ucm",
        title="UC Merced Land Use",
        urls=(
            "http://weegee.vision.ucmerced.edu/datasets/UCMerced_LandUse.zip",
            "https://huggingface.co/datasets/torchgeo/ucmerced/resolve/main/UCMerced_LandUse.zip",
        ),
        filename="UCMerced_LandUse.zip",
        sha256=None,
        md5="5b7ec56793786b6dc8a908e8854ac0e4",
        data_dir="UCMerced_LandUse/Images",
        num_classes=21,
        num_images=2100,
        homepage="http://weegee.vision.ucmerced.edu/datasets/landuse.html",
    ),
    # AID's official page only links Baidu Pan and OneDrive share pages (no direct file URL), so
    # there is no default URL and no checksum: download AID.zip by hand and pass --url file://...
    "aid": DatasetSpec(
        name="aid",
        title="AID: Aerial Image Dataset",
        urls=(),
        filename="AID.zip",
        sha256=None,
        md5=None,
        data_dir="AID",
        num_classes=30,
        num_images=10000,
        homepage="https://captain-whu.github.io/AID/",
        manual=(
            "AID has no direct download link: its official page https://captain-whu.github.io/AID/ links "
            "Baidu Pan (https://pan.baidu.com/s/1mifOBv6) and OneDrive "
            "(https://1drv.ms/u/s!AthY3vMZmuxChNR0Co7QHpJ56M-SvQ). "
            "Download AID.zip in a browser, then run again with --url file:///path/to/AID.zip and "
            "--sha256 <digest you trust> (or --no-verify)."
        ),
    ),
    # The official NWPU-RESISC45 release is a RAR on OneDrive (out of scope); torchgeo's Hugging Face
    # mirror re-packs it as a zip (URL pinned to a commit, MD5 from microsoft/torchgeo,
    # torchgeo/datasets/resisc45.py). No SHA-256 was verified here.
    "nwpu": DatasetSpec(
        name="nwpu",
        title="NWPU-RESISC45",
        urls=(
            "https://hf.co/datasets/torchgeo/resisc45/resolve/a826b44d938a883185f11ebe3d512d38b464312f/NWPU-RESISC45.zip",
        ),
        filename="NWPU-RESISC45.zip",
        sha256=None,
        md5="75206b2e16446591afa88e2628744886",
        data_dir="NWPU-RESISC45",
        num_classes=45,
        num_images=31500,
        homepage="https://gcheng-nwpu.github.io/",
        manual="The official release is NWPU-RESISC45.rar on OneDrive: extract it with unrar or 7z.",
    ),
}
