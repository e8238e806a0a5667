"""AR tracing speed: our KV-cached, batched step tracer against (a) the reference algorithm and (b) plain
``model.generate``, all measured in this one process on the same prompts.

(a) reference = the authors' approach: for every prompt alone, every step re-runs the whole sequence without a
    KV cache and with ``output_hidden_states=True``, keeps the last position of the final hidden state, appends
    the argmax token; running mean afterwards.
(b) ``model.generate`` with the same greedy decoding and batch size, no hidden states.

Every run generates exactly T tokens per prompt (EOS ignored) so all three do the same amount of work.
Usage: python benchmarks/ar_tracing.py [--model smollm2-135m-instruct] [--prompts 8] [--steps 32 128]
"""

from __future__ import annotations

import argparse
import platform
import time

import torch
from rich.console import Console
from rich.table import Table

from sri.data.prompts import load_prompts
from sri.models import load_model
from sri.pooling import POOLINGS, StateCollector
from sri.sampling import ARConfig, sample_ar
from sri.sampling.ar import ar_rows


def ours(adapter, rendered: list[str], steps: int, batch: int) -> float:
    t0 = time.perf_counter()
    config = ARConfig(steps=steps, ignore_eos=True)
    layer = adapter.num_layers
    for i in range(0, len(rendered), batch):
        ids, mask = adapter.encode(rendered[i:i + batch])
        collector = StateCollector([layer])
        result = sample_ar(adapter, ids, mask, config, [layer], [collector])
        collector.pooled(result.end_step, steps, POOLINGS["producing"])
        ar_rows(adapter, result, config)
    return time.perf_counter() - t0


def reference(adapter, rendered: list[str], steps: int) -> float:
    t0 = time.perf_counter()
    tok = adapter.tokenizer
    with torch.inference_mode():
        for text in rendered:
            ids, _ = adapter.encode([text])
            states = []
            for _ in range(steps):
                out = adapter.model(ids, output_hidden_states=True)
                states.append(out.hidden_states[-1][:, -1].float())
                ids = torch.cat([ids, out.logits[:, -1].argmax(-1, keepdim=True)], dim=1)
            torch.stack(states).cumsum(0) / torch.arange(1, steps + 1).view(-1, 1, 1)
            new = ids[0, -steps:].tolist()
            [tok.decode(new[:t], skip_special_tokens=True) for t in range(1, steps + 1)]
    return time.perf_counter() - t0


def generate(adapter, rendered: list[str], steps: int, batch: int) -> float:
    t0 = time.perf_counter()
    with torch.inference_mode():
        for i in range(0, len(rendered), batch):
            ids, mask = adapter.encode(rendered[i:i + batch])
            adapter.model.generate(ids, attention_mask=mask, max_new_tokens=steps, min_new_tokens=steps,
                                   do_sample=False, pad_token_id=adapter.pad_token_id)
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--steps", type=int, nargs="+", default=[32, 128])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--repeats", type=int, default=3, help="best of N interleaved runs (robust to a busy CPU)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    console = Console()
    adapter = load_model(args.model, device="cpu", dtype="fp32")
    rendered = [adapter.render(r.prompt) for r in load_prompts("harmless", shuffle_seed=0, max_prompts=args.prompts)]
    ours(adapter, rendered[:1], 4, 1)  # warm-up
    table = Table(title=f"AR tracing, {args.model}, {args.prompts} prompts, {torch.get_num_threads()} threads, "
                        f"{platform.processor() or platform.machine()}")
    for col in ("T", "batch", "ours s", "(a) reference s", "(b) generate s", "ours vs (a)", "ours / (b)"):
        table.add_column(col, justify="right")
    for steps in args.steps:
        ref = float("inf")
        t_ours = dict.fromkeys(args.batches, float("inf"))
        t_gen = dict.fromkeys(args.batches, float("inf"))
        for _ in range(args.repeats):  # interleaved rounds, best of N: a load spike hits every method alike
            ref = min(ref, reference(adapter, rendered, steps))
            for batch in args.batches:
                t_ours[batch] = min(t_ours[batch], ours(adapter, rendered, steps, batch))
                t_gen[batch] = min(t_gen[batch], generate(adapter, rendered, steps, batch))
        for batch in args.batches:
            table.add_row(str(steps), str(batch), f"{t_ours[batch]:.1f}", f"{ref:.1f}", f"{t_gen[batch]:.1f}",
                          f"{ref / t_ours[batch]:.1f}× faster", f"{t_ours[batch] / t_gen[batch]:.2f}×")
            console.print(f"T={steps} batch={batch}: ours {t_ours[batch]:.1f}s, reference {ref:.1f}s, "
                          f"generate {t_gen[batch]:.1f}s")
    console.print(table)


if __name__ == "__main__":
    main()
