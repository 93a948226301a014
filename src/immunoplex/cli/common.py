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
import logging
import os
import re
import shutil
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from immunoplex.errors import ImmunoplexError
from immunoplex.utils.atomic import is_temporary

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
            InstantiationException,
            MissingConfigException,
            OverrideParseException,
        )
    except ImportError:  # pragma: no cover - hydra is a dependency
        return None
    if not isinstance(err, HydraException):
        return None
    if isinstance(err, InstantiationException) and isinstance(err.__cause__, ImmunoplexError):
        # one of our classes (a callback, a logger) refused its settings while Hydra built it
        return one_line(str(err.__cause__))
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


def _drop_interrupt_notice(record: logging.LogRecord) -> bool:
    """Lightning logs its own "Detected KeyboardInterrupt, attempting graceful shutdown" line;
    the one line an interrupt prints is ours."""
    return "KeyboardInterrupt" not in str(record.msg)


_LIGHTNING_LOGGERS = (
    "lightning.fabric.utilities.rank_zero",
    "lightning.pytorch.utilities.rank_zero",
)


def _on_sigint(signum: int, frame: Any) -> None:
    global _interrupted
    _interrupted = True
    for name in _LIGHTNING_LOGGERS:
        logger = logging.getLogger(name)
        if _drop_interrupt_notice not in logger.filters:
            logger.addFilter(_drop_interrupt_notice)
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


VALUABLE = ("*.ckpt", "model.*", "predictions*", "cv_summary*", "embeddings*")
"""Files that make a failed run directory worth keeping (renamed ``<dir>.failed``)."""


def _is_bookkeeping(rel: Path) -> bool:
    """Hydra's ``.hydra/``, the job's ``*.log``, the resolved ``config.yaml``, Lightning's logs."""
    top = rel.parts[0] if rel.parts else ""
    return (
        top in (".hydra", "logs", "tensorboard", "wandb", "mlruns")
        or (len(rel.parts) == 1 and (rel.suffix == ".log" or rel.name == "config.yaml"))
        or is_temporary(rel)
    )


OUT_DIR_APPS = ("predict", "synth", "eval", "tile", "cells")
"""Apps whose run directory is the user's ``out_dir``: they skip finished work on a re-run, so a
failed run's outputs are kept for it (their last file, e.g. ``predictions.csv``, marks a finished
run); only a directory holding nothing but bookkeeping is removed."""


def retire_failed_run(path: Path, keep: bool = False) -> Path | None:
    """A failed run must not look like a run. A run directory holding only bookkeeping (see
    :func:`_is_bookkeeping`) is removed; one holding anything else (checkpoints to resume from,
    partial predictions) is renamed ``<dir>.failed`` (``.failed.2``... if taken) and the new path
    returned (``keep``: left in place for a resuming re-run). A finished run is marked by its ``summary.json``, written last."""
    if not path.is_dir():
        return None
    files = [Path(root, f).relative_to(path) for root, _, names in os.walk(path) for f in names]
    if all(_is_bookkeeping(f) for f in files):
        shutil.rmtree(path, ignore_errors=True)
        return None
    if keep:
        return path
    target = path.with_name(f"{path.name}.failed")
    n = 1
    while target.exists():
        n += 1
        target = path.with_name(f"{path.name}.failed.{n}")
    try:
        path.rename(target)
    except OSError:
        return None
    return target


def remove_temporaries(root: str | os.PathLike[str]) -> int:
    """Delete the temporary files a killed run left under ``root`` (``.name.XXXX.tmp.ext``
    from :func:`immunoplex.utils.atomic.atomic_path`); returns how many. Call it only where this
    process is the directory's one writer (the start of a run)."""
    root = Path(root)
    if not root.is_dir():
        return 0
    n = 0
    for dirpath, dirnames, names in os.walk(root):
        dirnames[:] = [d for d in dirnames if d != "cache"]  # the tile cache has its own rules
        for name in names:
            p = Path(dirpath, name)
            if is_temporary(p):
                p.unlink(missing_ok=True)
                n += 1
    return n


def _first_missing(path: Path) -> Path | None:
    """The highest ancestor of ``path`` (or itself) that does not exist yet."""
    first = None
    for p in (path, *path.parents):
        if p.exists():
            break
        first = p
    return first


def _remove_empty_parents(run_dir: Path, first_new: Path | None) -> None:
    """Remove the parents a failed run created (``runs/train/``...), when left empty."""
    if first_new is None:
        return
    for p in (run_dir, *run_dir.parents):
        if p.is_dir():
            if any(p.iterdir()):
                break
            p.rmdir()
        if p == first_new:
            break


def _route_lightning_logs() -> None:
    """Lightning, imported before Hydra configured logging, gives its loggers a stderr handler of
    their own ("INFO: Seed set to 0" on stderr); send their records to Hydra's handlers (console
    on stdout and the job log) like every other logger."""
    import lightning  # noqa: F401 - its import adds the handler: import first, then remove it

    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logger = logging.getLogger(name)
        for h in list(logger.handlers):
            if type(h) is logging.StreamHandler:
                logger.removeHandler(h)
        logger.propagate = True


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
                if config_name == "train" or "lightning" in sys.modules:
                    _route_lightning_logs()
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
                first_new = _first_missing(run_dir) if created and run_dir is not None else None
                given = any(a.startswith(("hydra.run.dir=", "++hydra.run.dir=")) for a in sys.argv)
                if run_dir is not None and not given and "'" not in str(run_dir):
                    # pin the directory checked above (${now:...} would move a second later)
                    sys.argv.append(f"hydra.run.dir='{run_dir}'")
                if run_dir is not None and not created and config_name in OUT_DIR_APPS:
                    remove_temporaries(run_dir)  # left by a killed run (this run is the writer)
                os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra raises; run_cli reports
                os.environ["_IMMUNOPLEX_OWNS_FULL_ERROR"] = "1"
                ok = False
                try:
                    hydra_main()
                    ok = True
                finally:
                    if created and not ok and run_dir is not None:
                        if config_name in OUT_DIR_APPS:  # resumable: keep work, drop bookkeeping
                            retire_failed_run(run_dir, keep=True)
                        else:
                            retire_failed_run(run_dir)
                        _remove_empty_parents(run_dir, first_new)
                    os.environ.pop("_IMMUNOPLEX_OWNS_FULL_ERROR", None)
                    if user_full_error is None:
                        os.environ.pop("HYDRA_FULL_ERROR", None)

            run_cli(body)

        main.__doc__ = task.__doc__
        main.task = task  # type: ignore[attr-defined]
        return main

    return decorate
