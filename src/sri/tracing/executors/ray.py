"""The Ray backend: a Ray Data actor pool runs the planned batches; this process writes every shard.

One dataset row per planned batch (``map_batches(batch_size=1)``), so Ray never re-batches and every batch is
the one the local tracer would run. Each worker (a callable class on ``ActorPoolStrategy``) loads the model once,
checks that it is the model the run was planned with, and returns per batch the generation rows and the pooled
states (float32) — or the error that batch raised. Results come back in plan order, so a run folder written here
equals the local one shard for shard.

Failures: an exception in a batch comes back as that batch's error (the writer stops or skips it); a worker
process that dies is restarted and its batch retried ``max_retries`` times, then the batch counts as failed.
Safety on shared machines: never ``ray stop``; ``address="local"`` starts a private cluster bound to loopback
with a private temp dir, shut down (and removed) at the end; a cluster joined with ``auto``/``HOST:PORT`` is
left running.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import tempfile
import time
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...errors import SriError

if TYPE_CHECKING:
    from ...models import ModelAdapter
    from ...sampling import StepObserver
    from ..tracer import BatchOutcome, TracePlan
    from . import Execution

#: payload per batch above which a warning says the object store may strain (bytes)
PAYLOAD_WARN_BYTES = 1 << 30
#: Ray puts sockets at <temp>/session_<date>_<pid>/sockets/plasma_store (≤ 107 bytes in all)
_MAX_TMP_BASE = 26
#: DataContext fields set for a run and restored after it
_CONTEXT = ("enable_progress_bars", "print_on_execution_start", "max_errored_blocks",
            "max_consecutive_actor_init_deaths")
INSTALL_HINT = "the ray backend needs Ray; install it with `pip install 'sri[ray]'` (or `pip install 'ray[data]'`)"


def import_ray() -> Any:
    try:
        import ray
        import ray.data
    except ImportError:
        raise SriError(INSTALL_HINT) from None
    return ray


class RayExecutor:
    def __init__(self, execution: Execution) -> None:
        self.execution = execution
        self.log = execution.log or (lambda msg: None)
        self.timings: dict[str, float] = {}  # cluster start, first result … (read by the benchmark)

    # ----------------------------------------------------------------------------------------- run
    def run(self, adapter: ModelAdapter, plan: TracePlan,
            observers: Sequence[StepObserver]) -> Iterator[BatchOutcome]:
        ex = self.execution
        if ex.model is None:
            raise SriError("the ray backend needs the model spec (Execution.model) so workers can load the model")
        if not plan.batches:
            return
        ray = import_ray()
        t0 = time.perf_counter()
        with _cluster(ray, ex):
            self.timings["cluster_s"] = time.perf_counter() - t0
            check_resources(ray, ex)
            self._log_payload(ray, adapter, plan)
            yield from self._run(ray, adapter, plan, observers)

    def _run(self, ray: Any, adapter: ModelAdapter, plan: TracePlan,
             observers: Sequence[StepObserver]) -> Iterator[BatchOutcome]:
        from ray.data import DataContext

        from .planning import worker_device

        ex = self.execution
        device, dtype = worker_device(ex.model, ex)
        ctx = DataContext.get_current()
        saved = {name: getattr(ctx, name) for name in _CONTEXT}
        saved_order = ctx.execution_options.preserve_order
        ctx.execution_options.preserve_order = True  # shards in plan order, like the local tracer
        ctx.enable_progress_bars = False
        ctx.print_on_execution_start = False
        ctx.max_errored_blocks = ex.max_failed_batches  # batches whose worker kept dying, skipped when allowed
        ctx.max_consecutive_actor_init_deaths = 1  # a worker that cannot load the model fails the run fast
        try:
            yield from self._iterate(ray, adapter, plan, observers, device, dtype)
        finally:
            for name, value in saved.items():
                setattr(ctx, name, value)
            ctx.execution_options.preserve_order = saved_order

    def _iterate(self, ray: Any, adapter: ModelAdapter, plan: TracePlan, observers: Sequence[StepObserver],
                 device: str, dtype: str) -> Iterator[BatchOutcome]:
        from ray.data import ActorPoolStrategy

        from ..tracer import BatchOutcome

        ex = self.execution

        items = [{"batch": k, "texts": plan.texts(k)} for k in range(len(plan.batches))]
        ds = ray.data.from_items(items, override_num_blocks=len(items))
        lo, hi = (min(n, len(items)) for n in ex.workers)  # no idle workers loading the model for nothing
        with warnings.catch_warnings():  # max_restarts/max_task_retries have no named parameter yet (Ray 2.60)
            warnings.filterwarnings("ignore", message=".*ray_remote_args.*deprecated")
            mapped = ds.map_batches(
                TraceWorker, batch_size=1, batch_format="pandas",
                compute=ActorPoolStrategy(min_size=lo, max_size=hi, max_tasks_in_flight_per_actor=1),
                fn_constructor_kwargs={"spec": ex.model, "device": device, "dtype": dtype, "job": plan.job,
                                       "expected": _checked_meta(plan.meta), "observers": list(observers),
                                       "extra_settings": _extra_settings(plan.meta, adapter)},
                num_gpus=ex.gpus_per_worker or None, num_cpus=1,
                max_restarts=ex.max_retries, max_task_retries=ex.max_retries,
            )
        seen: set[int] = set()
        t0 = time.perf_counter()
        try:
            for row in mapped.iter_rows():
                k = int(row["batch"])
                seen.add(k)
                if "first_result_s" not in self.timings:
                    self.timings["first_result_s"] = time.perf_counter() - t0
                if row["error"]:
                    yield BatchOutcome(k, error=row["error"])
                else:
                    yield BatchOutcome(k, output=_unpack(row["payload"]))
        except Exception as e:  # a batch whose worker died past its retries, a worker that could not start …
            if isinstance(e, SriError):
                raise
            raise SriError(f"the Ray run stopped: {_one_line(e)}; completed shards are kept — re-run the same "
                           "command to resume") from None
        self.timings["last_result_s"] = time.perf_counter() - t0
        # blocks Ray skipped (max_errored_blocks) never came back: they failed too
        for k in range(len(plan.batches)):
            if k not in seen:
                yield BatchOutcome(k, error="its worker died more often than the retries allowed (see the Ray logs)")

    def _log_payload(self, ray: Any, adapter: ModelAdapter, plan: TracePlan) -> None:
        b = max(len(batch) for batch in plan.batches)
        per_batch = b * plan.job.sampler.steps * adapter.hidden_size * 4 * len(plan.job.layer_ids)
        self.log(f"ray: {len(plan.batches)} batches on {self.execution.workers[0]}–{self.execution.workers[1]} "
                 f"worker(s); payload per batch ≤ {_size(per_batch)} (B {b} × T {plan.job.sampler.steps} × "
                 f"D {adapter.hidden_size} × 4 bytes × {len(plan.job.layer_ids)} layer(s))")
        store_bytes = ray.cluster_resources().get("object_store_memory", 0)
        limit = min(PAYLOAD_WARN_BYTES, store_bytes / 8) if store_bytes else PAYLOAD_WARN_BYTES
        if per_batch > limit:
            self.log(f"warning: {_size(per_batch)} per batch strains Ray's object store "
                     f"({_size(store_bytes)}); lower --batch-size or trace fewer --layers")


class TraceWorker:
    """One Ray actor: loads the model once, checks it, runs batches (one dataset row each)."""

    def __init__(self, spec: Any, device: str, dtype: str, job: Any, expected: dict[str, Any],
                 observers: list[Any], extra_settings: dict[str, Any] | None) -> None:
        from ...cli.app import quiet_transformers
        from ...pooling import get_pooling
        from ..tracer import trace_meta

        quiet_transformers()
        self.adapter = spec.load(device=device, dtype=dtype)
        self.job, self.observers = job, observers
        conv = get_pooling(job.pooling, job.sampler.kind)
        layers = expected["settings"]["layers_requested"]
        got = _checked_meta(trace_meta(self.adapter, job.sampler, job.layer_ids, conv, layers, extra_settings))
        if got != expected:
            where = _first_difference(expected, got)
            raise SriError(f"the worker on {socket.gethostname()} loaded '{spec.name}' differently from the planning "
                           f"process ({where}); every node needs the same model files, sri and library versions")

    def __call__(self, batch: Any) -> dict[str, list[Any]]:
        from ..tracer import run_batch

        k = int(batch["batch"].iloc[0])
        texts = [str(t) for t in batch["texts"].iloc[0]]
        try:
            output = run_batch(self.adapter, self.job, texts, self.observers)
        except Exception as e:
            return {"batch": [k], "payload": [b""], "error": [f"{type(e).__name__}: {_one_line(e)} "
                                                          f"(on {socket.gethostname()})"]}
        return {"batch": [k], "payload": [_pack(output)], "error": [""]}


# --------------------------------------------------------------------------------------------- helpers
@contextlib.contextmanager
def _cluster(ray: Any, ex: Execution) -> Iterator[bool]:
    """Connect to (or start) the cluster; shut down only what was started here. Yields whether it started one."""
    if ray.is_initialized():  # a caller's own connection (tests, notebooks): use it, leave it running
        yield False
        return
    import sri

    env = {"PYTHONPATH": os.pathsep.join(p for p in (str(Path(sri.__file__).resolve().parents[1]),
                                                      os.environ.get("PYTHONPATH")) if p)}
    common: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False,
                              "configure_logging": True, "logging_level": "warning"}
    tmp = None
    try:
        if ex.address == "local":
            base = os.environ.get("RAY_TMPDIR") or "/tmp"
            if len(base) > _MAX_TMP_BASE:
                raise SriError(f"RAY_TMPDIR {base} is too long for Ray's socket paths (at most {_MAX_TMP_BASE} "
                               "characters); point it at a short folder such as /tmp")
            tmp = tempfile.mkdtemp(prefix="sri-ray-", dir=base)
            # same machine: workers import this very sri (its source folder goes first on their path)
            ray.init(address="local", num_cpus=ex.num_cpus, num_gpus=None, _temp_dir=tmp,
                     _node_ip_address="127.0.0.1", runtime_env={"env_vars": env}, **common)
        else:
            ray.init(address=ex.address, **common)
    except (ConnectionError, RuntimeError, ValueError, OSError) as e:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
        raise SriError(f"could not reach a Ray cluster at --ray-address {ex.address} ({_one_line(e)}); start one "
                       "with `ray start --head` or use --ray-address local") from None
    try:
        yield True
    finally:
        ray.shutdown()
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)


def check_resources(ray: Any, ex: Execution) -> None:
    """Refuse, in one line, a pool the cluster can never hold (Ray would wait for it forever)."""
    total = ray.cluster_resources()
    per_node = max((n.get("Resources", {}).get("GPU", 0.0) for n in ray.nodes() if n.get("Alive")), default=0)
    check_pool(ex, total.get("CPU", 0.0), total.get("GPU", 0.0), per_node)


def check_local_pool(ex: Execution) -> None:
    """:func:`check_pool` for a private local cluster (``address: local``) without starting it: such a cluster
    holds this machine's GPUs and its CPUs (or ``num_cpus``), on one node."""
    import torch

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    check_pool(ex, ex.num_cpus or os.cpu_count() or 1, gpus, gpus)


def check_pool(ex: Execution, cpus: float, gpus: float, node_gpus: float) -> None:
    """The smallest pool of ``ex`` (``workers[0]`` workers, ``gpus_per_worker`` each, one CPU each) must fit a
    cluster of ``cpus`` CPUs and ``gpus`` GPUs whose largest node has ``node_gpus``. One-line :class:`SriError`."""
    lo = ex.workers[0]
    if ex.gpus_per_worker > 0:
        need = lo * ex.gpus_per_worker
        if gpus < need:
            raise SriError(f"{lo} worker(s) × --gpus-per-worker {ex.gpus_per_worker:g} need {need:g} GPU(s), but the "
                           f"Ray cluster has {gpus:g}; lower --workers/--gpus-per-worker or add GPU nodes")
        if ex.gpus_per_worker > node_gpus:
            raise SriError(f"--gpus-per-worker {ex.gpus_per_worker:g} exceeds the GPUs of every node (at most "
                           f"{node_gpus:g}); a worker runs on one node")
    if cpus < lo:
        raise SriError(f"{lo} worker(s) need {lo} CPU(s), but the Ray cluster has {cpus:g}; lower --workers")


def _checked_meta(meta: dict[str, Any]) -> dict[str, Any]:
    return {k: meta[k] for k in ("key", "settings", "model")}


def _extra_settings(meta: dict[str, Any], adapter: ModelAdapter) -> dict[str, Any] | None:
    """The ``extra_settings`` the planner merged into the settings (keys beyond the tracer's own)."""
    own = {"sampler", "system_prompt", "stop_token_ids", "dtype", "layers_requested", "diffusion_model"}
    extra = {k: v for k, v in meta["settings"].items() if k not in own}
    return extra or None


def _pack(output: Any) -> bytes:
    """A finished batch as bytes for the object store, without pickle: the states as a safetensors buffer (bit for
    bit), the rows, fields and timings as JSON in its metadata (they are JSON rows in the shard anyway)."""
    from safetensors.numpy import save

    states = {f"layer.{layer}": t.detach().to("cpu").float().contiguous().numpy() for layer, t in output.states.items()}
    fields = {"gens": output.gens, "row_fields": output.row_fields, "timings": output.timings, "wall": output.wall,
              "finished": output.finished}
    return save(states, metadata={"sri": json.dumps(fields)})


def _unpack(payload: bytes) -> Any:
    import torch
    from safetensors.numpy import load

    from ..tracer import BatchOutput

    header_len = int.from_bytes(payload[:8], "little")
    d = json.loads(json.loads(payload[8:8 + header_len])["__metadata__"]["sri"])
    states = {int(name.split(".")[1]): torch.from_numpy(a.copy()) for name, a in load(payload).items()}
    return BatchOutput(gens=d["gens"], row_fields=d["row_fields"], timings=d["timings"], wall=d["wall"],
                       finished=d["finished"], states=states)


def _first_difference(a: dict[str, Any], b: dict[str, Any], path: str = "") -> str:
    for k in sorted(set(a) | set(b)):
        x, y = a.get(k), b.get(k)
        if x != y:
            if isinstance(x, dict) and isinstance(y, dict):
                return _first_difference(x, y, f"{path}{k}.")
            return f"{path}{k}: {x!r} planned vs {y!r} loaded"
    return "unknown difference"


def _one_line(e: BaseException) -> str:
    text = str(e).strip()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    # Ray wraps the cause in a traceback; its last line names the original error
    return (lines[-1] if lines else type(e).__name__)[:300]


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"
