"""What the kernel library's machine code targets here: ``-march=native`` as the compiler
resolves it on this CPU, and the CPU's own feature flags where the OS lists them.

Part of the library's identity (:mod:`prefixkv.kernels.build`), on every OS: a library built
for a CPU with other instructions is rebuilt instead of loaded (loading it could kill the
process with an illegal instruction). GCC lists the resolved target options
(``-Q --help=target``), clang the cc1 command it would run (``-###``: ``-target-cpu`` and
every ``-target-feature``). ``/proc/cpuinfo`` adds the model and flags on Linux.
"""

from __future__ import annotations

import itertools
import os
import platform
import re
import shlex
import subprocess

_GCC_OPTION = re.compile(r"^\s+-m(\S+?)(=?)\s+(\S.*)$")
_CLANG_KEYS = ("-target-cpu", "-tune-cpu", "-target-feature")


def target_features(cc: str, version: str) -> str:
    """What ``-march=native`` means to ``cc`` (whose ``--version`` output is ``version``) on
    this machine, then the machine's name and CPU flags. Raises RuntimeError when the
    compiler does not say (then nothing could tell a foreign library from ours)."""
    if "clang" in version.lower():
        asked = [cc, "-march=native", "-###", "-x", "c", "-c", os.devnull, "-o", os.devnull]
        resolved = clang_target(_output(asked))
    else:
        resolved = gcc_target(_output([cc, "-march=native", "-Q", "--help=target"]))
    if not resolved:
        raise RuntimeError(f"{cc} does not say what -march=native means on this CPU")
    return f"{resolved}\n{cpu_flags()}"


def gcc_target(listing: str) -> str:
    """The options GCC's ``-Q --help=target`` shows enabled or set, one line:
    ``arch=znver3 tune=znver3 ... +avx2 +fma ...`` (empty when it lists none). Pure."""
    parts = []
    for line in listing.split("Known valid arguments")[0].splitlines():
        found = _GCC_OPTION.match(line)
        if found is None:
            continue
        name, equals, value = found.groups()
        if equals:
            parts.append(f"{name}={value.strip()}")
        elif value.strip() == "[enabled]":
            parts.append(f"+{name}")
    return " ".join(parts)


def clang_target(commands: str) -> str:
    """The ``-target-cpu``, ``-tune-cpu`` and ``-target-feature`` arguments of the commands
    clang's ``-###`` prints, in order, one line (empty when there are none). Pure."""
    parts = []
    for line in commands.splitlines():
        if "-target-cpu" not in line:
            continue
        try:
            words = shlex.split(line)
        except ValueError:
            continue
        parts += [f"{a}={b}" for a, b in itertools.pairwise(words) if a in _CLANG_KEYS]
    return " ".join(parts)


def cpu_flags() -> str:
    """The machine's name and, where ``/proc/cpuinfo`` exists, its first CPU's model and
    feature flags (the first CPU says it for all)."""
    text = platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith(("model name", "flags", "Features")):
                    text += "\n" + line.strip()
                if line.strip() == "":
                    break
    except OSError:
        pass
    return text


def _output(command: list[str]) -> str:
    """stdout and stderr of ``command``; RuntimeError when it does not run."""
    try:
        run = subprocess.run(command, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as exc:
        raise RuntimeError(f"{shlex.join(command)} does not run ({exc})") from exc
    return run.stdout + run.stderr
