"""Backend choice with fake GPUs and drivers (on CPU): "auto" never picks a backend that cannot
run (module missing, compute capability not built, driver too old for the static runtime or
for PTX JIT, kernels that do not load), falls back cuda -> triton -> torch/reference with one
log line per reason per process; a named backend that cannot run fails with one line."""
from __future__ import annotations

import logging
import types

import pytest
import torch

import dissect_kernels as dk
from dissect_kernels import _native

GPU = torch.device("cuda", 0)
TALLY = ("cpu", "cuda", "triton", "reference")
LABEL_STATS = ("torch", "reference")


def fake_cuda_module(archs=(80, 86, 89, 90), runtime=13000, driver=13000, load_problem=""):
    """Stands in for dissect_kernels._cuda as built for `archs` with CUDA `runtime`."""
    return types.SimpleNamespace(built_archs=lambda: list(archs), runtime_version=lambda: runtime,
                                 driver_version=lambda: driver, device_problem=lambda index: load_problem,
                                 device_count=lambda: 1)


@pytest.fixture
def machine(monkeypatch):
    """set(capability=(9, 0), triton=True, **module) installs a fake GPU, driver and _cuda
    module (module=None: not built); the log-once memory starts empty."""
    real_native = _native.native
    monkeypatch.setattr(_native, "_logged", set())

    def set_machine(capability=(9, 0), triton=True, module="default", **build):
        cuda = fake_cuda_module(**build) if module == "default" else module
        monkeypatch.setattr(_native, "native", lambda name: cuda if name == "_cuda" else real_native(name))
        monkeypatch.setattr(_native, "_device_problem", lambda index: cuda.device_problem(index))
        monkeypatch.setattr(_native, "device_capability", lambda device: capability)
        monkeypatch.setattr(_native, "triton_available", lambda: triton)

    return set_machine


def warnings_of(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "dissect_kernels"]


def test_a_suitable_gpu_gets_cuda_silently(machine, caplog):
    machine(capability=(9, 0))
    with caplog.at_level(logging.WARNING, logger="dissect_kernels"):
        assert _native.resolve("auto", GPU, TALLY) == "cuda"
        assert _native.resolve("cuda", GPU, TALLY) == "cuda"
    assert warnings_of(caplog) == []


def test_old_driver_falls_back_to_triton_with_one_log_line(machine, caplog):
    machine(driver=12080)  # a 570 driver: CUDA 12.8, below the static 13.0 runtime
    with caplog.at_level(logging.WARNING, logger="dissect_kernels"):
        for _ in range(3):
            assert _native.resolve("auto", GPU, TALLY) == "triton"
    (line,) = warnings_of(caplog)  # once per process, not per call
    assert "'cuda'" in line and "CUDA 13.0 runtime" in line and ">= 580" in line and "found CUDA 12.8" in line
    assert "using 'triton'" in line and "\n" not in line
    with pytest.raises(_native.BackendUnavailable) as err:
        _native.resolve("cuda", GPU, TALLY)
    assert "\n" not in str(err.value) and "driver for CUDA 13.x (>= 580)" in str(err.value)


def test_no_driver_at_all(machine):
    machine(driver=0)
    with pytest.raises(RuntimeError, match="found no CUDA driver"):
        _native.resolve("cuda", GPU, TALLY)


def test_unbuilt_capability_and_old_gpu_fall_through_to_torch(machine, caplog):
    machine(capability=(7, 5))  # Turing: not built for, and below Triton's 8.0
    with caplog.at_level(logging.WARNING, logger="dissect_kernels"):
        assert _native.resolve("auto", GPU, TALLY) == "reference"
        assert _native.resolve("auto", GPU, LABEL_STATS) == "torch"  # not a fallback: no log
    lines = warnings_of(caplog)
    assert len(lines) == 2
    assert "sm_75 but the module was built for sm_80, sm_86, sm_89, sm_90" in lines[0]
    assert "Triton needs compute capability >= 8.0, the GPU is sm_75" in lines[1]
    with pytest.raises(_native.BackendUnavailable, match="backend 'triton' cannot run on cuda:0: Triton needs"):
        _native.resolve("triton", GPU, TALLY)


@pytest.mark.parametrize("capability,archs,runtime,driver,ok", [
    ((8, 9), (80, 86), 13000, 13000, True),     # sm_86 SASS runs on 8.9
    ((8, 6), (90,), 13000, 13000, False),       # nothing at or below 8.6
    ((10, 0), (80, 90), 13000, 13000, True),    # new major: JIT from sm_90 PTX, driver new enough
    ((10, 0), (80, 90), 13010, 13000, False),   # PTX JIT needs a driver >= the runtime
    ((9, 0), (80, 90), 13010, 13000, True),     # SASS: minor-version compatibility is enough
])
def test_capability_and_driver_rules(machine, capability, archs, runtime, driver, ok):
    machine(capability=capability, archs=archs, runtime=runtime, driver=driver)
    assert (_native.problem("cuda", GPU) is None) == ok, _native.problem("cuda", GPU)


def test_kernels_that_do_not_load_are_not_used(machine, caplog):
    machine(load_problem="no kernel image is available for execution on the device")
    with caplog.at_level(logging.WARNING, logger="dissect_kernels"):
        assert _native.resolve("auto", GPU, TALLY) == "triton"
    assert "the driver cannot load its kernels (no kernel image is available" in warnings_of(caplog)[0]


def test_missing_modules_and_packages(machine):
    machine(module=None, triton=False)
    assert _native.resolve("auto", GPU, TALLY) == "reference"
    with pytest.raises(_native.BackendUnavailable, match="_cuda module was not built"):
        _native.resolve("cuda", GPU, TALLY)
    with pytest.raises(_native.BackendUnavailable, match="the triton package is not installed"):
        _native.resolve("triton", torch.device("cpu"), TALLY)


def test_cpu_tensors_never_choose_gpu_backends(machine, caplog):
    machine()
    cpu = torch.device("cpu")
    with caplog.at_level(logging.WARNING, logger="dissect_kernels"):
        assert _native.resolve("auto", cpu, TALLY) in ("cpu", "reference")
    assert warnings_of(caplog) == [] or "'cpu'" in warnings_of(caplog)[0]
    with pytest.raises(_native.BackendUnavailable, match="it needs CUDA tensors, these are on cpu"):
        dk.upsample(torch.randn(1, 2, 3, 3), 5, backend="cuda")


def test_the_cli_reports_an_unusable_backend_in_one_line(monkeypatch):
    """The real error from a real op, through the real CLI handler: one line, no traceback."""
    from dissect_kernels import cli
    from dissect_kernels.cli import dissect as dissect_command

    monkeypatch.setattr(dissect_command, "run", lambda args: dk.upsample(
        torch.randn(1, 2, 3, 3), 5, backend=args.backend) and 0)
    monkeypatch.delenv("DK_TRACEBACK", raising=False)
    with pytest.raises(SystemExit) as exit_:
        cli.main(["dissect", "--backend", "cuda"])
    message = str(exit_.value.code)
    assert message.startswith("dissect-kernels: error: backend 'cuda' cannot run on cpu")
    assert "\n" not in message
