"""`torch.compile` as an optimisation that never breaks a run.

`torch.compile` itself returns at once and compiles at the first call, so a missing toolchain
(Inductor builds C++ on a CPU and Triton kernels on a GPU) would only surface inside the first
training step. A tiny function is compiled and run first on the training device: where that
fails, the run continues eager with a warning that names the reason.
"""

from __future__ import annotations

import logging

import torch

logger = logging.getLogger(__name__)


def _probe(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.gelu(x) * 2.0 + 1.0


def compiler_works(device: torch.device) -> str | None:
    """None when a compiled function and its gradient run on `device`; otherwise why not.
    The backward is compiled apart, at the first `backward()`, so the probe takes one too."""
    try:
        x = torch.linspace(-1.0, 1.0, 8, device=device, requires_grad=True)
        compiled = torch.compile(_probe, dynamic=False)
        with torch.enable_grad():
            got, expected = compiled(x), _probe(x)
            (got_gradient,) = torch.autograd.grad(got.sum(), x)
            (expected_gradient,) = torch.autograd.grad(expected.sum(), x)
        if not (torch.allclose(got, expected, atol=1e-5)
                and torch.allclose(got_gradient, expected_gradient, atol=1e-5)):  # fmt: skip
            return "a compiled probe gave different numbers from eager"
    except Exception as error:  # any failure means: do not compile
        return describe(error)
    return None


COMPILER_PACKAGES = ("torch/_inductor/", "torch/_functorch/", "torch/_dynamo/", "triton/")
# Frames of those packages that every call of a compiled model runs through, compiling nothing.
RUNTIME_FRAMES = ("compile_wrapper", "_compiled_forward", "_compiled_backward")


def raised_by_the_compiler(error: BaseException) -> bool:
    """Whether `error` came from compiling (Dynamo, AOT autograd, Inductor, Triton), as a
    backward compiled at its first call fails: a frame of theirs whose function compiles
    (`get_or_compile`, `compile_fx`, a backend's `bw_compiler`). Not an error of the compiled
    model's own run (an index out of range, an out-of-memory), which every call of a compiled
    model also raises through their frames, and which running eager would raise again."""
    if isinstance(error, torch.OutOfMemoryError):
        return False
    traceback = error.__traceback__
    while traceback is not None:
        code = traceback.tb_frame.f_code
        filename = code.co_filename.replace("\\", "/")
        if (any(package in filename for package in COMPILER_PACKAGES)
                and "compile" in code.co_name and code.co_name not in RUNTIME_FRAMES):  # fmt: skip
            return True
        traceback = traceback.tb_next
    return False


def describe(error: Exception) -> str:
    """The error's type and the first line of its message (compiler errors run to pages); for
    a backend's failure wrapped by Dynamo (`BackendCompilerFailed`), the backend's own error."""
    inner = getattr(error, "inner_exception", None)
    if isinstance(inner, Exception):
        return describe(inner)
    first_line = (str(error).strip().splitlines() or [""])[0]
    return f"{type(error).__name__}: {first_line}"


def compile_or_eager(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """`model` compiled with static shapes (every batch has the same shape, and dynamic-shape
    kernels are slower), or `model` itself, with a warning, where compiling does not work.

    On the CPU, compiling turns on PyTorch's deterministic algorithms for the process: without
    them Inductor adds embedding gradients with atomic adds across threads, whose order varies
    from run to run, and the same config, data and seed gave different metrics (two runs of the
    default preset parted at step 5 and ended 0.14 val bits per byte apart). With them Inductor
    falls back to ATen's deterministic scatter, at no measured cost (23.2k tokens/s either way
    on the default preset's shape). GPUs keep their faster atomic kernels (`tests/test_cuda.py`
    compares GPU runs within a tolerance)."""
    if device.type == "cpu":
        torch.use_deterministic_algorithms(True, warn_only=True)
    problem = compiler_works(device)
    if problem is None:
        try:
            return torch.compile(model, dynamic=False)
        except Exception as error:
            problem = describe(error)
    logger.warning("torch.compile unavailable on %s (%s); training eager", device, problem)
    return model
