"""Fetch, verify and unpack the official Speech Commands archives.

Three properties matter on flaky or missing networks:

* resumable: bytes go to ``<archive>.part`` and a rerun asks for the rest (HTTP Range);
* verified: the archive's SHA-256 is checked before anything is unpacked;
* atomic: the archive is unpacked into a hidden folder beside the target, marked
  complete, then renamed, so a half-unpacked folder never looks like data.

Offline, the first connection fails within ``timeout`` seconds and the message says
where to put an archive fetched elsewhere; a rerun then verifies and unpacks it.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import re
import shutil
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from kws.cli import UserError

BASE_URL = "https://download.tensorflow.org/data/"
COMPLETE = ".complete"
CHUNK = 1 << 20


@dataclass(frozen=True)
class Archive:
    name: str
    #: published SHA-256, or None where we know of none (see ``expected_sha256``)
    sha256: str | None

    @property
    def folder(self) -> str:
        return self.name.removesuffix(".tar.gz")


# The full-archive checksums are the ones torchaudio's SPEECHCOMMANDS loader checks.
# We know of no published checksum for the test-set archives: for those the first
# verified download records its own (see ``expected_sha256``).
ARCHIVES = {
    ("v0.01", False): Archive(
        "speech_commands_v0.01.tar.gz",
        "743935421bb51cccdb6bdd152e04c5c70274e935c82119ad7faeec31780d811d",
    ),
    ("v0.02", False): Archive(
        "speech_commands_v0.02.tar.gz",
        "af14739ee7dc311471de98f5f9d2c9191b18aedfe957f4a6ff791c709868ff58",
    ),
    ("v0.01", True): Archive("speech_commands_test_set_v0.01.tar.gz", None),
    ("v0.02", True): Archive("speech_commands_test_set_v0.02.tar.gz", None),
}
VERSIONS = ("v0.01", "v0.02")

Progress = Callable[[int, int | None], None]


class DownloadError(UserError):
    """A download or unpack that failed for a reason the message explains."""


def archive_for(version: str, test_set: bool = False) -> Archive:
    if version not in VERSIONS:
        raise ValueError(f"unknown Speech Commands version {version!r}; choose v0.01 or v0.02")
    return ARCHIVES[(version, test_set)]


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


def _check_hex(value: str, where: str) -> str:
    value = value.strip().lower()
    if not re.fullmatch(r"[0-9a-f]{64}", value):
        raise ValueError(f"{where}: a SHA-256 is 64 hex digits, got {value!r}")
    return value


def expected_sha256(archive_path: Path, known: str | None, override: str | None) -> str | None:
    """The checksum to verify against: ``--sha256``, else the published one, else a
    ``<archive>.sha256`` file beside the archive (``sha256sum`` format), else None."""
    if override:
        return _check_hex(override, "--sha256")
    if known:
        return known
    sidecar = archive_path.with_name(archive_path.name + ".sha256")
    if sidecar.is_file():
        words = sidecar.read_text().split()
        return _check_hex(words[0] if words else "", str(sidecar))
    return None


def fetch(url: str, dest: Path, timeout: float = 15.0, progress: Progress | None = None) -> None:
    """Download ``url`` to ``dest`` through ``dest.part``, resuming what a previous run left.

    ``timeout`` bounds the connection and every read, so an offline machine fails fast.
    """
    part = dest.with_name(dest.name + ".part")
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as err:
        if err.code == 416 and have:  # nothing past what we have: the .part is whole
            part.replace(dest)
            return
        raise DownloadError(f"{url}: HTTP {err.code} {err.reason}") from err
    except (urllib.error.URLError, OSError, http.client.HTTPException) as err:
        reason = getattr(err, "reason", err)
        raise DownloadError(
            f"cannot reach {url} ({reason}). If this machine is offline, fetch that file "
            f"elsewhere and place it at {dest}, then run the download again: it will check "
            "its SHA-256 and unpack it"
        ) from err
    with response:
        resumed = have > 0 and response.status == 206
        if resumed:
            first = re.match(r"bytes (\d+)-", response.headers.get("Content-Range", ""))
            if not first or int(first.group(1)) != have:
                raise DownloadError(f"{url}: server resumed at the wrong byte "
                                    f"({response.headers.get('Content-Range')!r}, want {have})")
        else:
            have = 0  # the server sent the whole file: start over
        size = response.headers.get("Content-Length")
        total = have + int(size) if size is not None else None
        done = have
        try:
            with open(part, "ab" if resumed else "wb") as f:
                while block := response.read(CHUNK):
                    f.write(block)
                    done += len(block)
                    if progress:
                        progress(done, total)
        except (OSError, http.client.HTTPException) as err:
            raise DownloadError(
                f"{url}: download interrupted after {done:,} bytes ({err}); rerun to resume"
            ) from err
    if total is not None and done != total:
        raise DownloadError(
            f"{url}: download stopped at {done:,} of {total:,} bytes; rerun to resume"
        )
    part.replace(dest)


def _remove_stale(root: Path, folder: str) -> None:
    """Hidden folders that an earlier, killed unpack left behind."""
    for stale in root.glob(f".{folder}.*.partial"):
        shutil.rmtree(stale, ignore_errors=True)


def extract(archive: Path, target: Path, sha256: str) -> None:
    """Unpack ``archive`` into ``target`` all at once, or not at all."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent))
    try:
        try:
            with tarfile.open(archive, "r:*") as tar:
                # "data" refuses absolute paths, links out of the folder and device files.
                tar.extractall(tmp, filter="data")
        except (tarfile.TarError, EOFError, OSError) as err:
            raise DownloadError(f"{archive}: cannot unpack ({err}); delete it and rerun") from err
        marker = {"archive": archive.name, "sha256": sha256, "unpacked": time.time()}
        (tmp / COMPLETE).write_text(json.dumps(marker) + "\n")
        tmp.rename(target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def download(
    version: str,
    root: str | Path,
    test_set: bool = False,
    sha256: str | None = None,
    url: str | None = None,
    timeout: float = 15.0,
    keep_archive: bool = True,
    progress: Progress | None = None,
    log: Callable[[str], None] = lambda msg: print(msg, file=sys.stderr),
) -> Path:
    """Make ``root/<archive name>/`` hold the unpacked archive; returns that folder.

    Steps, each skipped when already done: fetch to ``root/<archive>.tar.gz`` (or use
    the file found there), verify its SHA-256, unpack atomically. An archive with no
    known checksum is verified against ``<archive>.sha256`` if present; otherwise its
    checksum is written there and printed, to be compared with a trusted source.
    """
    archive = archive_for(version, test_set)
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    target = root / archive.folder
    if (target / COMPLETE).is_file():
        log(f"{target} is already unpacked and verified")
        return target
    if target.exists():
        raise DownloadError(
            f"{target} exists but has no {COMPLETE} marker (unpacked by hand, or by an "
            "older run?); move it away and rerun, or use it as it is with --root"
        )
    _remove_stale(root, archive.folder)
    path = root / archive.name
    expected = expected_sha256(path, archive.sha256, sha256)
    fetched = not path.is_file()
    if fetched:
        source = url or BASE_URL + archive.name
        log(f"downloading {source} -> {path}")
        fetch(source, path, timeout, progress)
    else:
        log(f"using {path} found on disk")
    actual = sha256_of(path)
    if expected is None:
        sidecar = path.with_name(path.name + ".sha256")
        sidecar.write_text(f"{actual}  {path.name}\n")
        log(f"warning: no published SHA-256 for {path.name}; recorded {actual} in {sidecar}. "
            "Compare it with a trusted source; later runs verify against it")
    elif actual != expected:
        if fetched:
            path.unlink()
        fate = "deleted it; rerun to download again" if fetched else "replace or delete it"
        raise DownloadError(
            f"{path}: SHA-256 is {actual}, expected {expected} ({fate}, or pass --sha256 "
            "if the archive was republished)"
        )
    log(f"SHA-256 ok; unpacking into {target}")
    extract(path, target, actual)
    if not keep_archive:
        path.unlink()
    return target
