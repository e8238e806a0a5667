"""``sri dlm``: build a masked-diffusion LM from a shipped AR chat model, and gate its quality."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from ..errors import SriError
from .app import (
    HELP,
    POSITIVE,
    SEED,
    THREADS,
    DeviceOpt,
    app,
    err,
    in_range,
    out,
    quiet_transformers,
    refuse_unused,
)

dlm_app = typer.Typer(no_args_is_help=True, help="Adapt an AR chat model into a masked-diffusion LM (offline).", **HELP)
app.add_typer(dlm_app, name="dlm")


def _set_threads(threads: int | None) -> None:
    if threads is None:
        return
    if threads <= 0:
        raise SriError(f"--threads must be positive (got {threads})")
    import torch

    torch.set_num_threads(threads)


def _gate_config(n_prompts: int, gen_length: int, steps: int, block_length: int, remasking: str, batch_size: int,
                 seed: int):
    from ..dlm.gate import GateConfig

    config = GateConfig(n_prompts=n_prompts, gen_length=gen_length, steps=steps, block_length=block_length,
                        remasking=remasking, batch_size=batch_size, seed=seed)
    config.diffusion()  # invalid sampler settings fail now, not after training
    return config


@dlm_app.command("build")
def dlm_build(
    ctx: typer.Context,
    base: Annotated[str, typer.Option(help="AR chat model to adapt (short name or HF folder).")] =
        "smollm2-135m-instruct",
    teacher: Annotated[str, typer.Option(help="Refusing chat model whose answers and refusals are distilled.")] =
        "qwen2.5-coder-0.5b-instruct",
    out_name: Annotated[str | None, typer.Option(
        "--out", help="Model name (→ $SRI_HOME/models/NAME) or folder; default <base>-dlm.")] = None,
    steps: Annotated[int, typer.Option(
        callback=POSITIVE, help="Planned optimiser steps (sets the learning-rate schedule).")] = 1000,
    minutes: Annotated[float | None, typer.Option(
        callback=in_range(0, lo_open=True),
        help="Stop training after this many minutes in this call (rerun to continue).")] = None,
    seed: Annotated[int, typer.Option(
        callback=SEED, help="Seeds data order, masks and the distillation set.")] = 0,
    batch_size: Annotated[int, typer.Option(callback=POSITIVE, help="Pairs per optimiser step.")] = 8,
    lr: Annotated[float, typer.Option(
        callback=in_range(0, lo_open=True), help="Peak learning rate (AdamW, warm-up then cosine).")] = 1e-4,
    gen_length: Annotated[int, typer.Option(
        callback=POSITIVE, help="Response slots per pair (answer + end token + padding).")] = 48,
    n_harmless: Annotated[int, typer.Option(callback=POSITIVE, help="Harmless training prompts.")] = 500,
    n_harmful: Annotated[int, typer.Option(callback=POSITIVE, help="Harmful training prompts.")] = 400,
    mask_token: Annotated[str | None, typer.Option(
        help="Special token to use as the mask (default: an unused one of the base tokenizer).")] = None,
    pairs: Annotated[Path | None, typer.Option(
        help="Train on your own JSONL of prompt/response pairs instead of the distilled set.")] = None,
    gate: Annotated[bool, typer.Option("--gate/--no-gate", help="Run the quality gate at the end.")] = True,
    gate_prompts: Annotated[int, typer.Option(callback=POSITIVE, help="Held-out prompts per gate set.")] = 48,
    gate_steps: Annotated[int, typer.Option(callback=POSITIVE, help="Gate: diffusion steps.")] = 24,
    gate_block_length: Annotated[int, typer.Option(callback=POSITIVE, help="Gate: semi-AR block length.")] = 16,
    gate_remasking: Annotated[str, typer.Option(help="Gate: remasking strategy.")] = "low_confidence",
    threads: Annotated[int | None, typer.Option(
        callback=THREADS,
        help="CPU threads for torch (default: torch's choice; 1 is faster on a CPU busy with other jobs).")] = None,
    device: DeviceOpt = "cpu",
) -> None:
    """Distil a training set from the teacher, convert BASE (mask token, bidirectional attention, shifted
    logits), train with LLaDA's SFT objective, save a HF folder and run the quality gate."""
    from ..dlm.build import BuildConfig, build_dlm, resolve_output
    from ..dlm.data import DistillSpec
    from ..dlm.train import TrainConfig

    if pairs is not None:
        refuse_unused(ctx, ("teacher", "n_harmless", "n_harmful"), "with --pairs (they replace the distilled set)")
    if not gate:
        refuse_unused(ctx, ("gate_prompts", "gate_steps", "gate_block_length", "gate_remasking"), "with --no-gate")
    quiet_transformers()
    _set_threads(threads)
    if minutes is not None and minutes <= 0:
        raise SriError(f"--minutes must be positive (got {minutes})")
    train_cfg = TrainConfig(steps=steps, batch_size=batch_size, lr=lr, gen_length=gen_length, seed=seed)
    spec = DistillSpec(teacher=teacher, n_harmless=n_harmless, n_harmful=n_harmful, seed=seed)
    config = BuildConfig(base=base, teacher=teacher, train=train_cfg, distill=spec, mask_token=mask_token,
                         pairs_file=None if pairs is None else str(pairs))
    gate_cfg = _gate_config(gate_prompts, gen_length, gate_steps, gate_block_length, gate_remasking, batch_size,
                            seed) if gate else None
    target = resolve_output(out_name, base)
    record = build_dlm(config, target, minutes=minutes, gate=gate_cfg, device=device,
                       log=lambda s: err.print(f"[cyan]•[/] {s}"))
    t = record["training"]
    err.print(f"[green]built[/] {target}: {t['steps_done']}/{t['steps_planned']} steps, "
              f"training {t['wall_s'] / 60:.1f} min in all")
    if "gate" in record:
        print_gate(record["gate"])


@dlm_app.command("gate")
def dlm_gate(
    model: Annotated[str, typer.Argument(help="Built model: name under $SRI_HOME/models or folder.")],
    base: Annotated[str | None, typer.Option(help="The AR model it came from (default: from sri_dlm.json).")] = None,
    n_prompts: Annotated[int, typer.Option(callback=POSITIVE, help="Held-out prompts per set.")] = 48,
    gen_length: Annotated[int, typer.Option(callback=POSITIVE, help="Response slots.")] = 48,
    steps: Annotated[int, typer.Option(callback=POSITIVE, help="Diffusion steps.")] = 24,
    block_length: Annotated[int, typer.Option(callback=POSITIVE, help="Semi-AR block length.")] = 16,
    remasking: Annotated[str, typer.Option(help="low_confidence | random | margin | entropy.")] = "low_confidence",
    batch_size: Annotated[int, typer.Option(callback=POSITIVE, help="Prompts per batch.")] = 8,
    seed: Annotated[int, typer.Option(callback=SEED, help="Seed of the loss masks and random remasking.")] = 0,
    threads: Annotated[int | None, typer.Option(
        callback=THREADS, help="CPU threads for torch (default: torch's choice).")] = None,
    device: DeviceOpt = "cpu",
) -> None:
    """Quality gate on held-out prompts: masked-token loss, refusal / answer rates under AR-order and diffusion
    sampling, perplexity of the answers under the original AR model; stored as gate.json in the model folder."""
    from ..dlm.build import gate_model

    quiet_transformers()
    _set_threads(threads)
    config = _gate_config(n_prompts, gen_length, steps, block_length, remasking, batch_size, seed)
    record = gate_model(model, base, config, device=device, log=lambda s: err.print(f"[cyan]•[/] {s}"))
    print_gate(record)


def print_gate(record: dict[str, Any]) -> None:
    """The gate as a table, the checks and the examples."""
    table = Table(title=f"quality gate of {record['model']} (held-out prompts)")
    for col in ("sampler", "refuses harmful", "refuses harmful Qs", "answers harmless", "PPL under base", "s"):
        table.add_column(col, justify="right")
    for name, r in record["samplers"].items():
        table.add_row(name, f"{r['harmful_refusal_rate']:.2f}", f"{r['harmful_questions_refusal_rate']:.2f}",
                      f"{r['harmless_answer_rate']:.2f}", f"{r['harmless_ppl_under_base']:.2f}", f"{r['wall_s']:.0f}")
    out.print(table)
    if "heldout_loss" in record:
        out.print(f"held-out masked-token NLL: {record['heldout_loss']['masked_token_nll']:.3f} "
                  f"(per ratio {record['heldout_loss']['per_ratio']})")
    if "base_own_answers_ppl" in record:
        out.print(f"base model's own greedy answers: PPL {record['base_own_answers_ppl']:.2f}")
    out.print(f"PPL ratio diffusion / AR order: {record['ppl_ratio_diffusion_over_ar_order']:.2f}")
    checks = ", ".join(f"{k} {'[green]ok[/]' if v else '[red]FAIL[/]'}" for k, v in record["checks"].items())
    out.print(f"checks: {checks} → " + ("[green]PASSED[/]" if record["passed"] else "[red]FAILED[/]"))
    for ex in record["examples"]:
        out.print(f"[bold]{ex['set']}[/]: {ex['prompt'][:90]!r}")
        for name in record["samplers"]:
            out.print(f"  {name:>9}: {ex[name][:160]!r}", highlight=False)


@dlm_app.command("distill")
def dlm_distill(
    teacher: Annotated[str, typer.Option(help="Refusing chat model.")] = "qwen2.5-coder-0.5b-instruct",
    n_harmless: Annotated[int, typer.Option(callback=POSITIVE, help="Harmless training prompts.")] = 500,
    n_harmful: Annotated[int, typer.Option(callback=POSITIVE, help="Harmful training prompts.")] = 400,
    seed: Annotated[int, typer.Option(callback=SEED, help="Seed of the rephrasings and refusal draws.")] = 0,
    device: DeviceOpt = "cpu",
) -> None:
    """Only build (or resume) the cached distillation set that `sri dlm build` trains on."""
    from ..dlm.data import DistillSpec, distill

    quiet_transformers()
    data = distill(DistillSpec(teacher=teacher, n_harmless=n_harmless, n_harmful=n_harmful, seed=seed),
                   device=device, log=lambda s: err.print(f"[cyan]•[/] {s}"))
    s = data.summary
    err.print(f"[green]{s['pairs']} pairs[/] ({s['by_label']}), harmful responses: {s['harmful_response_source']}, "
              f"{s['distinct_refusals']} distinct refusals, dropped {s['dropped']} → {data.folder}")
