"""A Triton kernel launch as a value: the kernel, its grid, arguments and launch options.

Every launcher in this package builds a `KernelLaunch` and calls `run()`, never `kernel[grid]`
itself. So the one place that decides a launch's configuration (block sizes, warps, stages,
argument dtypes) also serves the offline compile check: under `record_launches()` the real
launchers, called by the real models on meta tensors, hand their launches over instead of
running them, and `bench/kernels_compile.py` compiles what they chose for sm_80 and sm_90
without a GPU. There is no second copy of the block-size logic to drift from the launch path.

Launchable kernels are the module-level `@triton.jit` functions whose names end in `_kernel`;
jitted helpers called from inside kernels (epilogues, index maths) have other names.
"""

from __future__ import annotations

# Launches recorded while `record_launches()` is active (None: launches run).
_recorded: list[KernelLaunch] | None = None


class KernelLaunch:
    """One launch: `kernel[grid](*args, **constexprs, num_warps=..., num_stages=...)`.

    args: the runtime arguments in the kernel's order (tensors, ints, floats); constexprs: the
    `tl.constexpr` arguments by name. num_warps / num_stages are Triton's launch options (its
    defaults are 4 and 3); the launchers choose them with the block sizes.
    """

    __slots__ = ("kernel", "grid", "args", "constexprs", "num_warps", "num_stages")

    def __init__(self, kernel, grid, args, constexprs, num_warps: int = 4, num_stages: int = 3):
        self.kernel = kernel
        self.grid = tuple(int(g) for g in grid)
        self.args = tuple(args)
        self.constexprs = dict(constexprs)
        self.num_warps = int(num_warps)
        self.num_stages = int(num_stages)

    @property
    def name(self) -> str:
        return self.kernel.fn.__name__

    def run(self) -> None:
        if _recorded is not None:
            _recorded.append(self)
            return
        self.kernel[self.grid](
            *self.args, **self.constexprs, num_warps=self.num_warps, num_stages=self.num_stages
        )

    def __repr__(self) -> str:
        opts = f"num_warps={self.num_warps}, num_stages={self.num_stages}"
        return f"KernelLaunch({self.name}, grid={self.grid}, {self.constexprs}, {opts})"


def recording() -> bool:
    """True inside `record_launches()` (the device check then accepts any device)."""
    return _recorded is not None


class record_launches:  # noqa: N801 - used like a function: `with record_launches() as got:`
    """Context manager: launches are appended to the list it yields instead of running.

    Kernel outputs stay unwritten, so this is for recording only: the compile check runs each
    model step on meta tensors inside one of these. Single-threaded, no nesting.
    """

    def __enter__(self) -> list[KernelLaunch]:
        global _recorded
        if _recorded is not None:
            raise RuntimeError("record_launches() does not nest")
        _recorded = []
        return _recorded

    def __exit__(self, *exc) -> None:
        global _recorded
        _recorded = None
