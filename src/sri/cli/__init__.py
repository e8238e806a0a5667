"""The ``sri`` command line: thin wrappers that parse, call the library and print with rich.

One module per area registers its commands on the shared :data:`app`. :func:`main` is the one error boundary:

* exit 0 — done;
* exit 1 — an internal error (a bug): one line naming the exception and the file holding its full traceback
  (``$SRI_HOME/logs/``, or the temp folder if that cannot be written); ``--debug`` / ``SRI_DEBUG=1`` prints the
  traceback instead;
* exit 2 — a user error (:class:`~sri.errors.SriError`, a bad option or argument, an OS error about a path or
  the machine: name too long, permission denied, disk full): one line ``error: …``;
* exit 3 — finished but incomplete (``sri trace --max-failed-batches`` skipped batches);
* exit 130 — interrupted (trace, run, demo, eval and dlm keep completed work and resume when re-run; other
  commands start again).
"""

from __future__ import annotations

import datetime
import errno
import os
import re
import sys
import tempfile
import traceback
from pathlib import Path

from rich.markup import escape
from typer._click import exceptions as cx  # typer ships its own click; its exceptions are these
from typer.exceptions import Abort

from ..errors import SriError
from . import analysis, core, dlm, guard, pipeline  # noqa: F401  (registers commands)
from .app import app, debug_enabled, err

__all__ = ["app", "main"]


#: the longest error line shown (characters)
_MAX_LINE = 1200


def _one_line(prefix: str, text: str) -> None:
    """``prefix`` (rich markup) then ``text`` (plain, never markup) on one line, whatever the terminal width."""
    flat = " ".join(str(text).split())
    # undecodable argv bytes arrive as lone surrogates (surrogateescape): show them escaped, never fail on them
    flat = flat.encode("utf-8", "backslashreplace").decode("utf-8")
    if len(flat) > _MAX_LINE:  # a message echoing a huge input stays one readable line: keep its head and its fix
        flat = f"{flat[:_MAX_LINE * 2 // 3]} … {flat[-_MAX_LINE // 3:]}"
    err.print(f"{prefix} {escape(flat)}", highlight=False, soft_wrap=True)


def _save_traceback(exc: BaseException) -> Path | None:
    """Write the full traceback (with the command line) to ``$SRI_HOME/logs/crash-….txt`` or, failing that, to a
    file in the temp folder; the path, or None if nothing could be written."""
    from ..data.assets import sri_home

    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    body = (f"sri {' '.join(sys.argv[1:])}\npython {sys.version.split()[0]}, pid {os.getpid()}, {stamp}\n\n"
            + "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
    for folder in (sri_home() / "logs", Path(tempfile.gettempdir())):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            fd, name = tempfile.mkstemp(prefix=f"sri-crash-{stamp}-", suffix=".txt", dir=folder)
            with os.fdopen(fd, "w", encoding="utf-8", errors="backslashreplace") as f:
                f.write(body)
            return Path(name)
        except OSError:
            continue
    return None


def _internal_error(exc: BaseException) -> None:
    first = (str(exc).strip().splitlines() or [""])[0][:200]
    what = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
    if debug_enabled():
        traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
        _one_line("[red]internal error[/] (a bug in sri):", f"{what}; please report it with the traceback above")
        return
    path = _save_traceback(exc)
    where = f"full traceback in {path}" if path else "the traceback could not be saved; rerun with --debug"
    _one_line("[red]internal error[/] (a bug in sri, not in your input):",
              f"{what}; {where}; please report it (rerun with --debug to print it)")


#: OS errors about a path the user gave or the machine's state, not bugs: a one-line user error (exit 2)
_ENVIRONMENT = {
    errno.ENAMETOOLONG: "the path is too long for the file system; use a shorter one",
    errno.ENOSPC: "the disk is full; free some space and re-run (completed work is kept)",
    errno.EDQUOT: "the disk quota is exhausted; free some space and re-run (completed work is kept)",
    errno.EACCES: "permission denied; fix its permissions or choose another path",
    errno.EPERM: "operation not permitted; fix its permissions or choose another path",
    errno.EROFS: "the file system is read-only; choose another path",
    errno.ENOENT: "no such file or folder; check the path",
    errno.ENOTDIR: "a part of the path is not a folder; check the path",
    errno.EISDIR: "it is a folder, not a file; check the path",
    errno.ELOOP: "too many symbolic links; check the path",
}


def _environment_error(e: OSError) -> str | None:
    if e.errno not in _ENVIRONMENT:
        return None
    name = str(e.filename) if e.filename is not None else ""
    name = name if len(name) <= 120 else name[:60] + "…" + name[-40:]
    return f"{name + ': ' if name else ''}{_ENVIRONMENT[e.errno]}"


def _wrapped_os_error(e: Exception) -> str | None:
    """The one-line message of an OS error that a Rust-backed library re-raised as its own exception type, with
    the errno only in the text — safetensors: ``Error while serializing: I/O error: No space left on device (os
    error 28)`` — or None."""
    found = re.search(r"\(os error (\d+)\)", str(e))
    return _ENVIRONMENT.get(int(found.group(1))) if found else None


#: commands that keep completed work when interrupted and resume it when re-run
_RESUMABLE = frozenset({"trace", "run", "demo", "eval", "dlm"})


def _interrupted() -> None:
    command = next((a for a in sys.argv[1:] if not a.startswith("-")), "")
    if command in _RESUMABLE:
        err.print("[yellow]interrupted[/] — completed work is kept; re-run the same command to resume")
    else:  # one-shot commands: each file is written whole (atomically) or not at all
        err.print("[yellow]interrupted[/] — this command does not resume; re-run it to start again")
    sys.exit(130)


#: option names whose run-config field is not simply the name with ``_`` for ``-``
_CONFIG_FIELD = {"sampler": "sampler.kind", "stop_token": "stop_tokens", "ray_address": "execution.address"}
#: commands that take a run config rather than model and sampler options
_CONFIG_COMMANDS = frozenset({"run", "demo", "eval", "validate"})


def _config_field(option: str) -> str | None:
    """The run-config field that plays the part of ``option`` (``--trust-remote-code`` → ``trust_remote_code``)."""
    from ..pipeline.config import DiffusionSampler, ExecutionSection, RunConfig

    name = option[2:].replace("-", "_")
    if name in _CONFIG_FIELD:
        return _CONFIG_FIELD[name]
    for prefix, fields in (("", RunConfig.model_fields), ("sampler.", DiffusionSampler.model_fields),
                           ("execution.", ExecutionSection.model_fields)):
        if name in fields:
            return prefix + name
    return None


def _options_elsewhere(message: str) -> str:
    """A note for a library hint that names options the running command lacks (a model-loading error raised under
    `sri attack` suggesting ``--trust-remote-code``): which commands have them, or the run-config field. Options
    inside a quoted command (`` `sri signal --out …` ``) belong to that command and are skipped."""
    import typer

    root = typer.main.get_command(app)
    command, path = root, []
    for arg in sys.argv[1:]:
        sub = getattr(command, "commands", {}).get(arg) if not arg.startswith("-") else None
        if sub is None and not arg.startswith("-"):
            break
        if sub is not None:
            command, path = sub, [*path, arg]
    if not path or hasattr(command, "commands"):
        return ""

    def options(c: object) -> set[str]:
        return {o for p in getattr(c, "params", []) for o in (*p.opts, *p.secondary_opts)}

    leaves: dict[str, object] = {}

    def walk(c: object, name: list[str]) -> None:
        for n, sub in getattr(c, "commands", {}).items():
            if hasattr(sub, "commands"):
                walk(sub, [*name, n])
            else:
                leaves[" ".join([*name, n])] = sub

    walk(root, [])
    own = options(command)
    unquoted = re.sub(r"`sri [^`]*`", "", message)
    notes = []
    for option in dict.fromkeys(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", unquoted)):
        if option in own:
            continue
        owners = [f"`sri {name}`" for name, c in leaves.items() if option in options(c)]
        field = _config_field(option) if path[0] in _CONFIG_COMMANDS else None
        if field:
            notes.append(f"in a run config {option} is the field {field}")
        elif owners:
            notes.append(f"{option} is an option of {', '.join(owners)}, not of `sri {' '.join(path)}`")
    return f" ({'; '.join(notes)})" if notes else ""


def main() -> None:
    """Console entry point: the CLI's one error boundary (exit codes in the module docstring)."""
    try:
        code = app(standalone_mode=False, prog_name="sri")
    except SriError as e:
        if debug_enabled():
            traceback.print_exception(type(e), e, e.__traceback__, file=sys.stderr)
        try:
            note = _options_elsewhere(str(e))
        except Exception:  # a note must never turn a user error into an internal one
            note = ""
        _one_line("[red]error:[/]", str(e) + note)
        sys.exit(2)
    except cx.NoArgsIsHelpError as e:  # `sri` / `sri guard` alone: the help
        e.show()
        sys.exit(e.exit_code)
    except cx.UsageError as e:  # bad option, missing argument, value out of range
        ctx = e.ctx
        hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
        _one_line("[red]error:[/]", f"{e.format_message()}{hint}")
        sys.exit(e.exit_code)
    except cx.ClickException as e:
        _one_line("[red]error:[/]", e.format_message())
        sys.exit(e.exit_code)
    except (Abort, KeyboardInterrupt):
        _interrupted()
    except BrokenPipeError:  # `sri … | head`: the reader left
        sys.stderr = open(os.devnull, "w")  # noqa: SIM115  (nothing more can be shown)
        sys.exit(1)
    except Exception as e:  # the boundary: anything else is a bug, except the machine's state (disk full, …)
        message = _environment_error(e) if isinstance(e, OSError) else _wrapped_os_error(e)
        if message is None:
            _internal_error(e)
            sys.exit(1)
        if debug_enabled():
            traceback.print_exception(type(e), e, e.__traceback__, file=sys.stderr)
        _one_line("[red]error:[/]", message)
        sys.exit(2)
    if code == 130:  # typer turns Ctrl-C inside a command into Exit(130)
        _interrupted()
    sys.exit(code if isinstance(code, int) and not isinstance(code, bool) else 0)


if __name__ == "__main__":
    main()
