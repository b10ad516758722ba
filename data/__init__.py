"""ganforge.data: image datasets as WebDataset shards, from packing to the training loader.

    dataset, sources, arrays   what a source becomes; folders and archives; CIFAR, MNIST, npz
    codec, manifest            how one image is stored, `dataset.json`
    names                      class and split names checked before they become paths
    pack, subset, inspection   `ganforge data pack | subset | inspect`
    resolve, loader, stages    `data.urls` -> shard URLs -> one rank's streaming loader
    memory                     a whole split in memory (evaluation's real reference)

Kept light on purpose: no torch import here (the CLI's --help and the demo path import it).
"""

from __future__ import annotations

from pathlib import Path

DEMO_ARCHIVE = "cifar10-demo.tar.gz"


class DataError(ValueError):
    """A problem with the user's data or output path; the message says what and where."""


def demo_archive() -> Path:
    """The CIFAR-10 subset shipped in the package (`data/demo_data/cifar10-demo.tar.gz`)."""
    path = Path(__file__).resolve().parent / "demo_data" / DEMO_ARCHIVE
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: demo archive missing (rebuild: scripts/make_demo_data.sh)"
        )
    return path


def ensure_demo_shards(out_dir: Path) -> Path:
    """Pack the demo archive into raw-pixel shards at out_dir unless already there; -> out_dir.

    Safe when several processes race: the packer renames a finished temp folder into place, so
    out_dir either holds a complete dataset.json + shards or does not exist.
    """
    from ganforge.data.manifest import MANIFEST_NAME
    from ganforge.data.pack import PackOptions, pack

    out_dir = Path(out_dir).expanduser()
    if (out_dir / MANIFEST_NAME).is_file():
        return out_dir
    try:
        pack(demo_archive(), out_dir, PackOptions(encoding="raw", progress=False))
    except (DataError, OSError):
        if not (out_dir / MANIFEST_NAME).is_file():  # not a lost race: a real failure
            raise
    return out_dir
