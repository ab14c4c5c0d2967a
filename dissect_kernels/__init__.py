"""dissect_kernels: fused kernels and drivers for Network Dissection and GAN Dissection."""
from dissect_kernels.geometry import Geometry
from dissect_kernels.hooks import Edit, StopForward, Trace, TraceDict, get_module, run_layers
from dissect_kernels.intervene import AblationResult, classifier_ablation, intervene, plot_ablation
from dissect_kernels.ops.edit import edit, edit_
from dissect_kernels.ops.tally import TallyResult, tally

__all__ = ["Geometry", "TallyResult", "tally",
           "edit", "edit_", "intervene", "classifier_ablation", "AblationResult", "plot_ablation",
           "Trace", "TraceDict", "Edit", "StopForward", "get_module", "run_layers"]
__version__ = "0.1.0"
