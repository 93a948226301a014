"""One way for every CLI to end: a user's mistake is one line on stderr and exit 2.

- ``error: <where>: <reason>`` and exit status 2 for every mistake a user can make: an
  :class:`~immunoplex.errors.ImmunoplexError`, Hydra's own config errors (unknown override key,
  unknown config group choice, malformed override syntax), OmegaConf errors (missing mandatory
  value, bad interpolation) and file-system errors that name a path (an ``out_dir`` that is a
  file, a directory that cannot be written...);
- ``error: interrupted`` and exit status 130 for Ctrl-C (SIGINT);
- anything else is a bug and keeps its traceback.

Hydra apps are built with :func:`hydra_app`. It keeps ``@hydra.main`` (so ``--help``, ``--cfg
job``, ``-m``/multirun, launchers and ``hydra.run.dir=`` work as documented by Hydra) and adds:

1. a *pre-check* for single runs: the config is composed from the same overrides (with
   ``hydra.compose``) and validated (see :mod:`immunoplex.cli.checks`) **before** Hydra creates a
   run directory, so a bad value writes nothing;
2. Hydra runs with ``HYDRA_FULL_ERROR=1`` so that its errors reach this module as exceptions
   instead of being printed by Hydra with its "set HYDRA_FULL_ERROR" hint;
3. the same validation inside the task (multirun jobs are validated one by one there).

``HYDRA_FULL_ERROR=1`` or ``IMMUNOPLEX_DEBUG=1`` set by the user shows full tracebacks instead.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import shutil
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from immunoplex.errors import ImmunoplexError

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

Validator = Callable[[Any], None]


def _debug() -> bool:
    return any(
        os.environ.get(v, "").lower() in ("1", "true", "yes")
        for v in ("IMMUNOPLEX_DEBUG", "_IMMUNOPLEX_USER_HYDRA_FULL_ERROR")
    )


def one_line(text: str) -> str:
    """Collapse a (possibly multi-line) message into one line."""
    return " ".join(part.strip() for part in str(text).splitlines() if part.strip())


def _hydra_message(err: BaseException) -> str | None:
    """``<where>: <reason>`` for Hydra's own errors, None for anything else."""
    try:
        from hydra.errors import (
            ConfigCompositionException,
            HydraException,
            MissingConfigException,
            OverrideParseException,
        )
    except ImportError:  # pragma: no cover - hydra is a dependency
        return None
    if not isinstance(err, HydraException):
        return None
    text = str(err)
    if isinstance(err, OverrideParseException):
        reason = one_line(text.split("See https://")[0])
        return f"{err.override}: malformed override ({reason}); see Hydra's override grammar"
    if isinstance(err, MissingConfigException):
        m = re.search(r"Could not (?:find|load) '([^']+)'", text)
        options = re.findall(r"^\t(\S+)$", text.split("Config search path")[0], flags=re.M)
        if m and "/" in m.group(1):
            group, _, choice = m.group(1).rpartition("/")
            avail = f"; available: {', '.join(options)}" if options else ""
            return f"{group}={choice}: no such choice in config group '{group}'{avail}"
        return f"config: {one_line(text.split('Config search path')[0])}"
    if isinstance(err, ConfigCompositionException):
        cause = err.__cause__
        m = re.search(
            r"Could not (override|append to config|delete from config)[^']*'([^']+)'", text
        )
        key = m.group(2) if m else None
        if key is None and cause is not None and getattr(cause, "full_key", None):
            key = cause.full_key
        if cause is not None and "not in struct" in str(cause):
            value = re.search(r"use \+(\S+)", text)
            hint = f" (to add a new key use +{value.group(1)})" if value else ""
            return f"{key}: unknown config key{hint}"
        reason = one_line(str(cause).split("full_key:")[0]) if cause is not None else ""
        first = one_line(text.splitlines()[0]) if text else type(err).__name__
        return f"{key or 'config'}: {first}" + (f" ({reason})" if reason else "")
    return f"config: {one_line(text.split('Config search path')[0])}"


def _omegaconf_message(err: BaseException) -> str | None:
    try:
        from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException
    except ImportError:  # pragma: no cover
        return None
    if not isinstance(err, OmegaConfBaseException):
        return None
    key = getattr(err, "full_key", None) or "config"
    if isinstance(err, MissingMandatoryValue):
        return f"{key}: a value is required (pass {key}=...)"
    msg = getattr(err, "msg", None) or str(err)
    reason = one_line(str(msg).split("full_key:")[0])
    return f"{key}: {reason}"


def user_error_message(err: BaseException) -> str | None:
    """The one line (without ``error: ``) for a user's mistake, or None for a bug."""
    if isinstance(err, ImmunoplexError):
        return one_line(str(err))
    msg = _hydra_message(err) or _omegaconf_message(err)
    if msg is not None:
        return msg
    if isinstance(err, OSError) and err.filename is not None:
        reason = err.strerror or type(err).__name__
        return f"{err.filename}: {reason}"
    return None


_interrupted = False


def _on_sigint(signum: int, frame: Any) -> None:
    global _interrupted
    _interrupted = True
    raise KeyboardInterrupt


def _print_error(line: str) -> None:
    sys.stderr.flush()
    print(f"error: {line}", file=sys.stderr, flush=True)


def run_cli(fn: Callable[[], Any]) -> Any:
    """Run a CLI body with the project's error contract (see the module docstring)."""
    global _interrupted
    _interrupted = False
    with contextlib.suppress(ValueError):  # not the main thread: keep Python's handler
        signal.signal(signal.SIGINT, _on_sigint)
    try:
        return fn()
    except KeyboardInterrupt:
        _print_error("interrupted (Ctrl-C); outputs of this run may be incomplete")
        raise SystemExit(EXIT_INTERRUPTED) from None
    except SystemExit as exc:
        if _interrupted and exc.code not in (0, None, EXIT_INTERRUPTED):
            # a library (Lightning) caught the KeyboardInterrupt and exited on its own
            _print_error("interrupted (Ctrl-C); outputs of this run may be incomplete")
            raise SystemExit(EXIT_INTERRUPTED) from None
        raise
    except Exception as err:
        line = user_error_message(err)
        if line is None or _debug():
            raise
        _print_error(line)
        raise SystemExit(EXIT_USAGE) from None


def friendly_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Decorator form of :func:`run_cli` for a function called with arguments."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return run_cli(lambda: fn(*args, **kwargs))

    return wrapper


# ---------------------------------------------------------------------------------------------
# Hydra apps


_SKIP_PRECHECK = (
    "help",
    "hydra_help",
    "cfg",
    "info",
    "shell_completion",
    "multirun",
    "experimental_rerun",
    "config_path",
    "config_dir",
)


def _parse_hydra_args(argv: Sequence[str]) -> Any:
    from hydra._internal.utils import get_args_parser

    from immunoplex.errors import ConfigError

    parser = get_args_parser()

    def _error(message: str) -> None:
        raise ConfigError(f"arguments: {message}")

    parser.error = _error  # type: ignore[method-assign]
    return parser.parse_args(list(argv))


def precheck(config_name: str, argv: Sequence[str], validate: Validator | None) -> Path | None:
    """Compose the config of a single run from ``argv`` and validate it; raise on a mistake.

    Returns the run directory Hydra will use (None when not known). Help, ``--cfg``, ``--info``,
    multirun and custom config paths are left to Hydra (multirun jobs are validated inside the
    task).
    """
    args = _parse_hydra_args(argv)
    if any(getattr(args, name, None) for name in _SKIP_PRECHECK):
        return None
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from immunoplex.cli.checks import check_out_dir
    from immunoplex.paths import config_dir

    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose(
            config_name=args.config_name or config_name,
            overrides=list(args.overrides),
            return_hydra_config=True,
        )
    if validate is not None:
        validate(cfg)
    run_dir = OmegaConf.select(cfg, "hydra.run.dir", default=None)
    if run_dir in (None, ""):
        return None
    check_out_dir(str(run_dir), "hydra.run.dir")
    return Path(str(run_dir))


def _remove_if_empty(path: Path) -> None:
    """Remove a run directory this run created when a failure left only Hydra's bookkeeping in
    it (``.hydra/``, the job's ``*.log``): a failed run must not look like a run."""
    if not path.is_dir():
        return
    for root, _, files in os.walk(path):
        rel = Path(root).relative_to(path)
        if rel.parts[:1] == (".hydra",):
            continue
        if any(not (rel == Path(".") and f.endswith(".log")) for f in files):
            return
    shutil.rmtree(path, ignore_errors=True)


def hydra_app(
    config_name: str,
    validate: Validator | None = None,
    rewrite_argv: Callable[[list[str]], list[str]] | None = None,
) -> Callable[[Callable[[Any], Any]], Callable[[], None]]:
    """Turn ``task(cfg)`` into a console-script ``main()`` with the project's error contract."""

    def decorate(task: Callable[[Any], Any]) -> Callable[[], None]:
        import hydra

        from immunoplex.paths import config_dir

        @functools.wraps(task)
        def checked_task(cfg: Any) -> Any:
            # inside Hydra's job: convert here, or Hydra prints "Error executing job..." first
            def body() -> Any:
                if validate is not None:
                    validate(cfg)
                return task(cfg)

            return run_cli(body)

        hydra_main = hydra.main(
            version_base="1.3", config_path=str(config_dir()), config_name=config_name
        )(checked_task)

        def main() -> None:
            if rewrite_argv is not None:
                sys.argv[1:] = rewrite_argv(sys.argv[1:])
            user_full_error = os.environ.get("HYDRA_FULL_ERROR")
            if os.environ.get("_IMMUNOPLEX_OWNS_FULL_ERROR"):  # inherited from our parent
                user_full_error = None
            if user_full_error:
                os.environ["_IMMUNOPLEX_USER_HYDRA_FULL_ERROR"] = user_full_error

            def body() -> None:
                run_dir = precheck(config_name, sys.argv[1:], validate)
                created = run_dir is not None and not run_dir.exists()
                os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra raises; run_cli reports
                os.environ["_IMMUNOPLEX_OWNS_FULL_ERROR"] = "1"
                ok = False
                try:
                    hydra_main()
                    ok = True
                finally:
                    if created and not ok and run_dir is not None:
                        _remove_if_empty(run_dir)
                    os.environ.pop("_IMMUNOPLEX_OWNS_FULL_ERROR", None)
                    if user_full_error is None:
                        os.environ.pop("HYDRA_FULL_ERROR", None)

            run_cli(body)

        main.__doc__ = task.__doc__
        main.task = task  # type: ignore[attr-defined]
        return main

    return decorate
