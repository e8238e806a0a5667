"""`sri eval --config F`: the guard evaluation (defense table, detection, ablation, early stop, ROC curves)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .app import app, err, quiet_transformers


@app.command("eval")
def eval_command(
    config: Annotated[Path, typer.Option(help="YAML/JSON evaluation config (see configs/guard_eval.yaml).")],
    out_dir: Annotated[Path, typer.Option("--out", help="Run folder (re-running resumes it).")] =
        Path("results/guard-eval"),
) -> None:
    """Evaluate SRI Guard against baselines on jailbreak prompt sets; writes eval.json, tables.md and ROC curves."""
    from ..evaluate import EvalConfig, run_eval
    from ..io import check_output_dir, folder_lock

    check_output_dir(out_dir)
    quiet_transformers()
    cfg = EvalConfig.from_file(config)
    with folder_lock(out_dir):  # one writer per run folder
        results = run_eval(cfg, out_dir)
    typer.echo((out_dir / "tables.md").read_text(encoding="utf-8"))
    err.print(f"[green]results[/] → {out_dir}/eval.json, {out_dir}/tables.md, {results['figure']}")
