"""The typer application, consoles and helpers shared by every command module."""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Callable
from typing import Annotated, Any

import typer
from rich.console import Console

from ..limits import MAX_SEED, MAX_THREADS

#: Plain (click) help: rich's help panels cut long option names with "…" in narrow terminals, click never does.
HELP = {"rich_markup_mode": None, "context_settings": {"max_content_width": 100}}

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Step-wise refusal dynamics: trace generation, compute the SRI signal, analyse, guard.", **HELP)
def _width(stream: Any) -> int | None:
    """A terminal's own width; 200 columns for a file or pipe, where rich would assume 80 and cut table cells
    (``sri attack --list > attacks.txt`` keeps every name and option)."""
    return None if stream.isatty() or os.environ.get("COLUMNS") else 200


out = Console(soft_wrap=True, width=_width(sys.stdout))  # long paths and lines are not folded in a file
err = Console(stderr=True, soft_wrap=True, width=_width(sys.stderr))
_DEBUG = {"on": False}


@app.callback()
def _options(
    debug: Annotated[bool, typer.Option("--debug", help="Print full tracebacks of errors (also SRI_DEBUG=1).")] =
        False,
) -> None:
    _DEBUG["on"] = debug
    from ..progress import progress_interval

    progress_interval()  # a bad $SRI_PROGRESS_INTERVAL is refused before any command runs


def refuse_unused(ctx: typer.Context, names: tuple[str, ...], reason: str) -> None:
    """One-line :class:`SriError` if the user set any of the options ``names`` (parameter names) on the command line
    or through the environment: ``reason`` says why they would do nothing (e.g. "with --keyword-only")."""
    from typer._click.core import ParameterSource

    from ..errors import SriError

    chosen = [p for p in ctx.command.params if p.name in names
              and ctx.get_parameter_source(p.name) in (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT)]
    if chosen:
        def typed(p: Any) -> str:  # `--no-x` for a switch turned off
            off = p.secondary_opts and ctx.params.get(p.name) is False
            return next(o for o in (p.secondary_opts if off else p.opts) if o.startswith("--"))

        flags = ", ".join(typed(p) for p in chosen)
        them = "it" if len(chosen) == 1 else "them"
        raise SriError(f"{flags} would be ignored {reason}; drop {them}")


def debug_enabled() -> bool:
    """``sri --debug …`` or ``SRI_DEBUG=1``: show tracebacks instead of saving them."""
    return _DEBUG["on"] or os.environ.get("SRI_DEBUG", "").strip().lower() in {"1", "true", "yes", "on"}

ModelOpt = Annotated[str, typer.Option("--model", "-m", help="Offline short name, local HF folder or Hub id.")]
DeviceOpt = Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")]
DtypeOpt = Annotated[str, typer.Option(help="auto (fp32 on CPU, bf16 on GPU), fp32, bf16 or fp16.")]


def in_range(lo: float | None = None, hi: float | None = None, *, lo_open: bool = False,
             hi_open: bool = False) -> Callable[[Any], Any]:
    """An option callback: the value (or each value of a repeatable option) must be a finite number in the
    interval; anything else is a usage error (one line, exit 2) before the command runs. ``None`` (not given)
    passes."""
    def shown(x: float) -> str:  # 4294967295, not 4.29497e+09
        return str(x) if isinstance(x, int) and abs(x) < 10**12 else f"{x:g}"

    left = "" if lo is None else f"{'(' if lo_open else '['}{shown(lo)}"
    right = "" if hi is None else f"{shown(hi)}{')' if hi_open else ']'}"
    if lo is not None and hi is not None:
        wanted = f"in {left}, {right}"
    elif lo is not None:
        wanted = f"{'>' if lo_open else '≥'} {shown(lo)}"
    elif hi is not None:
        wanted = f"{'<' if hi_open else '≤'} {shown(hi)}"
    else:
        wanted = "(any finite number)"

    def check(value: Any) -> Any:
        for v in value if isinstance(value, (list, tuple)) else [value]:
            if v is None:
                continue
            if isinstance(v, float) and not math.isfinite(v):
                raise typer.BadParameter(f"{v} is not a finite number; give a number {wanted}")
            if (lo is not None and (v < lo or (lo_open and v == lo))) or \
                    (hi is not None and (v > hi or (hi_open and v == hi))):
                raise typer.BadParameter(f"{shown(v)} is out of range; give a number {wanted}")
        return value

    return check


#: the common ranges
POSITIVE = in_range(1)  # counts, sizes, lengths, steps
NON_NEGATIVE = in_range(0)  # optional counts, scales
PROBABILITY = in_range(0, 1)
SEED = in_range(0, MAX_SEED)
THREADS = in_range(1, MAX_THREADS)


def quiet_transformers() -> None:
    """Silence transformers' info logs and its own progress bars (ours are shown instead)."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def load_adapter(model: str, device: str, dtype: str, system_prompt: str | None, *, diffusion: bool = False,
                 **kwargs: Any):
    """Load a model with a spinner; ``kwargs`` go to :func:`sri.models.load_model` (or, with ``diffusion``, to
    :func:`sri.models.load_diffusion_model`)."""
    from ..models import load_diffusion_model, load_model

    quiet_transformers()
    loader = load_diffusion_model if diffusion else load_model
    with err.status(f"loading {model} …"):
        return loader(model, device=device, dtype=dtype, system_prompt=system_prompt or None, **kwargs)
