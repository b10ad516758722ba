"""The two references of the serving load test (bench.serve_load): the floor, a bare Ray Serve
deployment running the same generator with the same batching (run as a subprocess:
`python -m bench.serve_load_floor`), and the generator alone, timed in process.
"""

from __future__ import annotations

import argparse
import time


def torch_device(gpu: bool) -> str:
    """Where the floor and the generator timing run: `--gpu` means CUDA when there is one, as in
    `ganforge serve`."""
    import torch

    return "cuda" if gpu and torch.cuda.is_available() else "cpu"


async def receive_post_body(request, ignore: bool = False) -> None:
    """What the floor does with a request before generating: receive a POST's body, as any POST
    handler must (on Ray Serve, one actor call from the replica to the proxy), and never parse
    it. A GET has no body to wait for. `ignore`: skip it (the floor of the earlier runs)."""
    if request.method == "POST" and not ignore:
        await request.body()


def serve_floor(port: int, ckpt: str, args) -> None:
    """A bare Serve deployment: random z -> generator -> one float, `@serve.batch` like the
    app (max 32 images, the same batch wait and max_ongoing_requests). Blocks until Ctrl-C."""
    import ray
    import torch
    from ray import serve

    @serve.deployment(
        max_ongoing_requests=args.max_ongoing_requests,
        ray_actor_options={"num_cpus": args.num_cpus, "num_gpus": 1 if args.gpu else 0},
    )
    class Floor:
        def __init__(self):
            from ganforge.models import load_model

            self.device = torch_device(args.gpu)
            torch.set_num_threads(max(1, int(args.num_cpus)))
            self.g = load_model(ckpt, device=self.device).generator

        @serve.batch(max_batch_size=32, batch_wait_timeout_s=args.batch_wait_s)
        async def batch(self, zs: list[torch.Tensor]) -> list[float]:
            with torch.inference_mode():
                out = self.g(torch.cat(zs).to(self.device))
            return out.mean(dim=(1, 2, 3)).tolist()

        async def __call__(self, request) -> float:
            await receive_post_body(request, ignore=args.floor_ignores_body)
            return await self.batch(torch.randn(1, self.g.z_dim))

    # Ray starts exactly as in `ganforge serve` (its defaults: dashboard, replica logs and
    # Serve access lines streamed to this driver), so both pay the same cluster overhead.
    ray.init()
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(Floor.bind(), name="floor", route_prefix="/", blocking=False)
        print(f"floor serving at http://127.0.0.1:{port}/", flush=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        serve.shutdown()
        ray.shutdown()


def generator_ms_per_image(
    ckpt: str, batch_sizes: tuple[int, ...], threads: int, gpu: bool = False, seconds: float = 1.5
) -> dict[str, float]:
    """The generator alone, in this process, with a replica's torch threads: ms per image at each
    batch size, from the fastest block of `torch.utils.benchmark`'s `blocked_autorange` (the
    fastest, because a shared machine only ever adds time). Next to `cpu_ms_per_request`, it
    says how much of a request batching can save: only the generator's share gets cheaper per
    image."""
    import torch
    from torch.utils.benchmark import Timer

    from ganforge.models import load_model

    device = torch_device(gpu)
    g = load_model(ckpt, device=device).generator.eval()
    out = {}
    with torch.inference_mode():
        for n in batch_sizes:
            z = torch.randn(n, g.z_dim, device=device)
            labels = torch.randint(g.num_classes, (n,), device=device) if g.num_classes else None
            timer = Timer(
                "g(z, labels)",
                globals={"g": g, "z": z, "labels": labels},
                num_threads=max(1, threads),
            )
            best_s = min(timer.blocked_autorange(min_run_time=seconds).times)
            out[str(n)] = round(best_s * 1e3 / n, 3)
    return out


def main() -> None:
    """The floor server's command line; the benchmark passes every setting (its servers'
    batching), so nothing here has a default of its own to drift from them."""
    ap = argparse.ArgumentParser(description="The serving load test's floor: bare Ray Serve.")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--model", required=True, help="checkpoint or run dir")
    ap.add_argument("--num-cpus", type=float, required=True, help="CPUs of the replica")
    ap.add_argument("--gpu", action="store_true", help="the replica on one GPU")
    ap.add_argument("--batch-wait-s", type=float, required=True)
    ap.add_argument("--max-ongoing-requests", type=int, required=True)
    ap.add_argument("--floor-ignores-body", action="store_true")
    args = ap.parse_args()
    serve_floor(args.port, args.model, args)


if __name__ == "__main__":
    main()
