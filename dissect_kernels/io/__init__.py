"""Reading and writing files: atomic writes (io.atomic) and the results format (io.results)."""
from dissect_kernels.io.atomic import (atomic_write, atomic_write_file, ensure_dir, read_json, write_json,
                                       write_text)
from dissect_kernels.io.results import load_results, save_results, summary_dict

__all__ = ["atomic_write", "atomic_write_file", "ensure_dir", "load_results", "read_json", "save_results",
           "summary_dict", "write_json", "write_text"]
