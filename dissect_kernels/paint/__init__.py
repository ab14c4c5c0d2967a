"""Interactive painting (GANPaint) for a finished GAN dissection run: the edit (paint_edit,
paint_edits, insertion_values), the run's concepts and their units (Painter, load_painter),
and the local server behind `dissect-kernels paint` (make_server)."""
from dissect_kernels.paint.edit import MODES, PaintEdit, insertion_values, paint_edit, paint_edits
from dissect_kernels.paint.server import make_server
from dissect_kernels.paint.session import Painter, load_painter

__all__ = ["MODES", "PaintEdit", "Painter", "insertion_values", "load_painter", "make_server", "paint_edit",
           "paint_edits"]
