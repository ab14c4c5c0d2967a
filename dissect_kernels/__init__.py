"""dissect_kernels: fused kernels and drivers for Network Dissection and GAN Dissection."""
from dissect_kernels.geometry import Geometry
from dissect_kernels.ops.tally import TallyResult, tally

__all__ = ["Geometry", "TallyResult", "tally"]
__version__ = "0.1.0"
