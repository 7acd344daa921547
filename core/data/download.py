"""Downloading one URL to `<name>.part` (resumed with an HTTP Range request), and checking it.

`download` only ever writes the `.part` file; the caller verifies it with `verify` and renames
it, so a file with its final name is always complete. An interrupted download (network error,
Ctrl-C) leaves the `.part` file, and the next call continues from its size.
"""

from __future__ import annotations

import hashlib
import http.client
import sys
import urllib.error
import urllib.request
from pathlib import Path

from .errors import ChecksumError

CHUNK_BYTES = 1 << 20


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify(path: Path, size: int | None, sha256: str | None, shown_name: str) -> str:
    """Check `path` against the expected size and sha256 (either may be None); return its sha256."""
    actual = path.stat().st_size
    if size is not None and actual != size:
        raise ChecksumError(f"{shown_name}: size {actual} bytes, manifest says {size}")
    digest = sha256_of(path)
    if sha256 and digest != sha256.lower():
        raise ChecksumError(f"{shown_name}: sha256 {digest} does not match the manifest's {sha256}")
    return digest


def download(url: str, part: Path, timeout: float = 60.0, progress: bool = True) -> None:
    """Stream `url` into `part`, resuming from its current size when the server honours Range.

    A server that ignores Range (status 200) gets the whole file again, written from the start.
    Network and HTTP errors are OSError naming the URL.
    """
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as err:
        if err.code == 416 and have:  # range past the end: the part file is already complete
            return
        raise OSError(f"{url}: HTTP {err.code} {err.reason}") from err
    except urllib.error.URLError as err:
        raise OSError(f"{url}: {err.reason}") from err
    with response:
        resumed = bool(have) and getattr(response, "status", 200) == 206
        total = response.headers.get("Content-Length")
        total = int(total) + (have if resumed else 0) if total else None
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(
                total=total,
                initial=have if resumed else 0,
                unit="B",
                unit_scale=True,
                desc=part.name.removesuffix(".part"),
                file=sys.stderr,
            )
        try:
            with open(part, "ab" if resumed else "wb") as out:
                for chunk in iter(lambda: response.read(CHUNK_BYTES), b""):
                    out.write(chunk)
                    if bar:
                        bar.update(len(chunk))
        except (TimeoutError, ConnectionError, http.client.HTTPException) as err:  # keep .part: the next call resumes
            raise OSError(f"{url}: download interrupted ({err}); run fetch again to resume") from err
        finally:
            if bar:
                bar.close()
