"""run_passes: the one streaming loop under every driver.

For each pass in order it builds the pass's accumulators from the earlier passes' results,
streams this rank's shard of the source through the model (hooks capture the layers the
accumulators read; the forward pass stops early when none needs the output), updates every
accumulator, checkpoints (atomically, keyed by the inputs' content) every `interval` seconds
and at pass boundaries, merges the accumulators across ranks in rank order (exact), and
finalises them into results. A rerun with identical inputs resumes where the last checkpoint
left off and ends bit-identical to an uninterrupted run. At the end, rank 0 writes the outputs
(`write`) and only then is the checkpoint removed, so a failed write loses nothing."""
from __future__ import annotations

import copy
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from tqdm.auto import tqdm

from dissect_kernels import distributed as ddp
from dissect_kernels.engine.cache import ActivationCache, default_max_bytes
from dissect_kernels.engine.checkpoint import Checkpointer, content_hash
from dissect_kernels.engine.protocol import (Pass, Results, check_accumulator, layers_of, needs_labels,
                                             needs_output)
from dissect_kernels.engine.step import LayerView, Step, as_views, capture
from dissect_kernels.io.lock import locked


@dataclass
class CheckpointSpec:
    """Checkpoint a run under `root`/.checkpoint/`name`/rank<r>, keyed by the model's weights
    plus `key` (JSON-able: everything else that decides the result), every `interval` seconds.
    resume=False ignores (and removes) an earlier checkpoint."""

    root: Path | str
    name: str
    key: dict
    interval: float = 120.0
    resume: bool = True


@dataclass
class RunOutput:
    """What run_passes hands back: results per pass, skipped samples by reason (all ranks),
    seconds per pass, where a resumed run picked up (None for a fresh run), and seconds per
    stage (this rank's)."""

    results: Results
    skips: dict[str, dict[int, str]] = field(default_factory=dict)
    timing: dict[str, float] = field(default_factory=dict)
    resumed_at: tuple[str, int] | None = None
    stages: dict[str, float] = field(default_factory=dict)   # data, forward, cache, per accumulator class


def run_passes(model: torch.nn.Module, source, passes: Sequence[Pass], *,
               layers: Sequence["str | LayerView"] = (), device=None, progress: bool = True,
               annotate: Callable[[Step], None] | None = None,
               checkpoint: CheckpointSpec | None = None, distributed: bool = True,
               check_finite: bool = True, finish: Callable[[RunOutput], Any] | None = None,
               write: Callable[[Any, RunOutput], None] | None = None, desc: str = "",
               cache_bytes: int | None = None) -> Any:
    """Stream `source` through `model` once per pass (see the module docstring).

    layers: the views accumulators may read (module names or LayerViews). annotate(step) adds
    fields computed from the output (e.g. a segmenter's labels). distributed=False ignores
    torch.distributed (every rank runs everything). finish(output) turns the RunOutput into the
    driver's result on every rank; write(result, output) runs on rank 0 before the checkpoint is
    removed. cache_bytes bounds the activation cache that spares later passes over the same
    source the decoding and the model (None: a quarter of memory, at most 8 GiB; 0: off).
    Returns finish(output), or the RunOutput."""
    lock = nullcontext() if checkpoint is None else \
        locked(checkpoint.root, suffix="" if ddp.rank() == 0 or not distributed else f".rank{ddp.rank()}")
    with lock:
        run = _Run(model, source, list(passes), as_views(layers), device, progress, annotate,
                   checkpoint, distributed, check_finite, desc, cache_bytes)
        output = run.execute()
        value = finish(output) if finish is not None else output
        if write is not None and run.rank == 0:
            write(value, output)
        if run.ckpt is not None:
            run.ckpt.clear()
    if run.distributed:
        ddp.barrier()
    return value


class _Run:
    def __init__(self, model, source, passes, views, device, progress, annotate, spec,
                 distributed, check_finite, desc, cache_bytes):
        if not passes:
            raise ValueError("run_passes needs at least one pass")
        self.distributed = distributed and ddp.world_size() > 1
        self.rank, self.world = (ddp.rank(), ddp.world_size()) if self.distributed else (0, 1)
        self.model, self.passes, self.annotate = model, passes, annotate
        self.views = {v.name: v for v in views}
        self.source = source.shard(self.rank, self.world)
        self.sources: dict[int, object] = {}          # pass index -> its own (sharded) source
        self.device = torch.device(device) if device is not None else _model_device(model)
        self.show = progress and self.rank == 0
        self.check_finite, self.desc = check_finite, desc
        self.timing: dict[str, float] = {}
        self.stages: dict[str, float] = {}
        self.cache = ActivationCache(default_max_bytes() if cache_bytes is None else cache_bytes)
        self.annotated: tuple[str, ...] = ()
        self.ckpt = None
        if spec is not None:
            key = content_hash(model, **spec.key, passes=[p.name for p in passes],
                               views=[(v.name, v.module, v.capture) for v in views],
                               rank=self.rank, world=self.world)
            folder = Path(spec.root) / ".checkpoint" / spec.name / f"rank{self.rank}"
            self.ckpt = Checkpointer(folder, key, spec.interval)
            if not spec.resume:
                self.ckpt.clear()

    # ------------------------------------------------------------------ the loop
    def execute(self) -> RunOutput:
        first, batch, results, saved = self._restore()
        resumed = (self.passes[first].name if first < len(self.passes) else "done", batch) \
            if saved is not None else None
        with torch.inference_mode():
            for i in range(first, len(self.passes)):
                accs, templates = self._build(i, results)
                if i == first and saved:
                    for name, acc in accs.items():
                        if name in saved:
                            acc.load_state_dict(saved[name])
                started = time.perf_counter()
                seen = self._stream(i, accs, batch if i == first else 0, results)
                self._check_seen(seen, resumed=i == first and batch > 0)
                self._merge(accs, templates)
                results[self.passes[i].name] = {n: a.finalize() for n, a in accs.items()}
                self.timing[self.passes[i].name] = self.timing.get(self.passes[i].name, 0.0) + \
                    time.perf_counter() - started
                self._save(i + 1, 0, {}, results)
        results = {p: {a: _clone(v) for a, v in accs.items()} for p, accs in results.items()}
        return RunOutput(results, self._all_skips(), dict(self.timing), resumed,
                         {k: round(v, 4) for k, v in self.stages.items()})

    def _build(self, i: int, results: Results):
        accs = dict(self.passes[i].build(results))
        for name, acc in accs.items():
            check_accumulator(name, acc)
            unknown = [lay for lay in layers_of(acc) if lay not in self.views]
            if unknown:
                raise ValueError(f"accumulator {name!r} reads layers {unknown} that the run does "
                                 f"not capture (it captures {sorted(self.views)})")
        templates = {n: copy.deepcopy(a) for n, a in accs.items()} if self.distributed else {}
        return accs, templates

    def _source(self, i: int, results: Results):
        """The source of pass i: the run's, or the pass's own (sharded like the run's)."""
        make = self.passes[i].source
        if make is None:
            return self.source
        if i not in self.sources:
            self.sources[i] = make(results).shard(self.rank, self.world)
        return self.sources[i]

    def _stream(self, i: int, accs: dict, skip: int, results: Results) -> int:
        """Run pass i from batch `skip` on; returns how many samples reached the accumulators."""
        source = self._source(i, results)
        mode = self._mode(accs, source, skip)
        seen = 0
        label = f"{self.desc + ' ' if self.desc else ''}pass {i + 1}/{len(self.passes)}: {self.passes[i].name}"
        total, per = source.num_samples, max(1, -(-source.num_samples // max(1, len(source))))
        with tqdm(total=total, initial=min(total, skip * per), desc=label, unit="sample",
                  unit_scale=total >= 100_000, smoothing=0.05, disable=not self.show) as bar:
            for b, batch in enumerate(self._timed(source.batches(skip, fields=mode.fields)), start=skip):
                step = None if batch is None else self._step(b, batch, mode)
                if step is not None:
                    for name, acc in accs.items():
                        with self.clock(type(acc).__name__):
                            acc.update(step)
                    seen += len(step.indices)
                elif mode.filling:
                    self.cache.skip(b)
                bar.update(len(batch) if batch is not None else per)
                if self.ckpt is not None:
                    self.ckpt.maybe_save(self._progress(i, b + 1, accs, results),
                                         lambda: self._tensors(accs, results))
        if mode.filling:
            self.cache.finish(len(source))
        return seen

    def _timed(self, batches):
        """The source's batches, the time spent waiting for each counted as "data"."""
        it = iter(batches)
        while True:
            with self.clock("data"):
                try:
                    batch = next(it)
                except StopIteration:
                    return
            yield batch

    def _mode(self, accs: dict, source, skip: int) -> "_Mode":
        """How pass i gets its steps: which views, whether the model runs to its end, which
        fields the source decodes, and whether the activation cache serves or is filled."""
        wanted = {lay for acc in accs.values() for lay in layers_of(acc)}
        views = [v for v in self.views.values() if v.name in wanted]
        own_source = source is self.source
        output = any(needs_output(a) for a in accs.values())
        labels = any(needs_labels(a) for a in accs.values())
        annotated = self.annotated if self.annotate is not None else ()
        cached = own_source and not output and self.cache.covers(wanted, annotated)
        if cached:
            return _Mode(views, False, ("labels",) if labels else (), True, False)
        filling = own_source and skip == 0 and self.cache.start(wanted)
        fields = ("image", "labels") if labels else ("image",)
        return _Mode(views, output or self.annotate is not None, fields, False, filling)

    def _step(self, b: int, batch, mode: "_Mode") -> Step | None:
        """The step of batch b: from the activation cache, or by running the model (and then
        filling the cache)."""
        if mode.cached:
            return self._cached_step(b, batch)
        with self.clock("data"):
            inputs = _to(batch.inputs, self.device)
            if batch.prepare is not None:
                inputs = batch.prepare(inputs)
        step = Step(self.model, inputs, batch.indices, _to(batch.data, self.device))
        with self.clock("forward"):
            step.acts, step.output = capture(self.model, inputs, mode.views, run_to_end=mode.to_end,
                                             indices=batch.indices, check_finite=self.check_finite)
            before = set(step.data)
            if self.annotate is not None:
                self.annotate(step)
                self.annotated = tuple(sorted(set(step.data) - before))
        if mode.filling:
            with self.clock("cache"):
                self.cache.put(b, batch.indices, step.acts, {k: step.data[k] for k in self.annotated})
        return step

    def _cached_step(self, b: int, batch) -> Step | None:
        """Batch b's captures from the cache, restricted to the samples both passes read (a
        sample skipped by one pass, e.g. for an unreadable label file, is left out)."""
        entry = self.cache.batches.get(b)
        if entry is None:
            return None
        cached_idx, acts, fields = entry
        keep_batch = torch.isin(batch.indices, cached_idx)
        keep_cache = torch.isin(cached_idx, batch.indices)
        if not bool(keep_batch.any()):
            return None
        pick = lambda t, rows: t if bool(rows.all()) else t[rows.to(t.device)]  # noqa: E731
        data = {k: None if v is None else pick(v, keep_batch) for k, v in batch.data.items()}
        step = Step(self.model, None, batch.indices[keep_batch], _to(data, self.device))
        step.acts = {k: pick(v, keep_cache) for k, v in acts.items()}
        step.data.update({k: pick(v, keep_cache) for k, v in fields.items()})
        return step

    def clock(self, stage: str) -> "_Clock":
        """Time a stage of the run (summed over batches and passes into self.stages)."""
        return _Clock(self.stages, stage)

    def _check_seen(self, seen: int, resumed: bool) -> None:
        """A pass that no sample reached (on any rank) fails with what was skipped and why."""
        total = sum(ddp.all_gather(seen)) if self.distributed else seen
        if total or resumed:
            return
        skips = self._all_skips()
        counts = "; ".join(f"{len(items)} {reason}" for reason, items in skips.items())
        first = next((m for items in skips.values() for m in items.values()), "none")
        raise ValueError(f"no readable samples: every sample was skipped ({counts or 'the source is empty'}"
                         f"; the first: {first})")

    def _merge(self, accs: dict, templates: dict) -> None:
        """Every rank ends with the rank-ordered merge of every rank's state."""
        if not self.distributed:
            return
        for name, acc in accs.items():
            states = ddp.all_gather({k: v.detach().cpu() for k, v in acc.state_dict().items()})
            merged = None
            for state in states:
                if not state:
                    continue
                peer = copy.deepcopy(templates[name])
                peer.load_state_dict(state)
                merged = peer if merged is None else (merged.merge(peer) or merged)
            if merged is not None:
                acc.load_state_dict(merged.state_dict())

    def _my_skips(self) -> dict[str, dict[int, str]]:
        """What every source of this rank skipped, by reason (a sample read twice counts once)."""
        out: dict[str, dict[int, str]] = {}
        for source in [self.source, *self.sources.values()]:
            for reason, items in source.skips().items():
                out.setdefault(reason, {}).update(items)
        return out

    def _all_skips(self) -> dict[str, dict[int, str]]:
        mine = self._my_skips()
        parts = ddp.all_gather(mine) if self.distributed else [mine]
        out: dict[str, dict[int, str]] = {}
        for part in parts:
            for reason, items in part.items():
                out.setdefault(reason, {}).update(items)
        return {r: dict(sorted(items.items())) for r, items in out.items() if items}

    # ------------------------------------------------------------------ checkpoints
    def _progress(self, i: int, batches: int, accs: dict, results: Results) -> dict:
        return {"pass": i, "batches": batches, "accumulators": list(accs),
                "results": {p: {a: _keys(v) for a, v in r.items()} for p, r in results.items()},
                "skips": {k: {str(i): m for i, m in v.items()} for k, v in self._my_skips().items()},
                "timing": self.timing}

    @staticmethod
    def _tensors(accs: dict, results: Results) -> dict:
        out = {}
        for j, acc in enumerate(accs.values()):
            out.update({f"acc/{j}/{k}": v for k, v in acc.state_dict().items()})
        for pi, r in enumerate(results.values()):
            for ai, value in enumerate(r.values()):
                if isinstance(value, torch.Tensor):
                    out[f"res/{pi}/{ai}"] = value
                else:
                    out.update({f"res/{pi}/{ai}/{ki}": v for ki, v in enumerate(value.values())
                                if v is not None})
        return out

    def _save(self, i: int, batches: int, accs: dict, results: Results) -> None:
        if self.ckpt is not None:
            self.ckpt.save(self._progress(i, batches, accs, results), self._tensors(accs, results))

    def _restore(self):
        """(first pass, first batch, results so far, saved accumulator states or None)."""
        loaded = self.ckpt.load() if self.ckpt is not None else None
        if loaded is None:
            return 0, 0, {}, None
        progress, tensors = loaded
        results: Results = {}
        for pi, (pname, accs) in enumerate(progress["results"].items()):
            results[pname] = {}
            for ai, (aname, keys) in enumerate(accs.items()):
                results[pname][aname] = tensors[f"res/{pi}/{ai}"] if keys is None else \
                    {k: tensors.get(f"res/{pi}/{ai}/{ki}") for ki, k in enumerate(keys)}
        saved = {}
        for j, name in enumerate(progress["accumulators"]):
            prefix = f"acc/{j}/"
            saved[name] = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        self.source.restore_skips({k: {int(i): m for i, m in v.items()}
                                   for k, v in progress["skips"].items()})
        self.timing.update(progress.get("timing", {}))
        i, b = int(progress["pass"]), int(progress["batches"])
        if self.show:
            where = self.passes[i].name if i < len(self.passes) else "all passes done"
            tqdm.write(f"resuming from checkpoint: pass {min(i + 1, len(self.passes))}/"
                       f"{len(self.passes)} ({where}), batch {b}/{len(self.source)}")
        return i, b, results, {n: s for n, s in saved.items() if s}


def _keys(value):
    return None if isinstance(value, torch.Tensor) else list(value)


def _clone(value):
    """Results leave inference mode as ordinary tensors (usable in autograd later)."""
    if isinstance(value, torch.Tensor):
        return value.clone()
    return {k: None if v is None else v.clone() for k, v in value.items()}


def _to(x, device):
    if isinstance(x, torch.Tensor):
        return x.to(device, non_blocking=True)
    if isinstance(x, dict):
        return {k: _to(v, device) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(_to(v, device) for v in x)
    return x


def _model_device(model) -> torch.device:
    return next((p.device for p in model.parameters()), torch.device("cpu"))


@dataclass
class _Mode:
    """How a pass gets its steps (see _Run._mode)."""

    views: list
    to_end: bool
    fields: tuple
    cached: bool
    filling: bool


class _Clock:
    """A context manager adding its block's seconds to stages[stage]."""

    def __init__(self, stages: dict, stage: str):
        self.stages, self.stage = stages, stage

    def __enter__(self):
        self.t0 = time.perf_counter()

    def __exit__(self, *exc):
        self.stages[self.stage] = self.stages.get(self.stage, 0.0) + time.perf_counter() - self.t0
