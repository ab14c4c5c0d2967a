"""Atomic file writes: every file is written to a temporary name in its folder, flushed and
renamed into place, so a crash or a full disk leaves either the old file or the new one."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable


def ensure_dir(out_dir) -> Path:
    """Create out_dir (and parents); a clear OSError naming it if it cannot be created/written."""
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
        if not out.is_dir():
            raise NotADirectoryError(f"{out} is not a directory")
        probe = tempfile.NamedTemporaryFile(dir=out, prefix=".probe-", delete=True)
        probe.close()
    except OSError as e:
        raise OSError(f"cannot write to output directory '{out}': "
                      f"{e.strerror or e}") from e
    return out


def umask_mode() -> int:
    """The mode a plain open() gives a new file under the user's umask."""
    return 0o666 & ~_umask()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _temp_beside(path: Path) -> Path:
    """A new empty temporary file in path's folder, with the permissions a plain open() would
    give it under the user's umask (mkstemp makes 0600 files)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.fchmod(fd, 0o666 & ~_umask())
    os.close(fd)
    return Path(tmp)


def atomic_write(out_dir, files: dict[str, Callable[[Path], Any]], *, fsync: bool = False) -> list[Path]:
    """Write every file of `files` (name -> writer(path)) to temp files in out_dir, then move
    them all into place; on any error remove the temps and leave existing files untouched."""
    out_dir = Path(out_dir)
    temps: dict[str, Path] = {}
    try:
        for name, writer in files.items():
            temps[name] = _temp_beside(out_dir / name)
            writer(temps[name])
            os.chmod(temps[name], 0o666 & ~_umask())     # a writer may recreate it (safetensors: 0600)
            if fsync:
                with open(temps[name], "rb") as f:
                    os.fsync(f.fileno())
        for name, tmp in temps.items():
            os.replace(tmp, out_dir / name)
    finally:
        for tmp in temps.values():
            if tmp.exists():
                tmp.unlink()
    return [out_dir / name for name in files]


def atomic_write_file(path, writer: Callable[[Path], Any], *, fsync: bool = True) -> Path:
    """One file written atomically (and, by default, flushed to disk before the rename)."""
    path = Path(path)
    atomic_write(path.parent, {path.name: writer}, fsync=fsync)
    return path


def write_text(path: Path, text: str) -> None:
    """A writer for atomic_write: UTF-8 text."""
    Path(path).write_text(text, encoding="utf-8")


def write_json(path: Path, value, **kw) -> None:
    """A writer for atomic_write: indented JSON plus a newline."""
    write_text(path, json.dumps(value, indent=1, **kw) + "\n")


def read_json(path, what: str = "file") -> Any:
    """JSON from path; a clear ValueError naming the file when it is not JSON."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except ValueError as err:
        raise ValueError(f"{what} {path} is not valid JSON ({err})") from None


def savable(tensors: dict) -> dict:
    """Tensors as safetensors.save_file takes them: CPU, contiguous, no two sharing memory (a
    tensor is copied only when it shares its storage with one seen before, so a 16k-unit
    result is not duplicated in memory just to be written)."""
    seen, out = set(), {}
    for name, t in tensors.items():
        t = t.detach().cpu().contiguous()
        ptr = t.untyped_storage().data_ptr()
        if t.numel() and ptr in seen:
            t = t.clone()
        seen.add(t.untyped_storage().data_ptr())
        out[name] = t
    return out
