"""Which malloc a TorchServe worker runs with: the environment that selects it, in one place.

A forward allocates and frees hundreds of MB of activations of many sizes; with glibc's default
malloc a long-running worker's resident set creeps up (docs/errors-and-limits.md, "Soak"). The
alternatives are chosen by environment variables read when the process starts, so they must be set on
``torchserve --start`` (the Java frontend passes its environment on to every worker it spawns):

* ``glibc``: nothing set (up to 8 malloc arenas per core).
* ``glibc-arenas2``: ``MALLOC_ARENA_MAX=2``.
* ``jemalloc`` / ``tcmalloc``: Debian's ``libjemalloc2`` / ``libtcmalloc-minimal4`` loaded with
  ``LD_PRELOAD``.

``DEFAULT`` is the one measured best (docs/errors-and-limits.md, "Which malloc"); the launcher, the
benchmark, ``scripts/serve_demo.sh`` and the image use it. A preloaded library that is missing on this
machine falls back to glibc with a warning instead of failing to start (``LD_PRELOAD`` of a missing
file only prints a loader error per process).

    python -m img2pose_tools.memory_allocator [NAME]   # prints ``export`` lines for a shell
"""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path

# Debian's multiarch directories, newest first; the image and the CI machines are Debian.
LIBRARY_DIRS = ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64", "/usr/lib")
SETTINGS = {"glibc": {}, "glibc-arenas2": {"MALLOC_ARENA_MAX": "2"}}
PRELOADED = {"jemalloc": "libjemalloc.so.2", "tcmalloc": "libtcmalloc_minimal.so.4"}
APT_PACKAGES = {"jemalloc": "libjemalloc2", "tcmalloc": "libtcmalloc-minimal4"}  # where PRELOADED come from
NAMES = (*SETTINGS, *PRELOADED)  # every choice (the benchmark's --allocators)
DEFAULT = "glibc-arenas2"


def library_path(name: str) -> Path | None:
    """Where the shared library of a preloaded allocator is on this machine (None: not installed)."""
    filename = PRELOADED[name]
    for directory in LIBRARY_DIRS:
        candidate = Path(directory) / filename
        if candidate.is_file():
            return candidate
    return None


def environment(name: str = DEFAULT, base: dict[str, str] | None = None) -> dict[str, str]:
    """The variables to add to a server's environment for allocator ``name`` (``base``: the environment
    they join, default os.environ; an ``LD_PRELOAD`` already there is kept after ours)."""
    if name not in NAMES:
        raise ValueError(f"unknown allocator {name!r}: one of {', '.join(NAMES)}")
    if name in SETTINGS:
        return dict(SETTINGS[name])
    path = library_path(name)
    if path is None:
        warnings.warn(f"{name} is not installed (apt-get install {APT_PACKAGES[name]}): the server runs with "
                      f"glibc's malloc", RuntimeWarning, stacklevel=2)
        return {}
    existing = (base if base is not None else os.environ).get("LD_PRELOAD", "")
    kept = [entry for entry in existing.split() if entry and entry != str(path)]
    return {"LD_PRELOAD": " ".join([str(path), *kept])}


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    name = args[0] if args else DEFAULT
    if name in ("-h", "--help"):
        print(__doc__)
        return 0
    try:
        settings = environment(name)
    except ValueError as error:
        print(f"memory_allocator: {error}", file=sys.stderr)
        return 2
    for key, value in settings.items():
        print(f"export {key}='{value}'")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
