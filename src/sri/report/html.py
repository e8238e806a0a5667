"""One self-contained HTML report per run: figures embedded as base64 PNG, tables, the exact configuration and
provenance. It references nothing outside itself (no URL, no script, no font), so it opens from disk offline.

Reads from RUN_DIR: ``analysis.json`` (required), ``signals.jsonl`` (required), ``config.yaml``,
``provenance.json`` and ``judge-calibration.json`` (optional). Writes ``RUN_DIR/figures/*.png`` and
``RUN_DIR/report.html``.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any

from ..io import read_json, read_signal_rows, read_text, write_text_atomic
from ..stats.bootstrap import ci_label
from . import figures

#: Paper Table 3 (RR% / ASR% on all jailbreaks), as transcribed in PAPER.md — a reference, not ground truth.
PAPER_TABLE3 = {"Llama-3 (AR)": (23.4, 59.2), "Qwen-2.5 (AR)": (11.4, 62.2), "Gemma (AR)": (46.2, 48.2),
                "LLaDA (diffusion)": (67.4, 18.4), "LLaDA-1.5 (diffusion)": (59.6, 21.0),
                "Dream (diffusion)": (44.4, 9.4)}
#: Paper HRR/FRR on the jailbreak set (PAPER.md).
PAPER_HRR_FRR = {"LLaDA": (0.81, 0.63), "Dream": (0.96, 0.73), "LLaDA-1.5": (0.92, 0.65)}

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1180px;margin:24px auto;
padding:0 16px;color:#1d1d1f;line-height:1.45}
h1{font-size:1.6em;margin-bottom:.2em}h2{margin-top:1.8em;border-bottom:1px solid #ddd;padding-bottom:.2em}
table{border-collapse:collapse;margin:.6em 0;font-size:.88em}th,td{border:1px solid #d0d0d0;padding:4px 8px;
text-align:right;vertical-align:top}th{background:#f3f3f3}td.l,th.l{text-align:left}
img{max-width:100%;border:1px solid #eee;margin:.5em 0}pre{background:#f7f7f7;padding:10px;overflow-x:auto;
font-size:.8em}.note{color:#555;font-size:.9em}.muted{color:#888}
"""


def _img(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<figure><img alt="{html.escape(alt)}" src="data:image/png;base64,{data}"><figcaption class="note">' \
           f"{html.escape(alt)}</figcaption></figure>"


def _table(header: list[str], rows: list[list[Any]], left: int = 1) -> str:
    th = "".join(f'<th class="{"l" if i < left else ""}">{html.escape(h)}</th>' for i, h in enumerate(header))
    body = "".join("<tr>" + "".join(f'<td class="{"l" if i < left else ""}">{html.escape(str(c))}</td>'
                                    for i, c in enumerate(r)) + "</tr>" for r in rows)
    return f"<table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"


def _pct(est: dict[str, Any] | None) -> str:
    if not est or est.get("value") is None:
        return "–"
    ci = f" [{100 * est['low']:.0f}–{100 * est['high']:.0f}]" if est.get("low") is not None else ""
    return f"{100 * est['value']:.1f}{ci}"


def _frac(est: dict[str, Any] | None) -> str:
    if not est or est.get("value") is None:
        return "–"
    ci = f" [{est['low']:.2f}–{est['high']:.2f}]" if est.get("low") is not None else ""
    return f"{est['value']:.2f}{ci} (n={est['n']})"


def pick_examples(rows: list[dict[str, Any]], flags: dict[str, dict[str, Any]], k: int = 4) -> list[dict[str, Any]]:
    """Rows for single-prompt panels: flagged incomplete recoveries first (jailbreaks, deepest dip first), then
    one refused harmful and one answered harmless prompt, up to ``k``."""
    flagged = sorted((r for r in rows if flags.get(r["id"], {}).get("flag")),
                     key=lambda r: (r["label"] != "jailbreak", flags[r["id"]]["min_sigma_after"]))
    picked = flagged[: max(k - 2, 1)]
    for want in (lambda r: r["label"] != "harmless" and r["refused"], lambda r: r["label"] == "harmless"):
        extra = next((r for r in rows if want(r) and r not in picked), None)
        if extra is not None:
            picked.append(extra)
    for r in rows:
        if len(picked) >= k:
            break
        if r not in picked:
            picked.append(r)
    return picked[:k]


def make_figures(run_dir: Path, analysis: dict[str, Any], rows: list[dict[str, Any]], panels: int = 4
                 ) -> dict[str, tuple[Path, str]]:
    """Draw every figure into ``run_dir/figures``; returns name → (path, caption)."""
    fig_dir = run_dir / "figures"
    flags = {f["id"]: f for f in analysis["flags"]}
    order = [g["group"] for g in analysis["groups"] if g["group"] != "all attacks"]
    settings = analysis.get("settings") or {}
    lc, lr = settings.get("lambda_c", 0.5), settings.get("lambda_r", [0.5, 0.3, 0.1])  # what analyze_run used
    made = {
        "rates": (figures.attack_rates(analysis, fig_dir / "rates.png"),
                  "Refusal rate (keyword judge) and attack success rate (LLM judge) per group, "
                  f"{ci_label(analysis.get('settings'))}."),
        "trajectories": (figures.group_trajectories(rows, fig_dir / "trajectories.png", groups=order),
                         "SRI σ_t per group: each prompt (red = final text refused), mean and 10–90% band."),
        "irr": (figures.irr_bars(analysis, fig_dir / "irr.png", title=f"Internal recovery rate (λ_c = {lc:g})"),
                f"Internal recovery rate per group at λ_c = {lc:g} and λ_r ∈ {{{', '.join(f'{v:g}' for v in lr)}}}, "
                f"{ci_label(analysis.get('settings'))}."),
        "panels": (figures.prompt_panels(pick_examples(rows, flags, panels), fig_dir / "prompts.png", flags=flags),
                   "Single generations: SRI (blue) and the text-level refusal signal (orange, 1 = not refusing "
                   "yet); dotted line: first dip toward refusal after a compliant step."),
    }
    if analysis.get("geometry"):
        made["lda"] = (figures.lda_scatter(analysis["geometry"], fig_dir / "lda.png"),
                       "2-D LDA projection of the SRI signals, labelled by response class.")
    return made


def render_html(analysis: dict[str, Any], rows: list[dict[str, Any]], figs: dict[str, tuple[Path, str]], *,
                config_text: str | None = None, provenance: dict[str, Any] | None = None,
                calibration: dict[str, Any] | None = None, title: str = "sri report") -> str:
    """The report as one HTML string."""
    s = analysis["settings"]
    lambdas = list(analysis["groups"][0]["irr"])
    parts = [f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
             f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>"]
    prov = provenance or {}
    model = prov.get("model", {})
    if model:
        parts.append(f"<p class=\"note\">Model <b>{html.escape(str(model.get('model', '?')))}</b> "
                     f"({html.escape(str(model.get('fingerprint', '')))}), sampler "
                     f"{html.escape(json.dumps(prov.get('sampler', {})))}; created "
                     f"{html.escape(str(prov.get('created', '')))}.</p>")

    parts.append("<h2>Refusal and attack success (Table 3 shape)</h2>")
    ci = "[95% CI]" if s.get("bootstrap_resamples", 1) else "(no CI)"
    head = ["group", "n", f"RR % {ci}", f"ASR % {ci}", "mean final σ",
            *[f"IRR λ_r={lr} {'[CI] ' if s.get('bootstrap_resamples', 1) else ''}(n)" for lr in lambdas],
            "incomplete recovery (of answered)"]
    body = [[g["group"], g["n"], _pct(g["refusal_rate"]), _pct(g.get("attack_success_rate")),
             f"{g['mean_final_sri']:.3f}", *[_frac(g["irr"][lr]) for lr in lambdas],
             _frac(g["incomplete_recovery"])] for g in analysis["groups"]]
    parts.append(_table(head, body))
    parts.append("<p class=\"note\">RR: keyword judge (paper Table 12) on the final text. ASR: LLM judge — is the "
                 "response a real attempt to do what the harmful request asks (p(yes) above the judge's "
                 "threshold). IRR = #{∃t&lt;T σ_t&gt;λ_c ∧ σ_T&lt;λ_r} / "
                 f"#{{∃t&lt;T σ_t&gt;λ_c}}, λ_c = {s['lambda_c']}. Incomplete recovery: σ dipped below "
                 f"{s['lambda_dip']} after a compliant step but the text did not refuse. "
                 + (f"Intervals: percentile bootstrap over prompts, {s['bootstrap_resamples']} resamples, seed "
                    f"{s['seed']}.</p>" if s.get("bootstrap_resamples", 1) else
                    "Intervals: none (the analysis ran with 0 bootstrap resamples).</p>"))
    if prov.get("judge"):
        j = prov["judge"]
        parts.append(f"<p class=\"note\">LLM judge: <b>{html.escape(str(j.get('name')))}</b>, threshold "
                     f"{j.get('threshold')} on p(yes), responses trimmed to {j.get('max_chars')} characters.</p>")
    skipped = prov.get("skipped_attacks") or {}
    if skipped:
        parts.append("<p class=\"note\">Skipped attacks: " + "; ".join(
            f"{html.escape(k)} ({html.escape(str(v))})" for k, v in skipped.items()) + ".</p>")
    parts.append("<p class=\"note\">Paper Table 3 (RR % / ASR % on all jailbreaks, 7–8B models, 100 prompts per "
                 "attack): " + "; ".join(f"{k} {v[0]}/{v[1]}" for k, v in PAPER_TABLE3.items()) + ".</p>")

    parts.append("<h2>Recovery by revision (diffusion)</h2>")
    rev = [g for g in analysis["groups"] if g.get("revision_recovery")]
    if rev:
        parts.append(_table(["group", "generations", "with harmful intermediate", "HRR [CI]", "FRR [CI]"],
                            [[g["group"], g["revision_recovery"]["n"],
                              g["revision_recovery"]["with_harmful_intermediate"],
                              _frac(g["revision_recovery"]["hrr"]), _frac(g["revision_recovery"]["frr"])]
                             for g in rev]))
        parts.append("<p class=\"note\">Paper (jailbreak set): " + "; ".join(
            f"{k} HRR {v[0]:.2f} / FRR {v[1]:.2f}" for k, v in PAPER_HRR_FRR.items()) + ".</p>")
    else:
        parts.append("<p class=\"muted\">Skipped: these traces are autoregressive (no predicted text per "
                     "denoising step), or no step judgements were made.</p>")

    parts.append("<h2>Figures</h2>")
    parts += [_img(path, caption) for path, caption in figs.values()]
    geo = analysis.get("geometry")
    if geo:
        parts.append(f"<p class=\"note\">LDA explained variance ratio {geo['explained_variance_ratio']}, "
                     f"training accuracy {geo['train_accuracy']:.2f} over {len(geo['labels'])} signals.</p>")
    elif analysis.get("geometry_skipped"):
        parts.append(f"<p class=\"muted\">LDA skipped: {html.escape(str(analysis['geometry_skipped']))}.</p>")

    flagged = [f for f in analysis["flags"] if f["flag"]]
    parts.append(f"<h2>Incomplete internal recovery ({len(flagged)} prompts)</h2>")
    if flagged:
        by_id = {r["id"]: r for r in rows}
        parts.append(_table(["id", "group", "first compliant step", "dip step", "min σ after", "response (start)"],
                            [[f["id"], f["group"], f["first_compliant_step"], f["dip_step"],
                              f"{f['min_sigma_after']:.3f}",
                              " ".join(str(by_id.get(f["id"], {}).get("response", "")).split())[:110]]
                             for f in flagged[:40]], left=2))
    else:
        parts.append("<p class=\"muted\">No prompt was flagged.</p>")

    if calibration:
        parts.append("<h2>Judge calibration</h2>")
        parts.append(_table(["judge", "n", "accuracy", "Cohen's κ"],
                            [[k, v["n"], f"{v['accuracy']:.3f}", f"{v['kappa']:.3f}"]
                             for k, v in calibration.get("judges", {}).items()]))
    parts.append("<h2>Configuration</h2>")
    parts.append(f"<pre>{html.escape(config_text or '(no config.yaml in the run folder)')}</pre>")
    parts.append("<h2>Provenance</h2>")
    parts.append(f"<pre>{html.escape(json.dumps(prov, indent=2, ensure_ascii=False))}</pre>")
    parts.append("</body></html>")
    return "\n".join(parts)


def build_report(run_dir: str | Path, panels: int = 4) -> Path:
    """Figures + ``report.html`` for an analysed run folder; returns the HTML path."""
    from ..stats.recovery import load_analysis

    run_dir = Path(run_dir)
    analysis = load_analysis(run_dir)
    rows = read_signal_rows(run_dir / "signals.jsonl")
    figs = make_figures(run_dir, analysis, rows, panels)
    config = run_dir / "config.yaml"
    prov = run_dir / "provenance.json"
    cal = run_dir / "judge-calibration.json"
    # a folder made by hand (`sri signal` output + `sri analyze`) has no provenance.json: its signals' key says
    # which model, sampler, layer and anchors made them (one key per file, checked when read)
    provenance = read_json(prov) if prov.is_file() else {
        "from": "the signals' compatibility key (no provenance.json in the folder)",
        "signal_key": rows[0].get("key") if rows else None}
    text = render_html(analysis, rows, figs, config_text=read_text(config) if config.is_file()
                       else None, provenance=provenance,
                       calibration=read_json(cal) if cal.is_file() else None,
                       title=f"sri report — {run_dir.name}")
    out = run_dir / "report.html"
    write_text_atomic(out, text)
    return out
