"""SHA-256 identities of data: a dataset's ``size_bytes`` and ``sha256`` in an audit record (the same for the CLI's
``audit publish --dataset-file`` and the pipeline's PublishAudit), and the content address of a tree of files.

The scheme, the one definition of the record's ``dataset.sha256``:

- one file: the SHA-256 of its bytes (what ``sha256sum FILE`` prints);
- a directory (a local copy of an S3 prefix, a SageMaker processing input) holding exactly one file: that file's
  identity, so that the same data hashes alike given as the object or as the directory it was downloaded into;
- a directory holding several files: the tree digest (``tree_sha256``) of its regular files, recursively, named by
  their POSIX paths relative to the directory; the size is the sum of their sizes.

``tree_sha256``: the SHA-256 over, for each file in the order of the paths' code points, the path in UTF-8, a NUL
byte, and the 32-byte SHA-256 of its content. A renamed, added, removed or changed file changes it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from meter.errors import MeterError

_BLOCK = 1 << 20  # files are read in blocks of 1 MiB: a dataset can be larger than memory


def tree_sha256(digests: Mapping[str, bytes]) -> str:
    """The tree digest (see the module) of files given as ``{POSIX relative path: SHA-256 digest of its bytes}``."""
    tree = hashlib.sha256()
    for name in sorted(digests):
        tree.update(name.encode() + b"\0" + digests[name])
    return tree.hexdigest()


def _file_digest(path: Path) -> bytes:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_BLOCK), b""):
            digest.update(block)
    return digest.digest()


def dataset_identity(path: str | Path, *, what: str = "dataset", directories: bool = True) -> dict[str, Any]:
    """``{"size_bytes", "sha256"}`` of a data file or directory (the scheme above); ``{}`` for a directory that holds
    no file. ``directories=False`` refuses a directory. A MeterError naming ``what`` when the path is missing or
    cannot be read."""
    from meter.jsonfile import os_problem

    p = Path(path)
    try:
        if p.is_dir():
            if not directories:
                raise MeterError(f"{what} {p} is a directory: give the file")
            files = {f.relative_to(p).as_posix(): f for f in p.rglob("*") if f.is_file()}
        elif p.is_file():
            files = {p.name: p}
        else:
            raise MeterError(f"{what} not found: {p}")
        if not files:
            return {}
        digests = {name: _file_digest(f) for name, f in files.items()}
        size = sum(f.stat().st_size for f in files.values())
    except OSError as e:
        raise os_problem(e, p, what) from None
    sha = next(iter(digests.values())).hex() if len(digests) == 1 else tree_sha256(digests)
    return {"size_bytes": size, "sha256": sha}
