"""Other libraries' arrays go into the ops without copies (DLPack): NumPy on the CPU (strided
views included, outputs written into NumPy memory), CuPy and JAX where installed (skipped
cleanly where not; their GPU cases need a GPU). The data pointer must be shared both ways."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import dissect_kernels as dk

ROOT = Path(__file__).resolve().parents[1]
C = 7


def numpy_inputs(seed: int = 0):
    rng = np.random.default_rng(seed)
    acts = rng.standard_normal((2, 5, 6, 4), dtype=np.float32).transpose(0, 3, 1, 2)  # [2, 4, 5, 6] view
    labels = rng.integers(0, C, (2, 2, 11, 13), dtype=np.int32)
    thresholds = rng.standard_normal(4, dtype=np.float32)
    return acts, labels, thresholds


def shared(t: torch.Tensor, a) -> bool:
    return t.data_ptr() == a.__array_interface__["data"][0]


def test_numpy_inputs_are_wrapped_not_copied():
    acts_np, labels_np, thr_np = numpy_inputs()
    acts, labels, thr = (torch.from_dlpack(a) for a in (acts_np, labels_np, thr_np))
    assert shared(acts, acts_np) and shared(labels, labels_np) and shared(thr, thr_np)
    assert not acts.is_contiguous()  # the strided view travelled as a view
    got = dk.tally(acts, thr, labels, num_concepts=C, backend="auto")
    want = dk.tally(acts.clone(), thr.clone(), labels.clone(), num_concepts=C, backend="reference")
    assert torch.equal(got.intersection, want.intersection) and torch.equal(got.active, want.active)
    stats = dk.label_stats(labels, num_concepts=C)
    assert torch.equal(stats.pixels, dk.label_stats(labels.clone(), num_concepts=C, backend="reference").pixels)
    edited = dk.edit(torch.from_dlpack(np.ascontiguousarray(acts_np)), torch.from_dlpack(thr_np), 0.0)
    assert torch.equal(edited, dk.edit(acts.contiguous(), thr.clone(), 0.0, backend="reference"))


def test_outputs_go_back_to_numpy_and_into_numpy_buffers():
    acts_np, labels_np, thr_np = numpy_inputs(1)
    acts = torch.from_dlpack(acts_np)
    counts = dk.tally(acts, torch.from_dlpack(thr_np), torch.from_dlpack(labels_np), num_concepts=C)
    inter = np.from_dlpack(counts.intersection)
    assert shared(counts.intersection, inter) and inter.dtype == np.int64
    out_np = np.full((2, 4, 11, 13), np.nan, dtype=np.float32)
    returned = dk.upsample(acts, (11, 13), out=torch.from_dlpack(out_np))
    assert shared(returned, out_np) and not np.isnan(out_np).any()
    assert np.array_equal((out_np > thr_np[None, :, None, None]).sum(axis=(2, 3)), counts.active.numpy())


def test_half_precision_numpy():
    acts_np, _, _ = numpy_inputs(2)
    half = np.ascontiguousarray(acts_np, dtype=np.float16)
    t = torch.from_dlpack(half)
    assert t.dtype == torch.float16 and shared(t, half)
    assert torch.equal(dk.upsample(t, 9), dk.upsample(t.clone(), 9, backend="reference"))


def test_example_runs():
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / "dlpack_numpy.py")],
                          capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "counted pixels" in proc.stdout


def test_jax_cpu_arrays():
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    jnp = pytest.importorskip("jax.numpy")
    import jax

    acts_np, _, _ = numpy_inputs(3)
    x = jax.device_put(jnp.asarray(np.ascontiguousarray(acts_np)), jax.devices("cpu")[0])
    t = torch.from_dlpack(x)
    assert t.data_ptr() == x.unsafe_buffer_pointer()
    assert torch.equal(dk.upsample(t, 8), dk.upsample(t.clone(), 8, backend="reference"))


@pytest.mark.gpu
def test_cupy_device_arrays():
    cp = pytest.importorskip("cupy")
    acts = cp.asarray(np.ascontiguousarray(numpy_inputs(4)[0]))
    t = torch.from_dlpack(acts)
    assert t.is_cuda and t.data_ptr() == acts.data.ptr
    up = dk.upsample(t, 12)  # auto: the CUDA kernel reads CuPy's memory in place
    back = cp.from_dlpack(up)
    assert back.data.ptr == up.data_ptr()
    assert torch.equal(up.cpu(), dk.upsample(t.cpu(), 12, backend="reference"))


@pytest.mark.gpu
def test_jax_device_arrays():
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    jnp = pytest.importorskip("jax.numpy")
    import jax

    gpus = [d for d in jax.devices() if d.platform == "gpu"]
    if not gpus:
        pytest.skip("JAX sees no GPU")
    x = jax.device_put(jnp.asarray(np.ascontiguousarray(numpy_inputs(5)[0])), gpus[0])
    t = torch.from_dlpack(x)
    assert t.is_cuda and t.data_ptr() == x.unsafe_buffer_pointer()
    assert torch.equal(dk.upsample(t, 12).cpu(), dk.upsample(t.cpu(), 12, backend="reference"))
