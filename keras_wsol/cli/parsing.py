"""How the commands read a command line: flag files checked line by line, renamed flags named, short errors.

Example:
    >>> wrapped = command_main(lambda argv: None); wrapped(["train.py"]) is None
    True
"""

import copy
import os
import sys
from typing import Callable

from absl import app, flags
from absl.flags import _helpers

from keras_wsol.cli import quiet
from keras_wsol.cli.flags import FLAGS, REMOVED, RENAMED


def show_in_help(*modules: str) -> None:
    """List the flags ``modules`` define under ``--help``, which absl limits to the main script's own flags."""
    for module in modules:
        for flag in FLAGS.get_flags_for_module(module):
            FLAGS.register_key_flag_for_module(sys.argv[0], flag)


def command_main(main: Callable[[list[str]], None]) -> Callable[[list[str]], None]:
    """``main`` as a command runs it (``app.run``'s main): TensorFlow's Python INFO lines hidden unless the user
    chose ``--verbosity`` (:func:`quiet.hide_tensorflow_info`), and an ``app.UsageError`` printed as
    ``PROGRAM: error: MESSAGE`` with exit status 2, instead of absl's whole flag help before the one line that
    matters (``--help`` shows the help)."""

    def wrapped(argv: list[str]) -> None:
        quiet.hide_tensorflow_info(FLAGS)
        try:
            main(argv)
        except app.UsageError as error:
            print(f"{os.path.basename(argv[0])}: error: {error}\n(--help lists the flags)", file=sys.stderr)
            sys.exit(2)

    return wrapped


def parse_flags(argv: list[str]) -> list[str]:
    """absl's parsing, after checking each ``--flagfile`` line so that an error names the file and line.

    absl reads flag files itself but reports an unknown flag or a bad value
    without saying where it came from. Used as ``app.run``'s ``flags_parser``.
    """
    try:
        for i, argument in enumerate(argv[1:], 1):
            if argument == "--":
                break
            if argument.startswith("-") and _renamed(argument):
                raise flags.Error(_renamed(argument))
            if argument.startswith("--flagfile="):
                _check_flagfile(argument.split("=", 1)[1], ())
            elif argument == "--flagfile" and i + 1 < len(argv):
                _check_flagfile(argv[i + 1], ())
    except flags.Error as error:
        sys.stderr.write(f"FATAL Flags parsing error: {error}\nPass --help to see the flags.\n")
        sys.exit(1)
    return app.parse_flags_with_usage(argv)


def _renamed(argument: str) -> str | None:
    """The message for ``argument`` (``--name[=value]``) when ``name`` is a flag's name in an earlier version, else
    None."""
    name = argument.lstrip("-").partition("=")[0]
    known = {**RENAMED, **REMOVED}
    negated = name.startswith("no") and name[2:] in known and name not in known
    old = name[2:] if negated else name
    if old not in known or old in FLAGS:
        return None
    if old in REMOVED:
        successor, version = REMOVED[old]
        return f"--{name} was removed in keras_wsol {version}: {successor} (CHANGELOG.md)"
    new, version = RENAMED[old]
    return (
        f"--{name} was renamed in keras_wsol {version}: it is --{'no' if negated else ''}{new} now "
        "(CHANGELOG.md lists every renamed flag)"
    )


def _check_flagfile(path: str, including: tuple[str, ...]) -> None:
    """Raise :class:`flags.Error` naming ``path:line`` for the first line absl would refuse."""
    if path in including:
        raise flags.Error(f"--flagfile={path} includes itself (through {' -> '.join(including)})")
    try:
        with open(path) as file:
            lines = file.read().splitlines()
    except OSError as error:
        raise flags.Error(f"--flagfile={path}: cannot read it ({error.strerror})") from None
    for number, line in enumerate(lines, 1):
        text, where = line.strip(), f"{path}:{number}"
        if not text or text.startswith(("#", "//")):
            continue
        if not text.startswith("-"):
            raise flags.Error(f"{where}: {text!r} is not a flag (one --name=value per line)")
        name, has_value, value = text.lstrip("-").partition("=")
        if name == "flagfile":
            _check_flagfile(value, (*including, path))
            continue
        if _renamed(text):
            raise flags.Error(f"{where}: {_renamed(text)}")
        boolean = name.startswith("no") and name[2:] in FLAGS and FLAGS[name[2:]].boolean and not has_value
        if name not in FLAGS and not boolean:
            close = _helpers.get_flag_suggestions(name, list(FLAGS))
            hint = f" (did you mean --{' or --'.join(close)}?)" if close else ""
            raise flags.Error(f"{where}: unknown flag --{name}{hint}")
        if has_value:
            try:
                copy.deepcopy(FLAGS[name]).parse(value)  # a copy: the real flag is set by absl's own pass
            except (flags.Error, ValueError) as error:
                raise flags.Error(f"{where}: {error}") from None
