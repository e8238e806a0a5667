"""Benchmark: traced diffusion sampling vs the reference approach of copying full hidden states every step.

Model: a random LLaDA-like masked diffusion LM (bidirectional Llama, 6 layers, hidden 512 by default) built into a
temporary folder and loaded through ``sri``'s real loading path. Sampling: gen_length 128, 32 steps, one block,
low-confidence remasking, greedy — the paper's setting.

- **ours**: :func:`sri.sampling.diffusion.sample_diffusion` with a :class:`~sri.pooling.StateCollector`; the hook
  pools the response slots inside the forward pass, so the tracer keeps ``T × B × D`` floats per layer.
- **reference**: the published LLaDA ``generate`` loop (written out below) with a forward hook on the final norm
  that copies its full ``[B, S, D]`` output at every step; φ_t is the mean over response slots computed afterwards
  (what the authors' tracing code does).

Reported, per batch size, from one run: the best wall time of each over alternating repeats (best-of, because the
machine may be shared), the bytes of tensors each keeps for tracing, the peak resident-memory growth of a fresh
process running each once (CPU) or ``torch.cuda.max_memory_allocated`` (GPU), and whether both produce the same
tokens and φ. Usage: ``python benchmarks/diffusion_tracing.py [--batch 1 8]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

from sri.models import load_diffusion_model
from sri.pooling import StateCollector
from sri.sampling.diffusion import DiffusionConfig, sample_diffusion, transfer_schedule

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the tiny-model builders live with the tests
from tests.tiny_models import build_tiny_masked_lm

PROMPTS = [
    "Write a short poem about the sea.",
    "Explain how photosynthesis works in simple terms for a ten year old child.",
    "List three tips for staying focused.",
    "What is the capital of France, and why is it historically important?",
    "Give me a recipe for pancakes.",
    "Summarise the plot of a detective story in which the butler did not do it, but the gardener did.",
    "How do I reverse a list in Python?",
    "Describe a sunset.",
]


# --------------------------------------------------------------------------------------------- reference
@torch.no_grad()
def reference_generate(model, final_norm, prompt, attention_mask, *, steps, gen_length, block_length, mask_id):
    """LLaDA's published ``generate`` (low-confidence remasking, temperature 0, no CFG) plus the reference
    tracing: a hook copying the full final-norm output at every forward; φ pooled after generation."""
    kept: list[torch.Tensor] = []
    handle = final_norm.register_forward_hook(lambda module, inputs, output: kept.append(output.detach().clone()))
    B, P = prompt.shape
    x = torch.full((B, P + gen_length), mask_id, dtype=torch.long, device=prompt.device)
    x[:, :P] = prompt
    attention_mask = torch.cat([attention_mask, attention_mask.new_ones(B, gen_length)], dim=-1)
    num_blocks = gen_length // block_length
    steps_per_block = steps // num_blocks
    try:
        for b in range(num_blocks):
            end = P + (b + 1) * block_length
            num_transfer = transfer_schedule((x[:, end - block_length:end] == mask_id).sum(1), steps_per_block)
            for i in range(steps_per_block):
                mask_index = x == mask_id
                logits = model(x, attention_mask=attention_mask).logits
                x0 = logits.argmax(-1)
                p = torch.softmax(logits, dim=-1)
                x0_p = torch.gather(p, -1, x0.unsqueeze(-1)).squeeze(-1)
                x0_p[:, end:] = -float("inf")
                x0 = torch.where(mask_index, x0, x)
                confidence = torch.where(mask_index, x0_p, -float("inf"))
                transfer = torch.zeros_like(x0, dtype=torch.bool)
                for j in range(B):
                    _, idx = torch.topk(confidence[j], k=int(num_transfer[j, i]))
                    transfer[j, idx] = True
                x[transfer] = x0[transfer]
    finally:
        handle.remove()
    phi = torch.stack(kept)[:, :, P:].float().mean(2)  # [T, B, D]
    return x[:, P:], phi, kept


def run_ours(adapter, ids, mask, config):
    collector = StateCollector([adapter.num_layers])
    result = sample_diffusion(adapter, ids, mask, config, [adapter.num_layers], [collector])
    return result.tokens, torch.stack(collector.forwards[adapter.num_layers]), collector


def run_reference(adapter, ids, mask, config):
    final_norm = adapter.layer_module(adapter.num_layers)
    return reference_generate(adapter.model, final_norm, ids, mask, steps=config.steps,
                              gen_length=config.gen_length, block_length=config.block_length,
                              mask_id=adapter.mask_token_id)


def held_bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


# --------------------------------------------------------------------------------------------- memory probe
class PeakRSS:
    """Samples this process's resident memory every millisecond; ``peak - start`` is the growth."""

    def __init__(self) -> None:
        self.page = os.sysconf("SC_PAGE_SIZE")
        self.start = self.peak = self._rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _rss(self) -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * self.page

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._rss())
            time.sleep(0.001)

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss())


def probe(args) -> None:
    """Child process: run one variant once and print its peak memory growth (JSON)."""
    torch.set_num_threads(args.threads)
    adapter = load_diffusion_model(args.folder, device=args.device, dtype="fp32")
    ids, mask = adapter.encode([adapter.render(p) for p in (PROMPTS * 8)[: args.probe_batch]])
    config = DiffusionConfig(steps=args.steps, gen_length=args.gen_length)
    fn = run_ours if args.probe == "ours" else run_reference
    if adapter.device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        out = fn(adapter, ids, mask, config)
        torch.cuda.synchronize()
        growth = torch.cuda.max_memory_allocated() - base
    else:
        with PeakRSS() as rss:
            out = fn(adapter, ids, mask, config)
        growth = rss.peak - rss.start
    del out
    print(json.dumps({"peak_growth": growth}))


def peak_growth(args, folder: str, variant: str, batch: int) -> int:
    cmd = [sys.executable, __file__, "--probe", variant, "--probe-batch", str(batch), "--folder", folder,
           "--threads", str(args.threads), "--device", args.device, "--steps", str(args.steps),
           "--gen-length", str(args.gen_length)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env={**os.environ}).stdout
    return json.loads(out.strip().splitlines()[-1])["peak_growth"]


# --------------------------------------------------------------------------------------------- main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--gen-length", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (the CI machine is shared)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--probe", choices=["ours", "reference"], help=argparse.SUPPRESS)
    parser.add_argument("--probe-batch", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.probe:
        probe(args)
        return

    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        folder = str(build_tiny_masked_lm(Path(tmp) / "model", "llada", layers=args.layers, hidden=args.hidden,
                                          heads=8, kv_heads=8, seed=0))
        adapter = load_diffusion_model(folder, device=args.device, dtype="fp32")
        config = DiffusionConfig(steps=args.steps, gen_length=args.gen_length)
        cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name")), platform.processor())
        print(f"model: random LLaDA-like, {args.layers} layers, hidden {args.hidden}, "
              f"{sum(p.numel() for p in adapter.model.parameters()) / 1e6:.1f}M params, fp32, {args.device}")
        print(f"sampling: gen_length {config.gen_length}, {config.steps} steps, block {config.block_length}, "
              "low_confidence, temperature 0; φ = final-norm output averaged over all response slots")
        print(f"machine: {cpu}, {os.cpu_count()} cores, torch {torch.__version__}, {args.threads} thread(s)\n")
        header = ("batch", "prompt tok", "ours s", "ref s", "time ours/ref", "held ours", "held ref",
                  "held ours/ref", "peak Δ ours", "peak Δ ref", "peak ours/ref", "same tokens", "max abs Δφ")
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for batch in args.batch:
            ids, mask = adapter.encode([adapter.render(p) for p in (PROMPTS * 8)[:batch]])
            times: dict[str, list[float]] = {"ours": [], "ref": []}
            for _ in range(args.repeats):
                for name, fn in (("ours", run_ours), ("ref", run_reference)):
                    t0 = time.perf_counter()
                    out = fn(adapter, ids, mask, config)
                    if args.device.startswith("cuda"):
                        torch.cuda.synchronize()
                    times[name].append(time.perf_counter() - t0)
                    if name == "ours":
                        ours = out
                    else:
                        ref = out
            tokens_o, phi_o, collector = ours
            tokens_r, phi_r, kept = ref
            held_o = held_bytes(t for ts in collector.forwards.values() for t in ts)
            held_r = held_bytes(kept)
            same = "yes" if torch.equal(tokens_o, tokens_r.cpu()) else "no"
            delta = (phi_o - phi_r.cpu()).abs().max().item()
            peak_o, peak_r = (peak_growth(args, folder, v, batch) for v in ("ours", "reference"))
            t_o, t_r = min(times["ours"]), min(times["ref"])
            mib = lambda n: f"{n / 2**20:.2f} MiB" if n >= 2**20 else f"{n / 2**10:.0f} KiB"
            cells = [str(batch), str(ids.shape[1]), f"{t_o:.2f}", f"{t_r:.2f}", f"{t_o / t_r:.2f}", mib(held_o),
                     mib(held_r), f"1/{held_r / held_o:.0f}", mib(peak_o), mib(peak_r), f"{peak_o / peak_r:.2f}", same,
                     f"{delta:.1e}"]
            lines.append("| " + " | ".join(cells) + " |")
            print(lines[-1], flush=True)
        print("\n" + "\n".join(lines))
        print(f"\ntarget: time ratio ≤ 1, held ratio ≤ 1/{config.gen_length}; held = bytes of tensors kept for "
              "tracing; peak Δ = peak resident (CPU) or allocated (GPU) memory growth of a fresh process running "
              "the sampler once")


if __name__ == "__main__":
    main()
