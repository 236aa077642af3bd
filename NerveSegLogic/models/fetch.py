"""Fetch a model's released weights into the user models folder, or install a copy obtained another way.

Only the default live model's weights live in the repository (so that ``make demo`` and the tests run offline and
the repository stays small enough for Slicer's Extensions Index). The other cards name their weights' release
address (``weights.url``) and sha256; :func:`fetch_weights` downloads them into
:func:`~.user_models.fetched_weights_dir`, where :attr:`ModelCard.weights_path` finds them.

The guarantees:

- nothing but a complete file whose sha256 equals the card's ever appears under the final name: the download goes to
  ``<final>.part`` and is renamed only after the checksum matched;
- a file whose checksum differs is refused and deleted (it is never kept, never loaded);
- a cut connection is retried (``retries`` times, with a growing pause), resuming where it stopped with an HTTP
  ``Range`` request; a later run resumes a ``.part`` an earlier run left; a server that ignores ``Range`` (answers
  200) makes the download start again from the first byte rather than append a second copy;
- :func:`install_from_file` installs a file copied by hand (an offline hospital), checked the same way.

Plain ``urllib``: no third-party HTTP client is needed for one GET with a ``Range`` header.
"""

from __future__ import annotations

import contextlib
import http.client
import logging
import os
import shutil
import socket
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable, Iterator, Optional

from .card import ModelCard
from .user_models import fetched_weights_path
from ..checksums import sha256_file

log = logging.getLogger(__name__)

#: progress(bytes done, bytes in all or None when the server does not say)
Progress = Callable[[int, Optional[int]], None]

CHUNK_BYTES = 1 << 16
RETRY_PAUSE_S = 0.5


class FetchError(RuntimeError):
    """Weights that could not be fetched or installed; the message names the model, the address or file, and why."""


def _released(card: ModelCard) -> None:
    if not card.weights:
        raise FetchError(f"model {card.name!r} lists no weights (its card {card.path} has \"weights\": null)")


def destination(card: ModelCard) -> Path:
    """Where fetched weights of ``card`` are kept (whether or not they are there yet)."""
    _released(card)
    return fetched_weights_path(card.weights["file"], card.weights["sha256"])


def fetch_weights(card: ModelCard, force: bool = False, retries: int = 3, timeout: float = 30.0,
                  progress: Optional[Progress] = None) -> Path:
    """Download ``card``'s weights from ``weights.url`` into the user models folder; return the file's path.

    Weights already present (next to the card, or fetched before) are returned as they are unless ``force``.
    Raises :class:`FetchError` naming the address: no address in the card, an HTTP error other than a cut
    connection, every retry used up, or a sha256 that differs from the card's (the file is deleted).
    """
    _released(card)
    if card.has_weights and not force:
        return card.weights_path
    url = card.weights_url
    if not url:
        raise FetchError(f"model {card.name!r}: its card {card.path} gives no address (weights.url) to fetch "
                         f"{card.weights['file']} from; install a copy with --from FILE")
    final = destination(card)
    final.parent.mkdir(parents=True, exist_ok=True)
    part = final.with_name(final.name + ".part")
    expected_size = card.weights.get("size")
    with _exclusive(part, card.name):
        attempt = 0
        while True:
            try:
                _download(url, part, timeout, expected_size, progress)
                break
            except _Retryable as error:
                attempt += 1
                if attempt > retries:
                    raise FetchError(f"model {card.name!r}: download from {url} failed after {attempt} tries "
                                     f"({error}); run the same command again to resume "
                                     f"({_size(part)} bytes kept in {part})") from None
                pause = RETRY_PAUSE_S * 2 ** (attempt - 1)
                log.warning("%s: %s; retrying in %.1f s (%d of %d), resuming at byte %d", card.name, error, pause,
                            attempt, retries, _size(part))
                time.sleep(pause)
        _check_and_place(card, part, final, source=url)
    return final


def install_from_file(card: ModelCard, source: os.PathLike, force: bool = False) -> Path:
    """Install a copy of ``card``'s weights obtained another way; refused (FetchError) unless its sha256 matches."""
    _released(card)
    source = Path(source)
    if not source.is_file():
        raise FetchError(f"model {card.name!r}: {source} is not a file")
    final = destination(card)
    if final.is_file() and not force:
        return final
    actual = sha256_file(source)
    if actual != card.weights["sha256"]:
        raise FetchError(f"model {card.name!r}: {source} has sha256 {actual}, not the card's "
                         f"{card.weights['sha256']} ({card.weights['file']}); refused, nothing installed")
    final.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    os.close(handle)
    try:
        shutil.copyfile(source, temporary)
        _check_and_place(card, Path(temporary), final, source=str(source))
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)
    return final


# ----------------------------------------------------------------------------------------------------- internals
class _Retryable(Exception):
    """A download that stopped for a reason that another try may not meet (cut connection, timeout, 5xx)."""


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _download(url: str, part: Path, timeout: float, expected_size: Optional[int],
              progress: Optional[Progress]) -> None:
    """Append the rest of ``url`` to ``part`` (from byte ``part``'s size); raise _Retryable or FetchError."""
    have = _size(part)
    if expected_size is not None and have > expected_size:
        part.unlink()  # longer than the release: not a prefix of it
        have = 0
    if expected_size is not None and have == expected_size:
        return  # complete from an earlier run; the checksum decides
    headers = {"User-Agent": "NerveSeg-models-fetch", "Accept-Encoding": "identity"}
    if have:
        headers["Range"] = f"bytes={have}-"
    request = urllib.request.Request(url, headers=headers)
    try:
        response = urllib.request.urlopen(request, timeout=timeout)  # noqa: S310 - http(s) checked by the card
    except urllib.error.HTTPError as error:
        if error.code == 416 and have:  # nothing after ``have``: the part is complete (or wrong: the checksum says)
            return
        if error.code >= 500 or error.code == 429:
            raise _Retryable(f"HTTP {error.code} {error.reason}") from None
        raise FetchError(f"{url}: HTTP {error.code} {error.reason}") from None
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise _Retryable(f"cannot reach {url}: {reason}") from None
    with response:
        status = getattr(response, "status", 200)
        mode = "ab"
        if have and status != 206:
            log.info("%s ignored the range request (HTTP %s): downloading from the first byte", url, status)
            have, mode = 0, "wb"
        elif have:
            first = _content_range_start(response.headers.get("Content-Range"))
            if first != have:
                raise _Retryable(f"asked for bytes from {have}, got a range starting at {first}")
        length = response.headers.get("Content-Length")
        total = have + int(length) if length and length.isdigit() else expected_size
        done = have
        try:
            with open(part, mode) as stream:
                if progress:
                    progress(done, total)
                for chunk in _chunks(response):
                    stream.write(chunk)
                    done += len(chunk)
                    if progress:
                        progress(done, total)
                stream.flush()
                os.fsync(stream.fileno())
        except (OSError, http.client.HTTPException, socket.timeout) as error:
            if isinstance(error, OSError) and error.errno is not None and not isinstance(
                    error, (ConnectionError, socket.timeout)):
                raise FetchError(f"cannot write {part}: {error}") from None  # disk full, permissions: not retried
            raise _Retryable(f"connection cut after {done} bytes ({type(error).__name__}: {error})") from None
        if total is not None and done < total:
            raise _Retryable(f"connection closed after {done} of {total} bytes")


def _chunks(response) -> Iterator[bytes]:
    while True:
        chunk = response.read(CHUNK_BYTES)
        if not chunk:
            return
        yield chunk


def _content_range_start(value: Optional[str]) -> Optional[int]:
    """The first byte of ``Content-Range: bytes FIRST-LAST/TOTAL``; None when absent or malformed."""
    if not value or not value.startswith("bytes "):
        return None
    first = value[len("bytes "):].split("-", 1)[0]
    return int(first) if first.isdigit() else None


def _check_and_place(card: ModelCard, candidate: Path, final: Path, source: str) -> None:
    """Rename ``candidate`` to ``final`` when its sha256 is the card's; else delete it and raise FetchError."""
    actual = sha256_file(candidate)
    if actual != card.weights["sha256"]:
        candidate.unlink()
        raise FetchError(f"model {card.name!r}: the file from {source} has sha256 {actual}, not the card's "
                         f"{card.weights['sha256']}; refused and deleted, nothing installed")
    os.chmod(candidate, 0o644)
    os.replace(candidate, final)
    log.info("%s: weights installed at %s (sha256 checked)", card.name, final)


@contextlib.contextmanager
def _exclusive(part: Path, name: str):
    """Hold a lock beside ``part`` so that two fetches of one file never append to the same part (POSIX flock;
    elsewhere no lock: two simultaneous fetches there may have to be re-run, the checksum still guards the file)."""
    lock_path = part.with_name(part.name + ".lock")
    stream = open(lock_path, "a+b")
    acquired = False
    try:
        try:
            import fcntl
        except ImportError:  # Windows
            fcntl = None
        if fcntl is not None:
            try:
                fcntl.flock(stream.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                raise FetchError(f"model {name!r}: another fetch of {part.name} is running (lock {lock_path})") \
                    from None
        acquired = True
        yield
    finally:
        if acquired:  # only the holder removes the lock file; a refused second fetch leaves it to the holder
            with contextlib.suppress(OSError):
                lock_path.unlink()
        stream.close()
