"""The `ganforge` command line: one typer app that mounts each area's commands.

Every command module imports torch/ray/deepspeed inside its functions, so `--help` stays fast.
"""

from __future__ import annotations

import typer

from ganforge.cluster.commands import register as register_cluster
from ganforge.data.commands import app as data_app
from ganforge.quality.commands import register as register_quality
from ganforge.quality.detect_commands import register as register_detect
from ganforge.serve.commands import register as register_serve

app = typer.Typer(
    name="ganforge",
    help=(
        "Train GANs across a Ray cluster with DeepSpeed, serve them over HTTP, and compare "
        "their image quality.\n\nStart with `ganforge demo` (CPU, a few minutes)."
    ),
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.add_typer(data_app, name="data", help="Pack images into WebDataset shards and inspect them.")
register_cluster(app)
register_serve(app)
register_quality(app)
register_detect(app)


@app.command("version")
def version() -> None:
    """Print the ganforge version."""
    from ganforge import __version__

    typer.echo(__version__)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
