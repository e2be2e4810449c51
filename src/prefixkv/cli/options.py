"""Options that also read ``PREFIXKV_<OPTION>`` environment variables, and their parsers.

Every ``prefixkv`` option (commands and benchmarks) is added through :func:`add_option`, so
each follows one rule: the command line wins over the variable, and a bad variable is
reported under its own name, only when the command that reads it runs.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from typing import Any

_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off", "")


def parse_bytes(text: str) -> int:
    """``2GiB``, ``512MiB``, ``1G``, ``64k`` or a plain integer, as a number of bytes;
    ValueError for anything else.

    K/M/G/T and KiB/MiB/GiB/TiB are powers of 1024; KB/MB/GB/TB are powers of 1000.
    """
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b?)\s*", text, re.IGNORECASE)
    if match is None or (match.group(3).lower() == "ib" and not match.group(2)):
        raise ValueError(f"not a size: {text!r} (try 2GiB, 512MiB or 1000000)")
    number, prefix, suffix = match.group(1), match.group(2).lower(), match.group(3).lower()
    base = 1000 ** " kmgt".index(prefix) if suffix == "b" else _UNITS[prefix]
    return int(float(number) * base)


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def share_fraction(text: str) -> float:
    value = float(text)
    if not 0.0 < value <= 1.0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text}")
    return value


def rate_fraction(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {text}")
    return value


_HELP = ("-h", "--help")


class Parser(argparse.ArgumentParser):
    """An ArgumentParser that never echoes what may be a secret given to a mistyped option.

    Abbreviations are off: ``--api-keys SECRET`` or ``--a=SECRET`` would otherwise reach an
    error message that quotes them (and a prefix that matches today, ``--admin``, may stop
    matching once a longer option is added). Unrecognized arguments are reported by their
    option names only; the values among them are counted, not shown. An option before the
    command (``prefixkv --api-key SECRET serve``) is refused before argparse would take its
    value for the command and quote it as an invalid choice. Subparsers are made of this
    class too (argparse gives them the parent's class)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def parse_args(self, args: Any = None, namespace: Any = None) -> Any:
        args = list(sys.argv[1:] if args is None else args)
        first = args[0] if args else ""
        if self._subparsers is not None and first.startswith("-") and first not in _HELP:
            name = first.partition("=")[0] if first.startswith("--") else "an option"
            self.error(f"{name} comes before the command; options go after it")
        parsed, extra = self.parse_known_args(args, namespace)
        if extra:
            # Only "--name" is shown: a value may start with one dash, never with two.
            options = [a for a in extra if a.startswith("--")]
            hidden = len(extra) - len(options) + sum("=" in a for a in options)
            shown = [a.partition("=")[0] for a in options]
            if hidden:
                shown.append(
                    f"{'and ' if shown else ''}{hidden} value(s) (not shown: may be secret)"
                )
            self.error(f"unrecognized arguments: {' '.join(shown)}")
        return parsed


class EnvText(str):
    """A default taken from an environment variable; remembers which, for error messages."""

    env = ""


def _checked(convert: Any, secret: bool) -> Any:
    """``convert`` for argparse, naming the environment variable when its value is bad. The
    value of a ``secret`` option is never shown, nor the converter's message (which may
    quote it): only which option or variable holds it."""

    def parse(text: str) -> Any:
        try:
            return convert(text)
        except (ValueError, argparse.ArgumentTypeError) as exc:
            if secret:
                where = f"in {text.env} " if isinstance(text, EnvText) else ""
                raise argparse.ArgumentTypeError(
                    f"invalid value {where}(not shown: it is a secret)"
                ) from None
            where = f"{text.env}={text!r}" if isinstance(text, EnvText) else repr(text)
            raise argparse.ArgumentTypeError(f"invalid value {where}: {exc}") from exc

    return parse


def zmq_endpoint(text: str) -> str:
    """A ZeroMQ endpoint to bind: ``tcp://HOST:PORT`` (PORT a number, 0 for any free one) or
    ``ipc://PATH``. ValueError saying the form otherwise."""
    if text.startswith("ipc://") and len(text) > len("ipc://"):
        return text
    host, _, port = text.removeprefix("tcp://").rpartition(":")
    if not (text.startswith("tcp://") and host and port.isdigit() and int(port) < 65536):
        raise ValueError("expected tcp://HOST:PORT or ipc://PATH")
    return text


def one_of(choices: list[str]) -> Any:
    def parse(text: str) -> str:
        if text.lower() not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}")
        return text.lower()

    return parse


def _parse_bool(text: str) -> bool:
    if text.strip().lower() not in _TRUE + _FALSE:
        raise ValueError(f"expected one of {', '.join(_TRUE + _FALSE[:-1])}")
    return text.strip().lower() in _TRUE


class _Flag(argparse.Action):
    """``store_true`` whose default may come from the environment (parsed by ``type``)."""

    def __init__(self, option_strings: Any, dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, **kwargs)

    def __call__(self, parser: Any, namespace: Any, values: Any, option: Any = None) -> None:
        setattr(namespace, self.dest, True)


class ReplaceThenAppend(argparse.Action):
    """``append``, except that the first use on the command line drops the environment's
    list instead of adding to it."""

    def __call__(self, parser: Any, namespace: Any, values: Any, option: Any = None) -> None:
        items = getattr(namespace, self.dest)
        items = [] if items is self.default else list(items)
        setattr(namespace, self.dest, [*items, values])


def add_option(
    parser: argparse.ArgumentParser, flag: str, help: str, secret: bool = False, **kwargs: Any
) -> None:
    """Add ``flag``, its default overridden by ``PREFIXKV_<FLAG>`` when that is set. The
    variable is parsed (by ``type``) only if this command runs, so a bad one in the
    environment cannot break another command. ``action="flag"`` is a boolean switch whose
    variable reads 1/true/yes/on or 0/false/no/off; ``secret`` keeps the value out of --help
    and out of the error for a bad value.
    Benchmarks use this too, so every ``prefixkv`` option follows the same rule."""
    env = "PREFIXKV_" + flag.lstrip("-").upper().replace("-", "_")
    value = os.environ.get(env)
    if kwargs.get("action") == "flag":
        kwargs.update(action=_Flag, type=_parse_bool, default=False)
    if value is not None and kwargs.get("action") is ReplaceThenAppend:
        # Every item is kept (stripped), blank ones too, so the command can refuse them by name.
        kwargs["default"] = [EnvText(item.strip()) for item in value.split(",")]
        for item in kwargs["default"]:
            item.env = env
    elif value is not None:
        kwargs["default"] = EnvText(value)
        kwargs["default"].env = env
    if "type" in kwargs:
        kwargs["type"] = _checked(kwargs["type"], secret)
    hidden = secret or kwargs.get("action") is _Flag or kwargs.get("default") is None
    shown = "" if hidden else " (%(default)s)"
    parser.add_argument(flag, help=f"{help}{shown} [env {env}]", **kwargs)
