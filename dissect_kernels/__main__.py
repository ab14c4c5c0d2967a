"""`python -m dissect_kernels` runs the CLI."""
import sys

from dissect_kernels.cli import main

sys.exit(main())
