"""`ganforge data pack | inspect | subset`."""

from __future__ import annotations

from pathlib import Path

import typer

app = typer.Typer(
    no_args_is_help=True,
    help="Pack image datasets into WebDataset shards, inspect them, cut class-balanced subsets.",
)

_SRC_HELP = (
    "A folder of class sub-folders (optionally under train/test/val split folders), a .tar or "
    ".tar.gz of such a tree, a folder of CIFAR-10 python pickles, MNIST IDX files, or an .npz "
    "with `images` and `labels`."
)


def _fail(message: str) -> None:
    typer.secho(f"error: {message}", err=True, fg="red")
    raise typer.Exit(2)


@app.command("pack")
def pack_cmd(
    src: Path = typer.Argument(..., help=_SRC_HELP),
    out: Path = typer.Argument(..., help="Output folder (must not exist or be empty)."),
    shard_size: int = typer.Option(1000, "--shard-size", min=1, help="Samples per shard."),
    image_size: int | None = typer.Option(
        None,
        "--image-size",
        min=1,
        help="Resize the shorter side and centre-crop to SxS. Default: keep the source size "
        "(images of another size are then skipped and listed).",
    ),
    channels: int | None = typer.Option(
        None,
        "--channels",
        min=1,
        max=3,
        help="1 (grey) or 3 (RGB). Default: 1 for MNIST and 2-D arrays, else 3. Other modes "
        "(L, RGBA, P, CMYK, 16-bit) are converted; alpha is dropped.",
    ),
    split: str = typer.Option(
        "train", "--split", help="Split name for sources without train/test split folders."
    ),
    workers: int = typer.Option(1, "--workers", min=1, help="Parallel encode processes."),
    strict: bool = typer.Option(
        False, "--strict", help="Stop at the first bad input instead of skipping and listing it."
    ),
    encoding: str = typer.Option(
        "keep",
        "--encoding",
        help="keep: store JPEG/PNG source files unchanged when no resize/convert is needed, else "
        "PNG; png; jpg (quality 95); raw: uint8 pixels as .npy (no decoding at train time).",
    ),
    limit_per_class: str | None = typer.Option(
        None,
        "--limit-per-class",
        help="Keep the first N images of each class: N, or per split: train=500,test=100.",
    ),
    seed: int = typer.Option(
        0,
        "--seed",
        help="Seed of the sample order shuffle (mixes classes "
        "across shards; the same seed gives byte-identical shards).",
    ),
    no_shuffle: bool = typer.Option(False, "--no-shuffle", help="Keep the source order."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Pack images into WebDataset shards OUT/<split>-NNNNNN.tar plus OUT/dataset.json."""
    from ganforge.data import DataError
    from ganforge.data.codec import ENCODINGS
    from ganforge.data.pack import PackOptions, pack
    from ganforge.data.subset import parse_per_class

    if encoding not in ENCODINGS:
        raise typer.BadParameter(f"must be one of {', '.join(ENCODINGS)}", param_hint="--encoding")
    if channels == 2:
        raise typer.BadParameter("must be 1 or 3", param_hint="--channels")
    try:
        limit = parse_per_class(limit_per_class) if limit_per_class else None
        opts = PackOptions(
            shard_size=shard_size,
            image_size=image_size,
            channels=channels,
            split=split,
            workers=workers,
            strict=strict,
            encoding=encoding,
            limit_per_class=limit,
            shuffle_seed=None if no_shuffle else seed,
            progress=not quiet,
        )
        manifest = pack(src, out, opts)
    except DataError as e:
        _fail(str(e))
    _print_pack_summary(out, manifest)


def _print_pack_summary(out: Path, manifest: dict) -> None:
    from ganforge.data.pack import iter_problems

    for line in iter_problems(manifest):
        typer.secho(f"skipped: {line}", err=True, fg="yellow")
    for name, info in sorted(manifest["splits"].items()):
        typer.echo(f"{name}: {info['num_samples']} samples in {len(info['shards'])} shard(s)")
    typer.echo(
        f"wrote {out} ({manifest['image_size']}x{manifest['image_size']}x{manifest['channels']}, "
        f"{len(manifest['classes'])} classes, encoding {manifest['encoding']}, "
        f"{len(manifest['skipped'])} skipped, {manifest['converted']} converted)"
    )


@app.command("inspect")
def inspect_cmd(
    out: Path = typer.Argument(..., help="A folder written by `ganforge data pack`."),
    grid: Path | None = typer.Option(
        None, "--grid", help="Write a PNG with one row of samples per class."
    ),
    grid_split: str | None = typer.Option(
        None, "--grid-split", help="Split for the grid (default: train, else the first)."
    ),
    per_class: int = typer.Option(8, "--per-class", min=1, help="Samples per class in the grid."),
    no_verify: bool = typer.Option(False, "--no-verify", help="Skip the sha256 check of shards."),
) -> None:
    """Summarise a packed dataset and verify its shard checksums (exit 1 on a mismatch)."""
    from rich.console import Console

    from ganforge.data import DataError
    from ganforge.data.inspection import class_grid, save_png, verify_shards
    from ganforge.data.manifest import load_manifest

    try:
        manifest = load_manifest(out)
    except DataError as e:
        _fail(str(e))
    console = Console()
    _print_manifest(console, out, manifest)
    if grid is not None:
        split = grid_split or (
            "train" if "train" in manifest["splits"] else min(manifest["splits"])
        )
        if split not in manifest["splits"]:
            raise typer.BadParameter(f"unknown split {split}", param_hint="--grid-split")
        path = save_png(class_grid(out, manifest, split, per_class), grid)
        console.print(f"grid: {path} (rows = classes in index order, split {split})")
    if no_verify:
        return
    problems = verify_shards(out, manifest)
    for p in problems:
        typer.secho(f"checksum: {p}", err=True, fg="red")
    if problems:
        raise typer.Exit(1)
    n = sum(len(i["shards"]) for i in manifest["splits"].values())
    console.print(f"verified: {n} shard checksum(s) match")


def _print_manifest(console, out: Path, manifest: dict) -> None:
    """Splits (samples, shards, MB on disk), image format, classes and skipped inputs."""
    from rich.table import Table

    table = Table(title=f"{out}  ({manifest['format']})")
    for col in ("split", "samples", "shards", "MB"):
        table.add_column(col, justify="left" if col == "split" else "right")
    for name, info in sorted(manifest["splits"].items()):
        size = sum(
            (out / e["name"]).stat().st_size for e in info["shards"] if (out / e["name"]).is_file()
        )
        table.add_row(name, str(info["num_samples"]), str(len(info["shards"])), f"{size / 1e6:.1f}")
    console.print(table)
    s = manifest["image_size"]
    console.print(
        f"images: {s}x{s}, {manifest['channels']} channel(s), encoding {manifest['encoding']}"
    )
    classes = manifest["classes"]
    console.print(f"classes ({len(classes)}): {', '.join(classes)}")
    skipped = manifest.get("skipped", [])
    console.print(f"skipped inputs: {len(skipped)}")
    for p in skipped[:10]:
        console.print(f"  {p['path']}: {p['reason']}", markup=False)


@app.command("subset")
def subset_cmd(
    src: Path = typer.Argument(..., help=_SRC_HELP),
    out: Path = typer.Argument(
        ..., help="Output: a folder, or an archive when it ends in .tar.gz, .tgz or .tar."
    ),
    per_class: str = typer.Option(
        ..., "--per-class", help="Images per class: N, or per split: train=500,test=100."
    ),
    splits: list[str] | None = typer.Option(
        None, "--split", help="Keep only this split (repeatable). Default: all."
    ),
) -> None:
    """Copy the first N images of each class into a small tree <name>/<split>/<class>/<file>."""
    from ganforge.data import DataError
    from ganforge.data.subset import parse_per_class, subset

    try:
        result = subset(src, out, parse_per_class(per_class), splits or None)
    except DataError as e:
        _fail(str(e))
    for p in result["skipped"]:
        typer.secho(f"skipped: {p['path']}: {p['reason']}", err=True, fg="yellow")
    counts = ", ".join(f"{k}: {v}" for k, v in sorted(result["per_split"].items()))
    typer.echo(f"wrote {out} ({result['files']} files; {counts})")


@app.command("shapes")
def shapes_cmd(
    out: Path = typer.Argument(..., help="Output folder (must not exist or be empty)."),
    per_class: int = typer.Option(1000, "--per-class", min=1, help="Training images per class."),
    test_per_class: int = typer.Option(
        200, "--test-per-class", min=0, help="Test images per class (0: no test split)."
    ),
    image_size: int = typer.Option(32, "--image-size", min=8, max=256, help="Image side (px)."),
    seed: int = typer.Option(0, "--seed", min=0, help="Same seed, same pixels."),
    shard_size: int = typer.Option(1000, "--shard-size", min=1, help="Samples per shard."),
    encoding: str = typer.Option("raw", "--encoding", help="raw (uint8 .npy), png or jpg."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Draw a procedural dataset of coloured shapes (circle, square, triangle, cross, ring, star:
    one class each) and pack it into WebDataset shards OUT/<split>-NNNNNN.tar + dataset.json.

    The demo's default data: deterministic (the same options give the same shards), drawn in
    seconds, and learnable by a small conditional GAN in minutes on CPU.
    """
    from ganforge.data import DataError
    from ganforge.data.demos import write_shapes
    from ganforge.data.pack import PackOptions

    if encoding not in ("raw", "png", "jpg"):
        raise typer.BadParameter("must be raw, png or jpg", param_hint="--encoding")
    counts = {"train": per_class} | ({"test": test_per_class} if test_per_class else {})
    opts = PackOptions(shard_size=shard_size, encoding=encoding, progress=not quiet)
    try:
        manifest = write_shapes(out, counts, seed, image_size, opts)
    except DataError as e:
        _fail(str(e))
    _print_pack_summary(out, manifest)
