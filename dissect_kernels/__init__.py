"""dissect_kernels: fused kernels and drivers for Network Dissection and GAN Dissection."""
import os as _os
import sys as _sys

if "torch" not in _sys.modules:   # before any OpenMP pool starts: idle threads sleep, not spin,
    _os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")   # so a busy machine does not stall them
from dissect_kernels._version import __version__  # noqa: F401  (the one place it is written)
from dissect_kernels import analysis  # noqa: F401  (dk.analysis.robustness, ...: the papers' analyses)
from dissect_kernels.ace import ace, rank_units_by_ace
from dissect_kernels.alpha import optimize_alpha
from dissect_kernels.artifacts import artifact_units
from dissect_kernels.context import insertion_context
from dissect_kernels.dissect import dissect
from dissect_kernels.engine.layers import LayerSpec
from dissect_kernels.gan_real import generated_vs_real
from dissect_kernels.generator import dissect_generator
from dissect_kernels.geometry import Geometry
from dissect_kernels.hooks import Edit, StopForward, Trace, TraceDict, get_module, run_layers
from dissect_kernels.ablation import AblationResult, classifier_ablation
from dissect_kernels.intervene import intervene
from dissect_kernels.ops.edit import edit, edit_
from dissect_kernels.report.ablation import plot_ablation
from dissect_kernels.ops.label_stats import LabelStats, label_stats
from dissect_kernels.ops.segment_stats import segment_stats
from dissect_kernels.ops.tally import TallyResult, tally
from dissect_kernels.ops.upsample import upsample
from dissect_kernels.io import load_results, save_results
from dissect_kernels.results import DissectionResult, LayerResult
from dissect_kernels.segmenters import TorchSegmenter, hf_segmenter
from dissect_kernels.stats.iou_tally import IoUTally
from dissect_kernels.stats.exact_quantile import ExactQuantile
from dissect_kernels.stats.quantile import QuantileEstimator, QuantileSketch, make_quantile
from dissect_kernels.stats.tail_sketch import TailSketch
from dissect_kernels.stats.topk import TopK

__all__ = [
    "ace", "analysis", "artifact_units", "dissect_generator", "generated_vs_real", "hf_segmenter", "insertion_context",
    "optimize_alpha", "rank_units_by_ace", "TorchSegmenter",
    "AblationResult", "DissectionResult", "Edit", "ExactQuantile", "Geometry", "IoUTally", "LabelStats",
    "LayerResult", "LayerSpec", "QuantileEstimator", "QuantileSketch", "StopForward", "TailSketch", "TallyResult", "TopK", "Trace", "TraceDict", "classifier_ablation", "dissect",
    "edit", "edit_", "get_module", "intervene", "label_stats", "load_results", "make_quantile", "plot_ablation",
    "run_layers", "save_results", "segment_stats", "tally", "upsample",
]
