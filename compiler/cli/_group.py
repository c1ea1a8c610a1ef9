"""The CLI's exit-code convention, in one place: every failure is one line on stderr.

- exit 2: the command line cannot be parsed (Click's usage errors: an unknown command or
  option, a missing argument or option value, a value that is not of the option's type, such
  as ``--nproc two``). The line names the command and ends with where to look:
  ``convspec train: no such option --epoch (did you mean --set?); see convspec train --help``.
- exit 1: everything convspec itself refuses (a bad spec, data, model or run folder, an
  option value out of range such as ``--nproc 0``, an output that cannot be written).
- exit 130: interrupted (Ctrl-C).

Why a Group subclass: Typer prints Click's errors as a multi-line box; catching them in
``main`` is the one place that sees every command's usage errors (the tests' CliRunner too).
"""

from __future__ import annotations

import sys

import typer
from typer.core import TyperGroup

try:  # Why: Typer 0.2x vendors Click as typer._click; its errors are not click's classes
    from typer._click import exceptions as cx
except ImportError:  # pragma: no cover - an older Typer on real Click
    from click import exceptions as cx

from convspec.specs import ConvspecError


class OneLineErrors(TyperGroup):
    """A Typer group whose usage errors are one plain line and exit code 2 (see the module doc)."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        prog_name = prog_name or "convspec"  # Why: not "python -m convspec.compiler" in every message
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except cx.NoArgsIsHelpError as e:
            typer.echo(e.ctx.get_help() if e.ctx else "")
            sys.exit(2)
        except cx.UsageError as e:
            typer.echo(usage_line(e), err=True)
            sys.exit(2)
        except cx.ClickException as e:
            typer.echo(f"convspec: {e.format_message()}", err=True)
            sys.exit(e.exit_code)
        except ConvspecError as e:  # raised while parsing (an option callback): the same one line
            typer.echo(str(e), err=True)
            sys.exit(e.exit_code)
        except typer.Abort:
            typer.echo("aborted", err=True)
            sys.exit(130)
        sys.exit(code if isinstance(code, int) else 0)


def usage_line(e: cx.UsageError) -> str:
    """``convspec CMD: what is wrong; see convspec CMD --help`` on one line."""
    where = e.ctx.command_path if e.ctx is not None else "convspec"
    if isinstance(e, cx.NoSuchOption):
        msg = f"no such option {e.option_name}"
        key = _SPEC_KEYS.get(e.option_name.lstrip("-").replace("-", "_"))
        if key is not None:
            msg += f" (spec keys are set with --set, e.g. --set {key}=...)"
        elif e.possibilities:
            msg += f" (did you mean {' or '.join(sorted(e.possibilities))}?)"
    else:
        msg = " ".join(e.format_message().split())
        msg = msg[:1].lower() + msg[1:]
    return f"{where}: {msg.rstrip('.')}; see {where} --help"


# Why: `--epochs 5` is the most common slip; spec keys that are not options get a hint.
_SPEC_KEYS = {
    k: f"training.{k}" for k in ("epochs", "batch_size", "seed", "precision", "grad_clip", "optimizer", "scheduler")
} | {"lr": "training.optimizer.lr"}


def at_least(low: float, unit: str = "", high: float | None = None):
    """An option callback: a value below ``low`` (or above ``high``) is refused as a user error
    (exit 1, one line), as the README's exit codes say; Click's own range check exits 2."""

    def check(ctx, param, value):
        name = param.opts[0] if param.opts else param.name
        if value is not None and not value >= low:  # Why not <: NaN is refused too
            raise ConvspecError(f"{name} {value}: must be at least {low:g}{unit}")
        if value is not None and high is not None and value > high:
            raise ConvspecError(f"{name} {value}: must be at most {high:g}{unit}")
        return value

    return check
