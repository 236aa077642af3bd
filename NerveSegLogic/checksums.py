"""The sha256 of a file, the one way every part of NerveSeg computes it (weights, model cards, data set manifests,
annotation stores, fetched downloads).

A ground-floor module: only the standard library, so anything may import it (the Slicer panel included).
"""

from __future__ import annotations

import hashlib
import os
from typing import Union

#: Bytes read at a time: large weights and stores are never read into memory whole.
CHUNK_BYTES = 1 << 20


def sha256_file(path: Union[str, os.PathLike], chunk_bytes: int = CHUNK_BYTES) -> str:
    """Lower-case hex sha256 of the bytes of the file at ``path``; OSError when it cannot be read."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(chunk_bytes), b""):
            digest.update(chunk)
    return digest.hexdigest()
