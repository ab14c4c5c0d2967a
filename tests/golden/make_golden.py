"""Record the golden outputs of small default runs (dissect, gan, ablate) through the CLI.

Run once, on the code before a restructuring: `python tests/golden/make_golden.py`. The golden
test (tests/test_golden.py) reruns the same commands and requires bit-identical result tensors
and identical unit tables. The commands are in GOLDEN_RUNS so both use the same ones."""
from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent

# name -> (CLI arguments without --out, the result files to compare)
GOLDEN_RUNS = {
    "dissect": (["dissect", "--dataset", "synthetic:48", "--batch-size", "16", "--quiet",
                 "--rotation", "3"],
                ["results.safetensors", "units.csv"]),
    "gan": (["gan", "--num-samples", "24", "--ace-samples", "8", "--batch-size", "8", "--quiet"],
            ["results.safetensors", "units.csv"]),
    "ablate": (["ablate", "--dataset", "synthetic:48", "--batch-size", "16", "--quiet",
                "--top-n", "1,2,5"],
               ["ablation.safetensors", "ablation.csv"]),
}


def run(name: str, out: Path) -> Path:
    """Run one golden command into out (a fresh folder); returns out."""
    from dissect_kernels.cli import main
    args, _ = GOLDEN_RUNS[name]
    code = main(args + ["--out", str(out)])
    if code not in (0, None):
        raise SystemExit(f"{name} exited with {code}")
    return out


if __name__ == "__main__":
    import torch
    torch.set_num_threads(1)
    for name, (_, files) in GOLDEN_RUNS.items():
        with tempfile.TemporaryDirectory() as tmp:
            out = run(name, Path(tmp) / name)
            dest = HERE / name
            dest.mkdir(exist_ok=True)
            for f in files:
                shutil.copy(out / f, dest / f)
        print("recorded", name, file=sys.stderr)
