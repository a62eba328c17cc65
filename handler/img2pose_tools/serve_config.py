"""The TorchServe configuration img2pose-serve runs with, from a checkout or from the installed package.

The repository's ``config/config.properties`` and ``config/metrics.yaml`` are the one copy in git, what
operators edit. A wheel (``pip install``, the container image) carries the same two files as
``img2pose_tools/config/`` (pyproject.toml maps them there). ``CONFIG_DIR`` is that packaged copy when
there is one, else the checkout's ``config/`` (code run from the source tree: ``PYTHONPATH=handler``
or an editable install).

Relative paths in config.properties are relative to the directory TorchServe starts in, the one that
holds ``config/`` (``metrics_config=config/metrics.yaml``). For a machine with only the installed
package,

    img2pose-write-config [DIRECTORY] [--force]

writes ``DIRECTORY/config/config.properties`` and ``DIRECTORY/config/metrics.yaml`` (default: the current
directory), after which README's ``torchserve --start ... --ts-config config/config.properties`` works
from DIRECTORY.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

FILES = ("config.properties", "metrics.yaml")
# The model version build_mar gives the archive; config.properties's models block is keyed by it.
ARCHIVE_VERSION = "1.0"
_PACKAGED = Path(__file__).resolve().parent / "config"
_CHECKOUT = Path(__file__).resolve().parents[2] / "config"
CONFIG_DIR = _PACKAGED if (_PACKAGED / FILES[0]).is_file() else _CHECKOUT


def write_config_files(directory: str | Path = ".", force: bool = False) -> list[Path]:
    """Copy ``FILES`` from ``CONFIG_DIR`` into ``<directory>/config/``; FileExistsError unless ``force``."""
    target = Path(directory) / "config"
    existing = [str(target / name) for name in FILES if (target / name).exists()]
    if existing and not force:
        raise FileExistsError(f"{', '.join(existing)} already exist(s) (use --force to overwrite)")
    target.mkdir(parents=True, exist_ok=True)
    return [Path(shutil.copyfile(CONFIG_DIR / name, target / name)) for name in FILES]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="img2pose-write-config",
        description="Write img2pose-serve's TorchServe configuration (config/config.properties and "
                    "config/metrics.yaml) into DIRECTORY, to start TorchServe from there.")
    parser.add_argument("directory", nargs="?", default=".", help="where config/ is written (default: .)")
    parser.add_argument("--force", action="store_true", help="overwrite existing files")
    args = parser.parse_args(argv)
    try:
        written = write_config_files(args.directory, force=args.force)
    except FileExistsError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
