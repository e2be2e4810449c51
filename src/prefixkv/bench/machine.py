"""What a benchmark ran on, recorded next to its figures."""

from __future__ import annotations

import os
import platform
from typing import Any


def machine_info() -> dict[str, Any]:
    """CPU model, core count, OS, Python and library versions, torch threads."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    info: dict[str, Any] = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "os": platform.platform(),
        "python": platform.python_version(),
    }
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
    except ImportError:
        pass
    return info


def describe(info: dict[str, Any]) -> str:
    """One line for a benchmark's header."""
    threads = f", torch {info['torch']} x{info['torch_threads']} threads" if "torch" in info else ""
    return f"# machine: {info['cpu']}, {info['cores']} cores, Python {info['python']}{threads}"
