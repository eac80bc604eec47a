"""The worker image's inputs, shipped inside ccq as package data.

This directory is the image's build context (the Dockerfile, ccq's MCP server, the files
it copies) and holds the session templates the worker writes into each session's Claude
home. The builder's own files beside them (this module, ``builder.py``, which builds the
image, and ``make-base-image.sh``) are not image inputs: the builder leaves them out of the
context and its hash.

Found through :mod:`importlib.resources`, so an installed ccq (a wheel, the app image)
builds the image and sets up sessions exactly as a checkout does.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

# Top-level files of this directory that build the image but are not part of it.
BUILDER_FILES = frozenset({"__init__.py", "builder.py", "make-base-image.sh"})


def directory() -> Path:
    """This directory on disk, in a checkout or an installed ccq."""
    root = files(__name__)
    if not isinstance(root, Path):  # a zip import: the build needs real files
        raise RuntimeError(f"ccq's worker_image data is not on disk ({root}); install ccq unzipped")
    return root
