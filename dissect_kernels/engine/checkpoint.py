"""Atomic checkpoints of a run's accumulators, keyed by a content hash of every input.

A folder holds `state-<step>.safetensors` (all tensors) and `manifest.json` (the key, the step,
progress, the tensor file's name and its sha256). Each file is written to a temporary name,
flushed and renamed, the manifest last, so a kill at any instant leaves the previous checkpoint
readable. A checkpoint made for other inputs (another key), or one that cannot be read whole
(a truncated or altered state file, a manifest missing a field), is reported in one line and
removed; the run then starts over instead of reusing it."""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from dissect_kernels.io.atomic import atomic_write_file, savable, write_text

MANIFEST = "manifest.json"
_MANIFEST_FIELDS = ("key", "step", "tensors", "sha256", "progress")
log = logging.getLogger("dissect_kernels")


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
    hashes of its index files and a fingerprint of every file its rows name (size and
    modification time: replacing an image under an unchanged index.csv changes it)."""
    ident = {"type": type(dataset).__name__, "len": len(dataset)}
    root = getattr(dataset, "root", None)
    if root is not None:
        ident["root"] = str(Path(root).resolve())
        for name in ("index.csv", "label.csv", "category.csv"):
            f = Path(root) / name
            if f.is_file():
                ident[name] = hashlib.sha256(f.read_bytes()).hexdigest()
    files = getattr(dataset, "files", None)
    if callable(files):
        ident["files"] = files_fingerprint(files())
    return ident


def files_fingerprint(paths) -> str:
    """sha256 over (path, size, mtime in ns) of each file ("missing" for an absent one)."""
    h = hashlib.sha256()
    for path in paths:
        try:
            st = os.stat(path)
            h.update(f"{path}|{st.st_size}|{st.st_mtime_ns}\n".encode())
        except OSError:
            h.update(f"{path}|missing\n".encode())
    return h.hexdigest()


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class Checkpointer:
    """Save/restore (progress, tensors) for one run; `interval_s` throttles maybe_save."""

    def __init__(self, directory, key: str, interval_s: float = 120.0):
        self.dir = Path(directory)
        self.key = key
        self.interval_s = float(interval_s)
        self._last = time.monotonic()
        self._step = 0

    def load(self) -> tuple[dict, dict] | None:
        """(progress, tensors) of a whole checkpoint made with the same key, else None; a stale
        or damaged checkpoint is reported (one log line) and removed."""
        manifest = self.dir / MANIFEST
        if not manifest.is_file():
            return None
        try:
            meta = json.loads(manifest.read_text())
            missing = [k for k in _MANIFEST_FIELDS if k not in meta]
            if missing:
                raise ValueError(f"its manifest lacks {missing}")
            if meta["key"] != self.key:
                log.info("checkpoint in %s was made for other inputs; starting over", self.dir)
                self.clear()
                return None
            state = self.dir / meta["tensors"]
            if file_sha256(state) != meta["sha256"]:
                raise ValueError(f"{state.name} does not match its checksum")
            tensors = load_file(str(state))
        except (OSError, ValueError, TypeError, RuntimeError) as err:
            log.warning("checkpoint in %s is unreadable (%s); starting over", self.dir,
                        " ".join(str(err).split())[:200])
            self.clear()
            return None
        self._step = int(meta["step"])
        return meta["progress"], tensors

    def maybe_save(self, progress: dict, tensors_fn) -> bool:
        """Save when interval_s has passed since the last save (tensors_fn() is called then)."""
        if time.monotonic() - self._last < self.interval_s:
            return False
        self.save(progress, tensors_fn())
        return True

    def save(self, progress: dict, tensors: dict) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self._step += 1
        name = f"state-{self._step}.safetensors"
        plain = savable(tensors)
        state = atomic_write_file(self.dir / name, lambda tmp: save_file(plain, tmp))
        meta = {"key": self.key, "step": self._step, "tensors": name, "sha256": file_sha256(state),
                "progress": progress, "saved_at": time.time()}
        atomic_write_file(self.dir / MANIFEST, lambda tmp: write_text(tmp, json.dumps(meta)))
        for old in self.dir.glob("state-*.safetensors"):
            if old.name != name:
                old.unlink(missing_ok=True)
        self._last = time.monotonic()

    def clear(self) -> None:
        """Remove this checkpoint's folder, and its parents up to `.checkpoint` once empty."""
        shutil.rmtree(self.dir, ignore_errors=True)
        top = next((p for p in self.dir.parents if p.name == ".checkpoint"), None)
        if top is None:
            return
        for parent in self.dir.parents:
            try:
                parent.rmdir()              # only succeeds when empty (another rank may race)
            except OSError:
                break
            if parent == top:
                break
