"""The pipeline commands: ``sri run`` (the one orchestrator), its presets ``sri demo`` and ``sri eval``, and
``sri validate`` / ``sri ls``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from rich.table import Table

from ..errors import SriError
from .app import app, err, out, quiet_transformers

CONFIGS = Path(__file__).resolve().parents[3] / "configs"
SetOpt = Annotated[list[str] | None, typer.Option(
    "--set", help="Override a config key: --set prompts.harmless.n=8 (repeatable; values are YAML).")]


def preset(name: str) -> Path:
    """A shipped config (``configs/NAME.yaml`` of the source tree)."""
    path = CONFIGS / f"{name}.yaml"
    if not path.is_file():
        raise SriError(f"the preset {path} is missing (it ships with the source tree); run from a clone of sri or "
                       "give --config FILE")
    return path


def parse_sets(items: list[str] | None) -> dict[str, Any]:
    """``["a.b=1", …]`` → ``{"a.b": 1}`` (values parsed as YAML scalars)."""
    from ..errors import clip
    from ..pipeline.config import load_yaml

    out_: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise SriError(f"--set {clip(item)} is not KEY=VALUE; e.g. --set prompts.harmless.n=8")
        try:
            out_[key.strip()] = load_yaml(value)
        except SriError as e:
            raise SriError(f"--set {clip(item)}: {e}") from None
        except yaml.YAMLError:
            raise SriError(f"--set {clip(item)}: the value is not valid YAML; quote it") from None
    return out_


def _run_and_print(config: Path, out_dir: Path | None, overrides: dict[str, Any], require_guard: bool = False
                   ) -> Path:
    from ..io import check_not_in_run_folder
    from ..pipeline import run

    if out_dir is not None:
        check_not_in_run_folder(out_dir)
    quiet_transformers()
    path = run(config, out_dir, log=lambda s: err.print(f"[cyan]•[/] {s}", highlight=False), overrides=overrides,
               require_guard=require_guard)
    if path.suffix == ".md":  # several samplers: the comparison table
        out.print(path.read_text(encoding="utf-8"), markup=False, highlight=False, soft_wrap=True)
        err.print(f"[green]comparison[/] → {path} (per-sampler reports: {path.parent / 'samplers'}/*/report.html)")
        return path
    folder = path.parent
    for name in ("summary.md", "tables.md"):
        if (folder / name).is_file():
            out.print((folder / name).read_text(encoding="utf-8"), markup=False, highlight=False, soft_wrap=True)
    err.print(f"[green]report[/] → {path}  (signals: {folder / 'signals.jsonl'}, figures: {folder / 'figures'})")
    return path


@app.command()
def run(
    config: Annotated[Path, typer.Option("--config", "-c", help="Run config, YAML (see configs/).")],
    out_dir: Annotated[Path | None, typer.Option("--out", help="Run folder (default results/<name>).")] = None,
    set_: SetOpt = None,
) -> None:
    """The whole pipeline: prompts → attacks → traces → judge → anchors → signals → guard → defenses → analysis
    → report, resumable, in one run folder."""
    _run_and_print(config, out_dir, parse_sets(set_))


@app.command()
def demo(
    out_dir: Annotated[Path, typer.Option("--out", help="Run folder (re-running resumes).")] = Path("results/demo"),
    model: Annotated[str | None, typer.Option("--model", "-m", help="Model instead of the preset's.")] = None,
    paper_size: Annotated[bool, typer.Option(help="The paper's 400 anchor prompts per side.")] = False,
    set_: SetOpt = None,
) -> None:
    """Preset of `sri run` (configs/demo.yaml): anchors, then unseen harmless, harmful and jailbreak prompts →
    signals, trajectories figure, summary table, report."""
    overrides = parse_sets(set_)
    shortcuts = {"model": model} if model else {}
    if paper_size:
        shortcuts.update({"prompts.anchor_harmless.n": 400, "prompts.anchor_harmful.n": 400})
    clash = sorted(set(shortcuts) & set(overrides))
    if clash:  # --paper-size / --model and a --set of the same key: which one was meant?
        raise SriError(f"--set {clash[0]} and {'--model' if clash[0] == 'model' else '--paper-size'} both set "
                       f"{clash[0]}; give one of them")
    _run_and_print(preset("demo"), out_dir, {**overrides, **shortcuts})


@app.command("eval")
def eval_command(
    config: Annotated[Path | None, typer.Option("--config", "-c", help="Run config (default: the preset "
                                                "configs/guard_eval.yaml).")] = None,
    out_dir: Annotated[Path, typer.Option("--out", help="Run folder (re-running resumes).")] =
        Path("results/guard-eval"),
    set_: SetOpt = None,
) -> None:
    """Preset of `sri run` (configs/guard_eval.yaml): SRI Guard against baseline defenses on registry attacks and
    benign controls → tables.md (Table 13 / Table 4 shapes), eval.json, ROC curves, report."""
    _run_and_print(config or preset("guard_eval"), out_dir, parse_sets(set_), require_guard=True)


@app.command()
def validate(
    config: Annotated[Path, typer.Argument(help="Run config to check (YAML).")],
    set_: SetOpt = None,
) -> None:
    """Check a run config (keys, types, ranges, registry names, prompt sets, model names: tokenizers only) without
    loading any model weights."""
    from ..pipeline import load_config

    cfg, _ = load_config(config, parse_sets(set_))
    from ..pipeline.runner import preflight
    from ..pipeline.stages import prompts  # (imports the models: only once the config has been read)

    quiet_transformers()
    sets = prompts(cfg)
    preflight(cfg, sets)  # device, models, layers, stop tokens, attacks, prompt lengths, anchors file: as `sri run`
    sizes = ", ".join(f"{k} {len(v)}" for k, v in sets.items())
    attacks = ", ".join(a.name for a in cfg.attacks) or "none"
    out.print(f"ok: {config} — run '{cfg.name}' on {cfg.model}; prompt sets: {sizes}; attacks: {attacks}; "
              f"guard: {'yes' if cfg.guard else 'no'}; defenses: {', '.join(cfg.defenses.names) or 'none'}",
              highlight=False, soft_wrap=True)


@app.command("ls")
def ls(
    kind: Annotated[str | None, typer.Argument(help="models, prompts, samplers, poolings, attacks, defenses, "
                                                    "detectors or families (default: all).")] = None,
) -> None:
    """List everything chosen by name: models, prompt sets, samplers, poolings, attacks, defenses, detectors,
    model families."""
    sections = _registries()
    if kind is not None and kind not in sections:
        raise SriError(f"'{kind}' is not a kind of registered thing; use one of {', '.join(sections)}")
    for name, rows in sections.items():
        if kind is not None and name != kind:
            continue
        table = Table(title=name, title_justify="left", show_header=False)
        table.add_column("name", style="bold", no_wrap=True)
        table.add_column("what")
        for entry, what in rows:
            table.add_row(entry, what)
        out.print(table)


def _registries() -> dict[str, list[tuple[str, str]]]:
    from ..attacks import ATTACKS
    from ..data.assets import DATASETS, MODELS
    from ..defenses import DEFENSES
    from ..guard.detectors import DETECTORS
    from ..models import DIFFUSION_FAMILIES
    from ..pooling import POOLINGS
    from ..sampling import SAMPLERS

    samplers = {"ar": "autoregressive decoding (greedy or sampled), KV-cached",
                "diffusion": "masked-diffusion remasking (schedules llada | dream-native)",
                "diffusion-ar": "AR order on diffusion weights (one token per step, leftmost slot)"}
    return {
        "models": [(m.name, f"{m.title}; {m.note}" + ("" if m.is_fetched() else " (not fetched)"))
                   for m in MODELS.values()],
        "prompts": [(name, what) for name, (_, what) in DATASETS.items()],
        "samplers": [(k, v) for k, v in samplers.items() if k.split("-")[0] in SAMPLERS],
        "poolings": [(p.name, f"{'/'.join(p.sampler_kinds)}: {p.description}") for p in POOLINGS.values()],
        "attacks": [(a.name, f"{a.family}; {a.description}" + ("; runs a model" if a.needs_target else ""))
                    for a in ATTACKS.values()],
        "defenses": [(name, _first_line(d)) for name, d in DEFENSES.items()],
        "detectors": [(name, _first_line(d)) for name, d in DETECTORS.items()],
        "families": [(name, f"masked diffusion; default schedule {f.schedule}") for name, f in
                     DIFFUSION_FAMILIES.items()],
    }


def _first_line(obj: Any) -> str:
    doc = (obj.__doc__ or "").strip()
    return doc.splitlines()[0] if doc else ""
