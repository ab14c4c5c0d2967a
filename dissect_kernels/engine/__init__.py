"""The streaming pass engine: model -> hooks -> accumulators -> results.

run_passes owns batching, devices, hooks, progress, skipped samples, checkpoints/resume and the
merge across torch.distributed ranks; a driver only composes accumulators into passes. See
docs/architecture.md for the picture and for how to write an accumulator."""
from dissect_kernels.engine.checkpoint import Checkpointer, content_hash, dataset_identity
from dissect_kernels.engine.protocol import Accumulator, IntegerCounts, Pass, Results
from dissect_kernels.engine.run import CheckpointSpec, RunOutput, run_passes
from dissect_kernels.engine.sources import Batch, DatasetSource, IndexSource, LoaderSource
from dissect_kernels.engine.step import LayerView, Step, capture

__all__ = ["Accumulator", "Batch", "CheckpointSpec", "Checkpointer", "DatasetSource", "IndexSource",
           "IntegerCounts", "LayerView", "LoaderSource", "Pass", "Results", "RunOutput", "Step", "capture",
           "content_hash", "dataset_identity", "run_passes"]
