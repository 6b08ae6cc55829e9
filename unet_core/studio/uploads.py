"""Data a user hands the app: zip uploads and folders typed into a page, checked before a byte
is written or read.

Zip uploads
    :func:`safe_extract_zip` checks the whole archive before writing a byte: no absolute member
    paths, no ``..``, no symlinks, no encrypted members, at most :data:`MAX_ZIP_MEMBERS` files and
    :data:`MAX_ZIP_BYTES` uncompressed bytes (as declared, and counted again while writing, in case
    a header lies). Anything else is a :class:`ZipRejected` whose message says what was wrong.
    :func:`extract_upload` puts each session's upload in the uploads folder
    (:func:`unet_core.paths.uploads_root`), within a quota, and prunes old ones.

Typed folders
    :func:`resolve_in_root` refuses anything that resolves outside the data root (``..``,
    absolute paths, symlinks pointing out).
"""

from __future__ import annotations

import hashlib
import io as _io
import os
import re
import shutil
import stat
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from ..annotations import AnnotationError, make_dataset
from ..datasets import DatasetError, open_dataset
from ..errors import UserError
from ..paths import UPLOADS_ENV, uploads_root

#: Zip bomb limits: files in an uploaded zip, and their total uncompressed size.
MAX_ZIP_MEMBERS = 20_000


MAX_ZIP_BYTES = 4 * 1024**3


#: Extracted uploads older than this are removed when a new one arrives (any session).
UPLOAD_MAX_AGE_S = 24 * 3600


#: All extracted uploads together (every session) stay under this; ``UNET_STUDIO_UPLOADS_QUOTA_GB``.
UPLOADS_QUOTA_BYTES = 8 * 1024**3


UPLOADS_QUOTA_ENV = "UNET_STUDIO_UPLOADS_QUOTA_GB"


#: Free disk space an upload must leave behind.
UPLOAD_DISK_MARGIN = 1024**3


#: The file that marks a folder as an upload of this app: only marked folders are ever pruned.
UPLOAD_MARK = ".unet-studio-upload"


#: Folders skipped when extracting: macOS resource forks, not data.
_ZIP_SKIP_DIRS = ("__MACOSX",)


_COPY_CHUNK = 1 << 20


class BrowseError(UserError):
    """Something a user asked for that cannot be shown; the message says why."""


class OutsideRoot(BrowseError):
    """A folder outside the data root."""


class ZipRejected(BrowseError):
    """An uploaded zip that is not extracted; the message says what is wrong with it."""


def resolve_in_root(root: str | Path, relative: str | Path) -> Path:
    """``root / relative`` resolved (symlinks, ``..``), refused unless it lies inside ``root``.

    Args:
        root: the data root.
        relative: what a user typed: a sub-folder name or path relative to ``root``. Absolute
            paths are accepted only when they point inside ``root``.

    Returns:
        The resolved folder (it need not exist).

    Raises:
        OutsideRoot: the path resolves outside ``root``.
    """
    base = Path(root).expanduser().resolve()
    target = (base / Path(str(relative).strip())).resolve()
    if not target.is_relative_to(base):
        raise OutsideRoot(f"{relative!s} is outside the data folder {base}")
    return target


@dataclass(frozen=True)
class _Member:
    info: zipfile.ZipInfo
    parts: tuple[str, ...]


def _member_parts(name: str) -> tuple[str, ...]:
    """Path components of a member name; raises :class:`ZipRejected` for unsafe names."""
    if "\x00" in name:
        raise ZipRejected(f"the member name {name!r} contains a NUL character")
    if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
        raise ZipRejected(f"the member {name!r} has an absolute path")
    parts = tuple(p for p in re.split(r"[\\/]+", name) if p not in ("", "."))
    if ".." in parts:
        raise ZipRejected(f"the member {name!r} points outside the zip's folder (..)")
    return parts


def _is_symlink(info: zipfile.ZipInfo) -> bool:
    # Unix zip tools store the file mode in the high 16 bits; links have S_IFLNK there.
    return stat.S_ISLNK(info.external_attr >> 16)


def _check_members(archive: zipfile.ZipFile, max_members: int, max_bytes: int) -> list[_Member]:
    """The files to extract, after checking every member; raises :class:`ZipRejected`."""
    infos = archive.infolist()
    if len(infos) > max_members:
        raise ZipRejected(f"it holds {len(infos)} entries; at most {max_members} are accepted")
    members: list[_Member] = []
    total = 0
    for info in infos:
        parts = _member_parts(info.filename)
        if _is_symlink(info):
            raise ZipRejected(f"the member {info.filename!r} is a symbolic link; links are not accepted")
        if info.flag_bits & 0x1:
            raise ZipRejected(f"the member {info.filename!r} is password-protected")
        if info.is_dir() or not parts or parts[0] in _ZIP_SKIP_DIRS:
            continue
        total += info.file_size
        if total > max_bytes:
            raise ZipRejected(
                f"it unpacks to more than {_size_text(max_bytes)} (a zip bomb, or a data set too large "
                "to upload)"
            )
        members.append(_Member(info, parts))
    return members


def safe_extract_zip(
    source: str | Path | IO[bytes],
    target: str | Path,
    max_members: int | None = None,
    max_bytes: int | None = None,
) -> list[Path]:
    """Extract a zip into ``target`` after checking every member; nothing is written on refusal.

    Directories are created as needed, ``__MACOSX/`` litter is skipped, file permissions and
    times from the zip are ignored.

    Args:
        source: the zip file or a binary file object.
        target: the folder to extract into (created; should be empty).
        max_members: most entries accepted (default :data:`MAX_ZIP_MEMBERS`).
        max_bytes: most uncompressed bytes accepted (default :data:`MAX_ZIP_BYTES`).

    Returns:
        The extracted files.

    Raises:
        ZipRejected: not a zip, or a member that is unsafe or over the limits.
    """
    max_members = MAX_ZIP_MEMBERS if max_members is None else max_members
    max_bytes = MAX_ZIP_BYTES if max_bytes is None else max_bytes
    base = Path(target)
    base.mkdir(parents=True, exist_ok=True)
    base = base.resolve()
    try:
        with zipfile.ZipFile(source) as archive:
            members = _check_members(archive, max_members, max_bytes)
            written: list[Path] = []
            budget = max_bytes
            for member in members:
                dest = base.joinpath(*member.parts)
                if not dest.resolve().is_relative_to(base):  # defence in depth: checked by name above
                    raise ZipRejected(f"the member {member.info.filename!r} points outside the zip's folder")
                dest.parent.mkdir(parents=True, exist_ok=True)
                with archive.open(member.info) as src, open(dest, "wb") as out:
                    budget = _copy_limited(src, out, budget, max_bytes)
                written.append(dest)
            return written
    except zipfile.BadZipFile as exc:
        raise ZipRejected(f"it is not a readable zip file ({exc})") from exc
    except NotImplementedError as exc:  # an unsupported compression method
        raise ZipRejected(f"it uses a compression this program cannot unpack ({exc})") from exc
    except (OSError, EOFError, RuntimeError) as exc:
        raise ZipRejected(f"it cannot be unpacked ({exc})") from exc


def _copy_limited(src: IO[bytes], out: IO[bytes], budget: int, max_bytes: int) -> int:
    """Copy while counting; a member that unpacks to more than its header said is caught here."""
    while chunk := src.read(_COPY_CHUNK):
        budget -= len(chunk)
        if budget < 0:
            raise ZipRejected(f"it unpacks to more than {_size_text(max_bytes)} (a zip bomb)")
        out.write(chunk)
    return budget


def find_dataset_folder(root: str | Path, max_depth: int = 3) -> Path:
    """The first folder at or below ``root`` (breadth first) that opens as a data set.

    A zip made by compressing a data set's folder holds that folder, not its contents; both work.

    Raises:
        DatasetError: no folder down to ``max_depth`` levels matches a layout.
    """
    root = Path(root)
    first_error: DatasetError | None = None
    for folder in _folders_breadth_first(root, max_depth):
        try:
            return open_dataset(folder).root
        except DatasetError as exc:
            first_error = first_error or exc
    message = str(first_error).replace(f"{root}: ", "", 1) if first_error else "no data set layout found"
    raise DatasetError(message)


def private_folder(root: Path) -> Path:
    """``root``, created mode 0700 if missing, and checked: a real folder (not a symbolic link that
    someone planted), owned by this user, writable by nobody else (POSIX).

    Raises:
        BrowseError: it fails a check; the message says which and what to do.
    """
    try:
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = root.lstat()
    except OSError as exc:
        raise BrowseError(f"the uploads folder {root} cannot be made ({exc.strerror or exc})") from exc
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode):
        raise BrowseError(f"the uploads folder {root} is a link or not a folder; remove it, or set "
                          f"{UPLOADS_ENV} to a folder of your own")
    if hasattr(os, "getuid") and (info.st_uid != os.getuid() or info.st_mode & 0o022):
        raise BrowseError(f"the uploads folder {root} belongs to another user or others may write to it; "
                          f"set {UPLOADS_ENV} to a folder of your own")
    return root


def uploads_quota() -> int:
    """Bytes all extracted uploads may take together (:data:`UPLOADS_QUOTA_BYTES` or the env)."""
    try:
        return int(float(os.environ[UPLOADS_QUOTA_ENV]) * 1024**3)
    except (KeyError, ValueError):
        return UPLOADS_QUOTA_BYTES


def extract_upload(data: bytes, session: str, root: str | Path | None = None) -> Path:
    """Extract an uploaded zip for one session and return the data set folder inside it.

    The zip goes to ``root/<session>/<hash of its bytes>`` (``root`` checked by
    :func:`private_folder`; the session folder marked with :data:`UPLOAD_MARK`); the session's
    earlier upload is removed (a session shows one upload at a time), as are other sessions'
    uploads older than :data:`UPLOAD_MAX_AGE_S`; only marked folders are ever removed. The
    unpacked size must fit in :func:`uploads_quota` with the other uploads, and leave
    :data:`UPLOAD_DISK_MARGIN` of free disk. The same bytes again reuse the extracted folder.

    Raises:
        ZipRejected: see :func:`safe_extract_zip`; over the quota or the free disk space.
        DatasetError: the zip holds no folder of a known layout.
        BrowseError: the uploads folder is not safe to use (see :func:`private_folder`).
    """
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", session):
        raise ValueError(f"invalid session name {session!r}")
    root = private_folder(Path(root) if root is not None else uploads_root())
    _prune_uploads(root, keep=session)
    session_dir = root / session
    digest = hashlib.sha256(data).hexdigest()[:16]
    folder = session_dir / digest
    if not folder.is_dir():
        if _is_upload(session_dir):
            shutil.rmtree(session_dir, ignore_errors=True)  # the session's earlier upload
        _check_room(data, root)
        session_dir.mkdir(mode=0o700, exist_ok=True)
        (session_dir / UPLOAD_MARK).touch()
        partial = session_dir / f".{digest}.partial"
        try:
            safe_extract_zip(_io.BytesIO(data), partial)
        except ZipRejected:
            shutil.rmtree(partial, ignore_errors=True)
            raise
        partial.rename(folder)
    try:
        return find_dataset_folder(folder)
    except DatasetError:
        made = dataset_from_annotations(folder)
        if made is None:
            raise
        return made


#: The folder of an upload that holds outlines (QuPath GeoJSON, Fiji ROI sets) beside ``images/``.
ANNOTATIONS_DIR = "annotations"
#: The data set made from them, beside the two.
FROM_ANNOTATIONS_DIR = "dataset-from-annotations"


def dataset_from_annotations(root: Path, max_depth: int = 3) -> Path | None:
    """The first folder at or below ``root`` (breadth first) with ``images/`` and
    :data:`ANNOTATIONS_DIR` made into a data set beside them (:func:`unet_core.annotations.make_dataset`,
    once: an upload of the same bytes reuses it); None when there is no such folder.

    Raises:
        DatasetError: the annotations cannot be made into a data set (the message says why).
    """
    for folder in _folders_breadth_first(root, max_depth):
        if (folder / "images").is_dir() and (folder / ANNOTATIONS_DIR).is_dir():
            out = folder / FROM_ANNOTATIONS_DIR
            if not out.is_dir():  # made whole or not at all (make_dataset builds it aside)
                try:
                    make_dataset(folder / "images", folder / ANNOTATIONS_DIR, out, link_images=True)
                except AnnotationError as exc:
                    raise DatasetError(str(exc)) from None
            return open_dataset(out).root
    return None


def _folders_breadth_first(root: Path, max_depth: int) -> Iterator[Path]:
    """``root`` and the folders below it down to ``max_depth`` levels, level by level, each
    folder's own in name order (dot folders, OS litter and links left out), listed lazily: a
    caller that stops at the first match reads no further."""
    level = [root]
    for _ in range(max_depth + 1):
        yield from level
        level = [p for folder in level for p in sorted(folder.iterdir())
                 if p.is_dir() and not p.is_symlink() and not p.name.startswith(".") and p.name not in _ZIP_SKIP_DIRS]


def _is_upload(folder: Path) -> bool:
    return folder.is_dir() and not folder.is_symlink() and (folder / UPLOAD_MARK).is_file()


def _folder_bytes(folder: Path) -> int:
    total = 0
    for dirpath, _, files in os.walk(folder):
        for name in files:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size
            except OSError:
                continue
    return total


def _check_room(data: bytes, root: Path) -> None:
    """Refuse a zip whose unpacked size does not fit the uploads quota or the free disk space."""
    try:
        with zipfile.ZipFile(_io.BytesIO(data)) as archive:
            size = sum(i.file_size for i in archive.infolist())
    except zipfile.BadZipFile as exc:
        raise ZipRejected(f"it is not a readable zip file ({exc})") from exc
    used = sum(_folder_bytes(d) for d in root.iterdir() if _is_upload(d))
    left = uploads_quota() - used
    if size > left:
        raise ZipRejected(f"it unpacks to {_size_text(size)} but only {_size_text(max(left, 0))} of the "
                          f"{_size_text(uploads_quota())} for uploads is left (uploads are kept a day; raise "
                          f"{UPLOADS_QUOTA_ENV}, or copy the folder into the data folder)")
    free = shutil.disk_usage(root).free
    if size > free - UPLOAD_DISK_MARGIN:
        raise ZipRejected(f"it unpacks to {_size_text(size)} but the disk of {root} has only "
                          f"{_size_text(free)} free")


def _prune_uploads(root: Path, keep: str) -> None:
    """Remove other sessions' uploads older than :data:`UPLOAD_MAX_AGE_S`; marked folders only."""
    cutoff = time.time() - UPLOAD_MAX_AGE_S
    for session_dir in root.iterdir():
        try:
            if session_dir.name != keep and _is_upload(session_dir) and session_dir.stat().st_mtime < cutoff:
                shutil.rmtree(session_dir, ignore_errors=True)
        except OSError:
            continue


def _size_text(n: float) -> str:
    for unit in ("bytes", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


def size_text(n_bytes: int) -> str:
    """A file size for people: ``"1.4 MB"``."""
    return _size_text(float(n_bytes))
