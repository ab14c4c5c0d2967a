"""The papers' analyses, each a module with NAME, HELP, add_arguments(parser), run_cli(args) and
its Python function of the same name (dk.analysis.robustness(...), ...): `dissect-kernels analyze
<NAME>` lists exactly ANALYSES. To add one, write its module and add its name to MODULES."""
from __future__ import annotations

from importlib import import_module

MODULES = ("robustness", "rotation", "pca", "importance", "compose", "compare")

ANALYSES = tuple(import_module(f"{__name__}.{name}") for name in MODULES)
for _module in ANALYSES:                 # the function, not the module, under its name
    globals()[_module.NAME] = getattr(_module, _module.NAME)

__all__ = ["ANALYSES", "MODULES", *(m.NAME for m in ANALYSES)]
