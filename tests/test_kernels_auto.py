"""`kernels: auto` chooses Triton or PyTorch per case by measurement (`ganforge.kernels.autotune`).

The decision logic runs on CPU with stand-in backends and a fake timer (there is no GPU to time
here); `measuring(on_cpu=True)` is the test hook that lets `auto` measure CPU tensors, whose
Triton kernels then run under the interpreter (TRITON_INTERPRET=1, set by tests/conftest.py).
Then the real interpreter path through the public dispatch functions on tiny shapes, and the
choices in the run's records (metrics.jsonl through RunLogger, the checkpoint marker's fields).
"""

from __future__ import annotations

import json
import logging

import pytest
import torch

from ganforge import kernels
from ganforge.kernels import autotune
from ganforge.kernels import reference as ref
from ganforge.kernels.tolerance import TOLERANCE

KEYS = {"op", "shape", "dtype", "device", "chosen", "reason", "torch_ms", "triton_ms"}
KEYS |= {"max_abs_err", "measured"}


@pytest.fixture(autouse=True)
def fresh_cache(monkeypatch):
    monkeypatch.delenv(autotune.CPU_ENV, raising=False)
    autotune.reset()
    yield
    autotune.reset()


class FakeTimer:
    """Milliseconds per backend, as given; counts the calls (each one runs the closure once)."""

    def __init__(self, torch_ms: float, triton_ms: float):
        self.ms = {"torch": torch_ms, "triton": triton_ms}
        self.calls: list[str] = []

    def __call__(self, backend, fn):
        fn()
        self.calls.append(backend)
        return self.ms[backend]


class Counted:
    def __init__(self, fn):
        self.fn, self.calls = fn, 0

    def __call__(self, *args):
        self.calls += 1
        return self.fn(*args)


def _double(x):
    return x * 2


def _choose(x, run_triton=_double, run_torch=_double, op="scale"):
    return autotune.choose(op, {"x": x}, run_torch, run_triton, {"factor": 2})


@pytest.mark.parametrize("torch_ms,triton_ms,want", [(2.0, 1.0, "triton"), (1.0, 2.0, "torch")])
def test_the_faster_backend_is_chosen(torch_ms, triton_ms, want):
    timer = FakeTimer(torch_ms, triton_ms)
    with autotune.measuring(timer=timer):
        assert _choose(torch.randn(3, 4)) == want
    assert sorted(timer.calls) == ["torch", "triton"]
    (choice,) = kernels.auto_choices()
    assert set(choice) == KEYS
    assert choice["op"] == "scale" and choice["shape"] == "x=3x4 factor=2"
    assert (choice["dtype"], choice["device"], choice["measured"]) == ("float32", "cpu", "forward")
    assert choice["chosen"] == want and want in choice["reason"]
    assert (choice["torch_ms"], choice["triton_ms"]) == (torch_ms, triton_ms)
    assert choice["max_abs_err"] == 0.0


def test_disagreement_falls_back_to_torch_with_a_warning_naming_the_case(caplog):
    timer = FakeTimer(torch_ms=5.0, triton_ms=1.0)  # Triton "faster", but wrong
    wrong = Counted(lambda x: x * 2 + 0.125)  # off by more than the fp16 row allows
    with autotune.measuring(timer=timer), caplog.at_level(logging.WARNING, "ganforge.kernels"):
        assert _choose(torch.ones(2, 3, dtype=torch.float16), run_triton=wrong) == "torch"
        assert _choose(torch.ones(2, 3, dtype=torch.float16), run_triton=wrong) == "torch"
    assert timer.calls == [] and wrong.calls == 1  # checked once, never timed
    (choice,) = kernels.auto_choices()
    assert choice["chosen"] == "torch" and choice["triton_ms"] is None
    assert choice["max_abs_err"] == 0.125
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    for part in ("scale", "x=2x3 factor=2", "float16", "cpu", "output 0", "max abs error 0.125"):
        assert part in warning, (part, warning)


class _WrongGrad(torch.autograd.Function):
    """Forward right (2x), backward wrong (3x): only a forward+backward check catches it."""

    @staticmethod
    def forward(ctx, x):
        return x * 2

    @staticmethod
    def backward(ctx, grad):
        return grad * 3


def test_a_call_that_needs_a_backward_is_checked_on_its_gradients(caplog):
    timer = FakeTimer(torch_ms=5.0, triton_ms=1.0)
    x = torch.randn(4, 5, requires_grad=True)
    with autotune.measuring(timer=timer), caplog.at_level(logging.WARNING, "ganforge.kernels"):
        assert _choose(x, run_triton=_WrongGrad.apply) == "torch"
        with torch.no_grad():  # forward only: a case of its own, where the kernel is right
            assert _choose(x, run_triton=_WrongGrad.apply) == "triton"
    backward, forward = kernels.auto_choices()
    assert backward["measured"] == "forward+backward" and forward["measured"] == "forward"
    assert "grad of x" in backward["reason"] and "grad of x" in caplog.text


def test_a_failing_triton_kernel_falls_back_to_torch(caplog):
    def broken(x):
        raise RuntimeError("no kernel for this case")

    with autotune.measuring(timer=FakeTimer(1.0, 1.0)), caplog.at_level(logging.WARNING):
        assert _choose(torch.randn(2), run_triton=broken) == "torch"
    (choice,) = kernels.auto_choices()
    assert "no kernel for this case" in choice["reason"] and "no kernel" in caplog.text


def test_each_case_is_measured_once():
    timer = FakeTimer(torch_ms=2.0, triton_ms=1.0)
    triton_run, torch_run = Counted(_double), Counted(_double)
    with autotune.measuring(timer=timer):
        for _ in range(3):
            assert _choose(torch.randn(3, 4), triton_run, torch_run) == "triton"
        assert (triton_run.calls, torch_run.calls, len(timer.calls)) == (2, 2, 2)
        assert _choose(torch.randn(5, 4), triton_run, torch_run) == "triton"  # new shape
        assert _choose(torch.randn(3, 4, dtype=torch.float16), triton_run, torch_run)  # dtype
    assert (triton_run.calls, torch_run.calls, len(timer.calls)) == (6, 6, 6)
    assert [c["shape"] for c in kernels.auto_choices()] == [
        f"x={s} factor=2" for s in ("3x4", "5x4", "3x4")
    ]


def test_cpu_stays_on_torch_without_measuring():
    never = Counted(_double)
    assert not autotune.measures_on(torch.device("cpu"))
    assert _choose(torch.randn(3), run_triton=never, run_torch=never) == "torch"
    x, w = torch.randn(1, 2, 3, 3), torch.randn(2, 3, 4, 4)
    torch.testing.assert_close(
        kernels.conv_transpose2d(x, w, stride=2, padding=1),
        ref.conv_transpose2d_ref(x, w, None, 2, 1),
    )
    assert never.calls == 0 and kernels.auto_choices() == []


def test_forced_backends_bypass_the_measurement():
    x, w = torch.randn(1, 2, 3, 3), torch.randn(2, 3, 4, 4)
    with autotune.measuring(timer=FakeTimer(1.0, 1.0)):
        want = kernels.conv_transpose2d(x, w, stride=2, padding=1, backend="torch")
        got = kernels.conv_transpose2d(x, w, stride=2, padding=1, backend="triton")
    torch.testing.assert_close(got, want)
    assert kernels.auto_choices() == []


def _critic(channels: int):
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(channels, 4, 3, stride=2, padding=1),  # 4x4 -> 2x2
        torch.nn.LeakyReLU(0.2),
        torch.nn.Flatten(),
        torch.nn.Linear(16, 1),
    )


def test_without_a_fake_timer_both_backends_are_timed():
    with autotune.measuring():  # CPU: the wall clock (CUDA events need a GPU)
        _choose(torch.randn(64, 64))
    (choice,) = kernels.auto_choices()
    assert choice["torch_ms"] > 0 and choice["triton_ms"] > 0
    assert choice["chosen"] == ("triton" if choice["triton_ms"] < choice["torch_ms"] else "torch")


def test_the_interpreter_path_through_the_public_functions():
    """Real Triton kernels (interpreted) checked against the reference through the public
    functions, then chosen (the fake timer calls them faster): the results that follow, output
    and gradients, are the Triton kernels' and equal the reference's."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 2, 2, generator=gen).requires_grad_(True)
    w = (torch.randn(3, 4, 4, 4, generator=gen) * 0.2).requires_grad_(True)
    b = torch.randn(4, generator=gen).requires_grad_(True)
    real, fake = torch.randn(2, 4, 4, 4, generator=gen), torch.randn(2, 4, 4, 4, generator=gen)
    eps = torch.rand(2, generator=gen)
    critic = _critic(4)
    with autotune.measuring(timer=FakeTimer(torch_ms=2.0, triton_ms=1.0)):
        y = kernels.conv_transpose2d(x, w, b, stride=2, padding=1, activation="tanh")
        penalty, norm = kernels.gradient_penalty(critic, real, fake, 10.0, eps)
    assert "ConvTranspose2dFunction" in type(y.grad_fn).__name__
    assert "PenaltyFromGrad" in type(penalty.grad_fn).__name__
    y_ref = ref.conv_transpose2d_ref(x, w, b, 2, 1, 0, "tanh")
    up = torch.randn(y.shape, generator=gen)
    torch.testing.assert_close(y, y_ref)
    got, want = (torch.autograd.grad(t, (x, w, b), up) for t in (y, y_ref))
    torch.testing.assert_close(got, want)
    penalty_ref, norm_ref = kernels.gradient_penalty(critic, real, fake, 10.0, eps, "torch")
    torch.testing.assert_close((penalty, norm), (penalty_ref, norm_ref))
    params = list(critic.parameters())
    # (The last bias does not change the input gradient: its penalty gradient is zero.)
    got, want = (
        torch.autograd.grad(p, params, materialize_grads=True) for p in (penalty, penalty_ref)
    )
    torch.testing.assert_close(got, want)

    choices = {c["op"]: c for c in kernels.auto_choices()}
    assert set(choices) == {"conv_transpose2d", "gp_interpolate", "gp_penalty"}
    assert choices["conv_transpose2d"]["shape"] == (
        "x=2x3x2x2 weight=3x4x4x4 bias=4 stride=2 padding=1 output_padding=0 activation=tanh"
    )
    assert choices["conv_transpose2d"]["measured"] == "forward+backward"
    assert choices["gp_interpolate"]["measured"] == "forward"
    assert choices["gp_penalty"]["measured"] == "forward+backward"
    atol, _ = TOLERANCE[torch.float32]
    for c in choices.values():
        assert c["chosen"] == "triton" and c["max_abs_err"] <= atol, c


def test_choices_reach_metrics_jsonl_once_and_every_checkpoint_marker(tmp_path):
    from ganforge.checkpoint import read_marker, write_marker
    from ganforge.cluster.checkpointing import marker_meta
    from ganforge.cluster.run_logging import RunLogger
    from ganforge.config import GanforgeConfig
    from ganforge.rundir import RunDir

    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    logger = RunLogger(run, metrics_port=None, restarts=0)
    with autotune.measuring(timer=FakeTimer(torch_ms=2.0, triton_ms=1.0)):
        _choose(torch.randn(3, 4))
        logger.log({"step": 1, "loss_d": 0.5})
        logger.log({"step": 2, "loss_d": 0.4})
        _choose(torch.randn(5, 4))
        logger.log({"step": 3, "loss_d": 0.3})
    logger.close()
    records = [json.loads(line) for line in run.metrics_path.read_text().splitlines()]
    assert [len(r.get("kernel_choices", [])) for r in records] == [1, 0, 1]
    assert records[0]["kernel_choices"][0]["shape"] == "x=3x4 factor=2"
    assert records[2]["kernel_choices"][0]["shape"] == "x=5x4 factor=2"
    assert records[2]["kernel_choices"][0]["chosen"] == "triton"

    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    write_marker(ckpt, {}, marker_meta(GanforgeConfig(), 3, 24, ["a"], world=1))
    summary = read_marker(ckpt)
    assert summary["kernel_choices"] == kernels.auto_choices()
    assert [c["shape"] for c in summary["kernel_choices"]] == ["x=3x4 factor=2", "x=5x4 factor=2"]
