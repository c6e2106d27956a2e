"""Files convc writes and reads back: atomic writes, clear OS errors, module-file integrity.

Every file convc writes (a module and its sidecar, `run -o`) goes to a temporary file in the
same directory first and is renamed over the target only when complete: a full disk or a
Ctrl-C leaves the previous file intact. OS failures become ConvcErrors naming the cause.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import struct
import tempfile
from pathlib import Path

from .errors import ConvcError, file_error

# errno -> what the user reads
OS_REASONS = {
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is exceeded",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.EROFS: "the file system is read-only",
    errno.ENOENT: "the directory does not exist",
    errno.ENOTDIR: "a part of the path is not a directory",
    errno.EISDIR: "it is a directory",
    errno.ENAMETOOLONG: "the name is too long",
    errno.EFBIG: "the file is too large for this file system",
}

# words in a compiler's or linker's message -> the same reasons (export_library runs gcc)
_MESSAGE_REASONS = {
    "No space left on device": errno.ENOSPC,
    "Disk quota exceeded": errno.EDQUOT,
    "Permission denied": errno.EACCES,
    "Read-only file system": errno.EROFS,
}


def os_reason(err: BaseException) -> str | None:
    """The cause of a failed write, in words, or None when it is not an OS failure we know."""
    code = getattr(err, "errno", None)
    if code in OS_REASONS:
        return OS_REASONS[code]
    text = str(err)
    for words, code in _MESSAGE_REASONS.items():
        if words in text:
            return OS_REASONS[code]
    return None


def check_output_path(path: Path, what: str = "output") -> Path:
    """A path we may write: its directory exists and is writable, and it is not a directory."""
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise file_error(path, f"is a directory; give a file name for the {what}")
    if not parent.exists():
        raise file_error(path, f"cannot write the {what}: the directory {parent} does not exist",
                         f"create it first: mkdir -p {parent}")
    if not parent.is_dir():
        raise file_error(path, f"cannot write the {what}: {parent} is not a directory")
    if not os.access(parent, os.W_OK):
        raise file_error(path, f"cannot write the {what}: permission denied in {parent}")
    return path


@contextlib.contextmanager
def atomic_paths(*targets: Path, what: str = "output", suffix: str = ""):
    """Temporary paths beside each target; renamed over the targets when the block succeeds.

    On any failure the temporaries are removed, the targets are untouched, and an OS failure
    becomes a ConvcError naming the cause (disk full, permission, missing directory).
    """
    targets = [check_output_path(Path(t), what) for t in targets]
    temps = []
    try:
        for target in targets:
            fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=f".tmp{suffix}", dir=target.parent)
            os.close(fd)
            temps.append(Path(name))
        yield temps
        mode = 0o666 & ~_umask()
        for temp, target in zip(temps, targets):
            os.chmod(temp, mode)          # mkstemp makes 0600; a written file gets the usual mode
            os.replace(temp, target)
    except ConvcError:
        raise
    except Exception as err:
        reason = os_reason(err)
        if reason is None:
            raise
        raise file_error(targets[0], f"cannot write the {what}: {reason}",
                         "the previous file, if any, is unchanged") from None
    finally:
        for temp in temps:
            with contextlib.suppress(OSError):
                temp.unlink()


def _umask() -> int:
    current = os.umask(0o022)
    os.umask(current)
    return current


def write_bytes_atomically(path: Path, data_writer, what: str = "output") -> Path:
    """data_writer(file object) writes the content; the path appears only when it is complete."""
    with atomic_paths(path, what=what) as (temp,):
        with open(temp, "wb") as f:
            data_writer(f)
            f.flush()
            os.fsync(f.fileno())
    return Path(path)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ----------------------------------------------------------------------------- ELF sanity
def elf_problem(data: bytes) -> str | None:
    """Why these bytes are not a complete 64-bit little-endian ELF shared library, or None.

    The dynamic loader maps what the headers promise: a file cut short makes it fault (SIGBUS)
    instead of failing. Checking the header, program and section tables against the size
    catches truncation; only the sidecar's SHA-256 catches an edited file.
    """
    if len(data) < 64 or data[:4] != b"\x7fELF":
        return "it is not a shared library (no ELF header)"
    if data[4] != 2 or data[5] != 1:
        return "it is not a 64-bit little-endian shared library"
    e_type, = struct.unpack_from("<H", data, 16)
    if e_type != 3:
        return "it is an ELF file but not a shared library"
    phoff, shoff = struct.unpack_from("<QQ", data, 32)
    phentsize, phnum, shentsize, shnum = struct.unpack_from("<HHHH", data, 54)
    if phoff + phentsize * phnum > len(data) or shoff + shentsize * shnum > len(data):
        return f"it is cut short ({len(data):,} bytes; its headers describe more)"
    for i in range(phnum):
        p_type, _, p_offset, _, _, p_filesz = struct.unpack_from("<IIQQQQ", data, phoff + i * phentsize)
        if p_type == 1 and p_offset + p_filesz > len(data):      # PT_LOAD
            return f"it is cut short ({len(data):,} bytes; a loadable segment ends at {p_offset + p_filesz:,})"
    return None
