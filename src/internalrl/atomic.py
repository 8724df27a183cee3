"""Writing files so that a kill, a crash or a full disk never leaves half a file behind.

Every file the pipeline keeps is written through :func:`replacing`: the bytes go to a
temporary file beside the target, are flushed to disk, and the temporary file is renamed over
the target in one step. A reader therefore sees the old file or the new one, never a mix.
An operating-system error while writing (no space left, read-only filesystem, no permission)
is raised as :class:`StorageError` with a message that names the file and what to do.

:func:`sha256` and :func:`manifest` / :func:`verify` keep and check checksums of a finished
artifact's files, so a file damaged after it was written is reported, not silently used.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
from pathlib import Path
from typing import Iterator

from .errors import StorageError

MANIFEST = "MANIFEST.json"  # {relative path: {"sha256": ..., "bytes": ...}} of a finished artifact


def describe_os_error(e: OSError, path: Path | str) -> str:
    """A one-line explanation of an operating-system error at ``path``, with what to do."""
    what = {
        errno.ENOSPC: "the disk is full; free some space and re-run the same command (it resumes)",
        errno.EDQUOT: "the disk quota is exceeded; free some space and re-run the same command (it resumes)",
        errno.EROFS: "the filesystem is read-only; choose a writable --out folder",
        errno.EACCES: "permission denied; choose a folder you can write to",
        errno.EPERM: "permission denied; choose a folder you can write to",
        errno.ENOTDIR: "a part of this path is a file, not a folder; choose another --out folder",
        errno.EISDIR: "this path is a folder where a file was expected",
        errno.EEXIST: "a file is in the way; choose another --out folder",
    }.get(e.errno, e.strerror or type(e).__name__)
    return f"{path}: {what}"


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # some filesystems do not open folders; the rename is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def replacing(path: Path | str) -> Iterator[Path]:
    """``with replacing(p) as tmp: write tmp`` -> ``p`` holds the new content, whole, or is untouched.

    The temporary name carries the process id, so two writers never share one; on any error the
    temporary file is removed and ``p`` is left as it was."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        with open(tmp, "rb+") as f:  # flush the written bytes to disk before the rename publishes them
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except OSError as e:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise StorageError(describe_os_error(e, path)) from None
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def write_bytes(path: Path | str, data: bytes) -> Path:
    with replacing(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text(path: Path | str, text: str) -> Path:
    return write_bytes(path, text.encode())


def write_json(path: Path | str, obj, **kw) -> Path:
    """JSON with ``allow_nan=False`` (a NaN in a result is a bug to report, not a value to keep)."""
    return write_text(path, json.dumps(obj, indent=2, allow_nan=False, **kw))


def sha256(path: Path | str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def manifest(folder: Path) -> dict:
    """Checksums of every file under ``folder`` (flushed to disk first), written to its MANIFEST.json."""
    entries = {}
    for p in sorted(folder.rglob("*")):
        if p.is_file() and p.name != MANIFEST:
            with open(p, "rb+") as f:
                os.fsync(f.fileno())
            entries[p.relative_to(folder).as_posix()] = {"sha256": sha256(p), "bytes": p.stat().st_size}
    write_json(folder / MANIFEST, entries)
    return entries


def _manifest_for(path: Path) -> tuple[Path, dict] | None:
    """The MANIFEST.json of the artifact that holds ``path`` (its folder or one above), if any."""
    for folder in list(path.parents)[:3]:
        m = folder / MANIFEST
        if m.exists():
            try:
                return folder, json.loads(m.read_text())
            except (OSError, ValueError):
                raise StorageError(f"{m} is corrupt; delete the folder {folder} and re-run the command that made it") from None
    return None


def missing_files(folder: Path) -> list[str]:
    """Files the MANIFEST.json of ``folder`` lists that are gone or have another size (cheap: no hashing)."""
    found = _manifest_for(folder / MANIFEST)
    if found is None:
        return []
    _, entries = found
    return [rel for rel, e in entries.items()
            if not (folder / rel).is_file() or (folder / rel).stat().st_size != e["bytes"]]


def verify(path: Path | str) -> None:
    """Raise :class:`StorageError` if ``path`` differs from the checksum its artifact recorded.
    A file without a recorded checksum (a run made before checksums were kept) passes."""
    path = Path(path)
    found = _manifest_for(path)
    if found is None:
        return
    folder, entries = found
    entry = entries.get(path.relative_to(folder).as_posix())
    if entry is None:
        return
    if not path.is_file():
        raise StorageError(f"{path} is missing; delete the folder {folder} and re-run the command that made it")
    if sha256(path) != entry["sha256"]:
        raise StorageError(f"{path} is corrupt (its checksum differs from the one recorded when it was written); "
                           f"delete the folder {folder} and re-run the command that made it")
