"""Atomic checkpoints of streaming accumulators, keyed by a content hash of every input.

Layout in a folder: `state-<step>.safetensors` (all tensors) and `manifest.json` (the key, the
step, progress and the tensor file's name). Each file is written to a temporary name, fsynced and
renamed, the manifest last, so a kill at any instant leaves the previous checkpoint readable.
A manifest whose key differs from the current run's is stale: it is removed, never reused."""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

MANIFEST = "manifest.json"


def _digest_tensors(h, tensors: dict) -> None:
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")


def content_hash(model: torch.nn.Module | None, **params) -> str:
    """sha256 of the model's parameters and buffers plus the JSON of `params`."""
    h = hashlib.sha256()
    if model is not None:
        _digest_tensors(h, dict(model.state_dict()))
    h.update(json.dumps(params, sort_keys=True, default=str).encode())
    return h.hexdigest()


def dataset_identity(dataset) -> dict:
    """What identifies a dataset's content: its type, length and, for on-disk datasets, the
    hashes of its index files."""
    ident = {"type": type(dataset).__name__, "len": len(dataset)}
    root = getattr(dataset, "root", None)
    if root is not None:
        ident["root"] = str(Path(root).resolve())
        for name in ("index.csv", "label.csv", "category.csv"):
            f = Path(root) / name
            if f.is_file():
                ident[name] = hashlib.sha256(f.read_bytes()).hexdigest()
    return ident


def _atomic_write(path: Path, write) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class Checkpointer:
    """Save/restore (progress, tensors) for one run; `interval_s` throttles maybe_save."""

    def __init__(self, directory, key: str, interval_s: float = 120.0):
        self.dir = Path(directory)
        self.key = key
        self.interval_s = float(interval_s)
        self._last = time.monotonic()
        self._step = 0

    def load(self) -> tuple[dict, dict] | None:
        """(progress, tensors) of a checkpoint made with the same key, else None (a stale one
        is deleted)."""
        manifest = self.dir / MANIFEST
        if not manifest.is_file():
            return None
        try:
            meta = json.loads(manifest.read_text())
        except (OSError, ValueError):
            self.clear()
            return None
        if meta.get("key") != self.key:
            self.clear()
            return None
        self._step = int(meta["step"])
        return meta["progress"], load_file(str(self.dir / meta["tensors"]))

    def maybe_save(self, progress: dict, tensors_fn) -> bool:
        if time.monotonic() - self._last < self.interval_s:
            return False
        self.save(progress, tensors_fn())
        return True

    def save(self, progress: dict, tensors: dict) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self._step += 1
        name = f"state-{self._step}.safetensors"
        plain = {k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}
        _atomic_write(self.dir / name, lambda tmp: save_file(plain, tmp))
        meta = {"key": self.key, "step": self._step, "tensors": name, "progress": progress,
                "saved_at": time.time()}
        _atomic_write(self.dir / MANIFEST, lambda tmp: Path(tmp).write_text(json.dumps(meta)))
        for old in self.dir.glob("state-*.safetensors"):
            if old.name != name:
                old.unlink(missing_ok=True)
        self._last = time.monotonic()

    def clear(self) -> None:
        """Remove this folder's checkpoint files (after a finished run or when stale)."""
        for f in list(self.dir.glob("state-*.safetensors")) + [self.dir / MANIFEST]:
            f.unlink(missing_ok=True)
        for f in self.dir.glob(".*.tmp"):
            f.unlink(missing_ok=True)
