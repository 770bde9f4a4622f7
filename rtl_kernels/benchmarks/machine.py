"""Where and with what a benchmark ran: CPU/GPU model, core count, library versions, date."""

from __future__ import annotations

import datetime as dt
import os
import platform
import re
import sys
from pathlib import Path

import torch

from ..cpuinfo import cpu_model


def _total_memory_bytes() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def machine_info(device: torch.device) -> dict:
    """Hardware description for the result file."""
    info = {
        "device": str(device),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "memory_bytes": _total_memory_bytes(),
        "platform": platform.platform(),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(
            gpu_name=torch.cuda.get_device_name(device),
            gpu_capability=f"{props.major}.{props.minor}",
            gpu_memory_bytes=props.total_memory,
            gpu_sms=props.multi_processor_count,
            cuda_version=torch.version.cuda,
        )
    return info


def versions() -> dict:
    """Versions of python, torch, triton (None when absent) and rtl_kernels."""
    from .. import __version__

    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    return {"python": sys.version.split()[0], "torch": torch.__version__, "triton": triton_version, "rtl_kernels": __version__}


def slug(text: str) -> str:
    """Lower-case file-name-safe form: ``"Intel(R) Xeon(R) Processor"`` -> ``"intel-xeon-processor"``."""
    text = re.sub(r"\((r|tm)\)", "", text.lower())
    return re.sub(r"[^a-z0-9]+", "-", text).strip("-") or "unknown"


def device_slug(info: dict) -> str:
    """Short device tag for result file names, e.g. ``cpu-intel-xeon-processor-2c`` or ``nvidia-h100-80gb-hbm3``."""
    if info.get("gpu_name"):
        return slug(info["gpu_name"])
    return f"cpu-{slug(info['cpu_model'])}-{info['cpu_count']}c"


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
