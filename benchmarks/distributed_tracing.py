"""Distributed tracing cost: the same prompts through the ``local`` backend and the ``ray`` backend with W workers.

Per run: start-up (cluster + worker model load + first batch: until the first batch finished), steady throughput
(prompts per second from the first to the last finished batch, timed where the batches ran — the driver receives
Ray's results in bursts, so its own clock would overstate it), speed-up and efficiency per worker against local, the
overhead ratio ray(W=1) / local in steady state (target ≥ 0.97), and an equality check of every output (rows but
for timing, states bit for bit) against the local run.

Every worker gets one CPU (Ray sets OMP_NUM_THREADS=1 for it), so the local run uses one torch thread too: the
comparison is per worker. On a CPU-only machine with few cores W > 1 measures overhead, not scaling.

Usage:
  python benchmarks/distributed_tracing.py [--model smollm2-135m-instruct] [--prompts 32] [--steps 32]
      [--batch-size 8] [--workers 1 2] [--num-cpus 2]
  # a node with N GPUs (each worker one GPU; local uses cuda:0):
  python benchmarks/distributed_tracing.py --model qwen2.5-coder-0.5b-instruct --device cuda --gpus-per-worker 1 \
      --workers 1 2 4 8 --prompts 512 --num-cpus 16
  # an existing cluster (`ray start --head` here, `ray start --address HEAD:6379` on the others):
  python benchmarks/distributed_tracing.py --ray-address auto --gpus-per-worker 1 --workers 1 2 4 8 16
"""

from __future__ import annotations

import argparse
import platform
import shutil
import tempfile
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from sri.data.prompts import load_prompts
from sri.sampling import ARConfig
from sri.tracing.executors import Execution, ModelSpec, load_for_execution, make_executor
from sri.tracing.store import TraceStore
from sri.tracing.tracer import plan_trace, write_batches


def timed_run(spec: ModelSpec, execution: Execution, records, out: Path, steps: int, batch: int) -> dict:
    t0 = time.perf_counter()
    adapter = load_for_execution(spec, execution)
    plan = plan_trace(adapter, records, out, sampler=ARConfig(steps=steps, ignore_eos=True), batch_size=batch)
    executor = make_executor(execution)
    wall0 = time.time() - (time.perf_counter() - t0)
    stamps: list[tuple[float, int]] = []  # when each batch finished where it ran (worker clock), its size

    def outcomes():
        for outcome in executor.run(adapter, plan, ()):
            stamps.append((outcome.output.finished, len(plan.batches[outcome.batch])))
            yield outcome

    store = write_batches(plan, outcomes(), progress=False)
    total = time.perf_counter() - t0
    stamps.sort()
    (first, _), (last, _) = stamps[0], stamps[-1]
    after_first = sum(n for _, n in stamps[1:])
    return {"store": store, "startup": first - wall0, "total": total,
            "steady": after_first / (last - first) if last > first else float("nan"),
            "timings": getattr(executor, "timings", {})}


def equal(a: TraceStore, b: TraceStore) -> bool:
    (ra, sa), (rb, sb) = a.load(), b.load()
    strip = lambda rows: [{k: v for k, v in r.items() if k != "timing"} for r in rows]
    ia = sorted(range(len(ra)), key=lambda i: ra[i]["id"])
    ib = sorted(range(len(rb)), key=lambda i: rb[i]["id"])
    return strip([ra[i] for i in ia]) == strip([rb[i] for i in ib]) and \
        all(torch.equal(sa[k][ia], sb[k][ib]) for k in sa)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--dataset", default="harmless")
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--gpus-per-worker", type=float, default=0.0)
    ap.add_argument("--ray-address", default="local")
    ap.add_argument("--num-cpus", type=int, default=None, help="CPUs of the private local cluster")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="auto")
    args = ap.parse_args()

    torch.set_num_threads(1)
    records = load_prompts(args.dataset, max_prompts=args.prompts)
    spec = ModelSpec(args.model, device=args.device, dtype=args.dtype)
    root = Path(tempfile.mkdtemp(prefix="sri-bench-"))
    console = Console()
    try:
        local = timed_run(spec, Execution(), records, root / "local", args.steps, args.batch_size)
        runs = [("local", 1, local, True)]
        for w in args.workers:
            ex = Execution(backend="ray", workers=w, gpus_per_worker=args.gpus_per_worker, address=args.ray_address,
                           num_cpus=args.num_cpus, model=spec)
            r = timed_run(spec, ex, records, root / f"ray{w}", args.steps, args.batch_size)
            runs.append((f"ray W={w}", w, r, equal(local["store"], r["store"])))
        table = Table(title=f"{args.model}: {len(records)} prompts × {args.steps} steps, batch {args.batch_size} — "
                            f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch thread")
        for col in ("backend", "start-up s", "of which cluster s", "steady prompts/s", "speed-up", "eff./worker",
                    "total s", "equal to local"):
            table.add_column(col, justify="right")
        for name, w, r, same in runs:
            speed = r["steady"] / local["steady"]
            table.add_row(name, f"{r['startup']:.1f}", f"{r['timings'].get('cluster_s', 0):.1f}",
                          f"{r['steady']:.2f}", f"{speed:.2f}", f"{speed / w:.2f}", f"{r['total']:.1f}",
                          "yes" if same else "NO")
        console.print(table)
        one = next((r for name, w, r, _ in runs if name == "ray W=1"), None)
        if one:
            console.print(f"overhead ratio ray(W=1)/local, steady state: {one['steady'] / local['steady']:.3f} "
                          "(target ≥ 0.97)")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
