"""Small I/O helpers shared by every stage: atomic writes that never replace what kept did not
write, and reading text (plain or gzip) with errors that name the file, line and byte."""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import math
import os
import shutil
import tempfile
import zlib
from pathlib import Path
from typing import IO, Any, Iterator

from kept.errors import InputFileError, KeptError

__all__ = ["MARKER", "open_text", "is_gzip", "input_error", "check_out_dir", "atomic_path",
           "atomic_write", "atomic_dir", "replace_dir", "finite_json", "dump_json", "clear_stale_temps"]

# Written into every folder `atomic_dir` creates: only folders holding it (or empty ones) are replaced.
MARKER = ".kept"
_GZIP_MAGIC = b"\x1f\x8b"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _public(path: Path, mode: int) -> None:
    # mkstemp/mkdtemp create 0600/0700 for safety while writing; the finished file should carry
    # the permissions an ordinary open() would have given it.
    os.chmod(path, mode & ~_umask())


def is_gzip(path: str | Path) -> bool:
    """True when the file starts with the gzip magic bytes, whatever its name."""
    with open(path, "rb") as fh:
        return fh.read(2) == _GZIP_MAGIC


def open_text(path: str | Path, encoding: str = "utf-8") -> IO[str]:
    """Open a text file for reading, gunzipping gzip data (named `.gz` or not) on the fly.

    A UTF-8 byte-order mark is dropped. Decoding and gzip errors surface while reading: wrap the
    loop in `input_error(path, what)` to turn them into one line with the file and line.
    """
    p = Path(path)
    if encoding.lower().replace("-", "") == "utf8":
        encoding = "utf-8-sig"
    raw = gzip.open(p, "rb") if p.suffix == ".gz" or is_gzip(p) else open(p, "rb")
    return io.TextIOWrapper(raw, encoding=encoding, newline="")


def _first_bad_line(path: Path) -> tuple[int, int, int] | None:
    """(line, byte offset in the file, bad byte) of the first non-UTF-8 line, or None."""
    opener = gzip.open if path.suffix == ".gz" or is_gzip(path) else open
    offset = 0
    try:
        with opener(path, "rb") as fh:
            for lineno, line in enumerate(fh, 1):
                try:
                    line.decode("utf-8")
                except UnicodeDecodeError as exc:
                    return lineno, offset + exc.start, line[exc.start]
                offset += len(line)
    except (OSError, EOFError, zlib.error):
        return None
    return None


@contextlib.contextmanager
def input_error(path: str | Path, what: str = "UTF-8 text") -> Iterator[None]:
    """Turn decoding, gzip and I/O errors raised while reading `path` into one-line InputFileErrors."""
    p = Path(path)
    try:
        yield
    except UnicodeDecodeError as exc:
        bad = _first_bad_line(p)
        if bad:
            line, offset, byte = bad
            raise InputFileError(p, f"byte 0x{byte:02x} at offset {offset} is not UTF-8 (expected {what})",
                                 line=line) from exc
        raise InputFileError(p, f"not UTF-8 text (expected {what}): {exc.reason}") from exc
    except EOFError as exc:
        size = p.stat().st_size if p.is_file() else 0
        raise InputFileError(p, f"gzip data cut off at byte {size}, before its end marker (truncated copy?); "
                                f"expected {what}") from exc
    except (gzip.BadGzipFile, zlib.error) as exc:
        raise InputFileError(p, f"corrupt gzip data ({exc}); expected {what}") from exc


def _marked_or_empty(target: Path) -> bool:
    return (target / MARKER).is_file() or not any(target.iterdir())


def check_out_dir(path: str | Path, force: bool = False) -> Path:
    """Raise unless `path` is free, empty, or a folder kept wrote (so replacing it loses nothing).

    `force` allows replacing anything: a user's own folder, or a file.
    """
    target = Path(path)
    if force or not (target.exists() or target.is_symlink()):
        return target
    if target.is_dir() and not target.is_symlink():
        if _marked_or_empty(target):
            return target
        raise KeptError(f"{target}: folder exists and was not written by kept (no {MARKER} marker); "
                        "choose another --out, empty it, or pass --force to replace it")
    raise KeptError(f"{target}: exists and is not a folder; choose another --out or pass --force to replace it")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clear_stale_temps(target: Path) -> None:
    """Remove `.NAME.<pid>.*.tmp` left beside `target` by a killed process (any pid not running)."""
    prefix = f".{target.name}."
    if not target.parent.is_dir():
        return
    for p in target.parent.iterdir():
        name = p.name
        if not (name.startswith(prefix) and name.endswith(".tmp")):
            continue
        pid = name[len(prefix):].split(".", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)


def _temp_prefix(target: Path) -> str:
    return f".{target.name}.{os.getpid()}."


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temp path beside `path`; on success rename it over `path`, on error remove it.

    Readers never see a half-written file: the rename is atomic on one filesystem.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    clear_stale_temps(target)
    fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(target), suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if tmp_path.exists():
            _public(tmp_path, 0o666)
        os.replace(tmp_path, target)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_write(path: str | Path, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[IO]:
    """Open a temp file for writing that replaces `path` only when the block succeeds."""
    with atomic_path(path) as tmp:
        kwargs = {} if "b" in mode else {"encoding": encoding, "newline": ""}
        with open(tmp, mode, **kwargs) as fh:
            yield fh


def replace_dir(tmp: Path, target: Path) -> None:
    """Put the finished folder `tmp` in place of `target` (a folder or file, or nothing)."""
    _public(tmp, 0o777)
    if target.exists() or target.is_symlink():
        old = target.with_name(f".{target.name}.{os.getpid()}.old.tmp")
        if old.is_dir():
            shutil.rmtree(old, ignore_errors=True)
        os.replace(target, old)
        os.replace(tmp, target)
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink(missing_ok=True)
    else:
        os.replace(tmp, target)


@contextlib.contextmanager
def atomic_dir(path: str | Path, force: bool = False) -> Iterator[Path]:
    """Yield a temp directory that replaces directory `path` as a whole when the block succeeds.

    Only an empty folder or one kept wrote (it holds the `.kept` marker) is replaced; anything
    else raises before any work unless `force`.
    """
    target = check_out_dir(path, force)
    target.parent.mkdir(parents=True, exist_ok=True)
    clear_stale_temps(target)
    tmp = Path(tempfile.mkdtemp(prefix=_temp_prefix(target), suffix=".tmp", dir=target.parent))
    try:
        yield tmp
        (tmp / MARKER).write_text("written by kept; kept replaces this folder as a whole\n", encoding="utf-8")
        check_out_dir(target, force)  # someone may have put files there meanwhile
        replace_dir(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def finite_json(obj: Any) -> Any:
    """`obj` with every NaN or infinite float replaced by None: JSON has no NaN."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_json(v) for v in obj]
    if hasattr(obj, "item") and hasattr(obj, "dtype"):  # numpy scalars
        return finite_json(obj.item())
    return obj


def dump_json(obj: Any, fh: IO[str], **kwargs) -> None:
    """json.dump that writes null for NaN/inf instead of invalid JSON."""
    json.dump(finite_json(obj), fh, allow_nan=False, **kwargs)
