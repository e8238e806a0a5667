"""Guard commands: `sri guard fit` and `sri guard score`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from ..io import check_not_input, check_user_dir, check_user_file, read_signal_rows
from .app import HELP, POSITIVE, SEED, app, err, in_range, out, refuse_unused

#: what the guard reads of a signal row (labels are optional: benign-only checks use them when present)
GUARD_FIELDS = ("id", "sri", "key")

guard_app = typer.Typer(no_args_is_help=True,
                        help="SRI Guard: fit a benign-only jailbreak detector and apply it.", **HELP)
app.add_typer(guard_app, name="guard")


@guard_app.command("fit")
def guard_fit(
    ctx: typer.Context,
    benign: Annotated[Path, typer.Option(help="Signals JSONL (`sri signal`) of benign prompts to fit on.")],
    calibrate: Annotated[Path, typer.Option(help="Signals JSONL of other, held-out benign prompts.")],
    out_dir: Annotated[Path, typer.Option("--out", help="Guard folder to write.")],
    detector: Annotated[str, typer.Option(help="ae | mahalanobis | iforest | ocsvm | knn.")] = "ae",
    quantile: Annotated[float, typer.Option(
        callback=in_range(0, 1, lo_open=True, hi_open=True),
        help="Threshold = this quantile of calibration scores.")] = 0.99,
    anchors: Annotated[Path | None, typer.Option(help="Anchor file the signals were computed with; needed to "
                                                       "guard inside generation (`sri trace --guard`).")] = None,
    stream: Annotated[str, typer.Option(help="Per-prefix detectors for streaming: union (benign flag rate "
                                             "over all prefixes ≤ 1 − q) | per-prefix | off.")] = "union",
    min_prefix: Annotated[int, typer.Option(
        callback=POSITIVE, help="First prefix length the streaming guard decides on.")] = 1,
    stream_every: Annotated[int, typer.Option(
        callback=POSITIVE, help="Decide every K steps (and at T) instead of every step.")] = 1,
    seed: Annotated[int, typer.Option(callback=SEED, help="Training seed.")] = 0,
    refusal_text: Annotated[str, typer.Option(help="Answer returned for a flagged generation.")] =
        "I'm sorry, but I can't help with that.",
) -> None:
    """Fit SRI Guard on benign signals only; threshold on held-out benign signals."""
    from ..guard import fit_guard
    from ..guard.detectors import DETECTORS
    from ..signal import Anchors

    if stream == "off":  # the anchors and the refusal text serve the streaming guard inside generation only
        refuse_unused(ctx, ("anchors", "refusal_text", "min_prefix", "stream_every"), "with --stream off (only a "
                      "streaming guard runs inside generation and decides on prefixes)")
    if not DETECTORS[detector].seeded:  # an unknown name: a did-you-mean error
        refuse_unused(ctx, ("seed",), f"by the {detector} detector, which draws no random numbers")
    check_user_dir(out_dir)
    for name in ("guard.json", "guard.safetensors"):
        check_not_input(out_dir / name, "--out", **{"--benign": benign, "--calibrate": calibrate, "--anchors": anchors})
    fitted = fit_guard(read_signal_rows(benign, GUARD_FIELDS), read_signal_rows(calibrate, GUARD_FIELDS),
                       detector=detector, quantile=quantile, seed=seed,
                       stream=stream, min_prefix=min_prefix, every=stream_every,
                       anchors=Anchors.load(anchors) if anchors else None, refusal_text=refusal_text,
                       sources={"benign": str(benign), "calibrate": str(calibrate)})
    fitted.save(out_dir)
    cal = fitted.info["calibration"]
    table = Table(title=f"SRI Guard ({detector}) → {out_dir}")
    for col in ("", "value"):
        table.add_column(col)
    table.add_row("benign signals: fit / calibrate", f"{fitted.info['counts']['benign']} / "
                  f"{fitted.info['counts']['calibrate']}")
    table.add_row(f"threshold ({quantile:g}-quantile)", f"{fitted.threshold:.6g}")
    table.add_row("calibration flag rate (full signal)", f"{cal['flag_rate_full']:.3f}")
    if fitted.stream_thresholds:
        table.add_row(f"streaming: {len(fitted.prefixes)} prefixes, level", f"{fitted.info['stream_level']:.4f}")
        table.add_row("calibration flag rate (any prefix)", f"{cal['flag_rate_stream']:.3f}")
    table.add_row("usable inside generation", "yes" if fitted.anchors is not None else "no (give --anchors)")
    out.print(table)
    out.print("fitted and calibrated on benign signals only: no harmful or jailbreak data was used", soft_wrap=True)


@guard_app.command("score")
def guard_score(
    guard_dir: Annotated[Path, typer.Option("--guard", help="Guard folder from `sri guard fit`.")],
    signals: Annotated[Path, typer.Option(help="Signals JSONL (`sri signal`).")],
    out_file: Annotated[Path | None, typer.Option("--out", help="Write rows with guard_score/flag added.")] = None,
) -> None:
    """Score signals: full-signal score and flag, and the streaming guard's first flagged step."""
    from collections import Counter

    from ..guard import Guard, signal_matrix
    from ..io import write_jsonl

    if out_file is not None:
        check_user_file(out_file, suffix=".jsonl")
        check_not_input(out_file, "--out", **{"--signals": signals, "--guard": guard_dir})
    guard = Guard.load(guard_dir)
    rows = read_signal_rows(signals, GUARD_FIELDS)
    x, key = signal_matrix(rows, str(signals))
    guard.check_key(key, str(signals))
    scores = guard.score(x)
    flags = scores > guard.threshold
    first = guard.first_flag(x) if guard.stream_thresholds else None
    scored = []
    for i, r in enumerate(rows):
        extra = {"guard_score": float(scores[i]), "guard_flag": bool(flags[i])}
        if first is not None:
            extra["guard_flag_step"] = int(first[i]) or None
        scored.append({**r, **extra})
    if out_file:
        write_jsonl(out_file, scored)
    by_label = Counter(r.get("label", "?") for r in rows)
    flagged = Counter(r.get("label", "?") for r in scored if r["guard_flag"])
    table = Table(title=f"{guard.kind} guard on {signals}")
    for col in ("label", "n", "flagged (full)", "flagged (streaming)"):
        table.add_column(col, justify="right")
    for label, n in sorted(by_label.items()):
        streamed = sum(1 for r in scored if r.get("label", "?") == label and r.get("guard_flag_step"))
        table.add_row(label, str(n), f"{flagged[label]} ({flagged[label] / n:.1%})",
                      "–" if first is None else f"{streamed} ({streamed / n:.1%})")
    out.print(table)
    if out_file:
        err.print(f"[green]scores[/] → {out_file}")
