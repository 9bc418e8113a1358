"""What every benchmark records next to its figures: the machine, the versions, the date."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import subprocess
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parent / "results"


DEFAULT_PACKAGES = ("torch", "sqlalchemy", "psycopg", "numpy", "pandas")


def machine_info(packages: tuple[str, ...] = DEFAULT_PACKAGES) -> dict[str, Any]:
    """CPU, cores, memory, GPU (if any), Python and the versions of ``packages`` (distribution names).

    ``cpus`` repeats ``cores`` and ``processor`` is the architecture: older result files use those names.
    """
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "cpus": os.cpu_count(),
        "cpus_available": len(os.sched_getaffinity(0)),
        "memory_gib": _memory_gib(),
        "gpu": _gpu_name(),
        "packages": package_versions(packages),
    }


def package_versions(packages: tuple[str, ...]) -> dict[str, str]:
    """Installed version of each distribution in ``packages``; ones not installed are left out."""
    versions: dict[str, str] = {}
    for name in packages:
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[name] = metadata.version(name)
    return versions


def write_result(name: str, payload: dict[str, Any], *, packages: tuple[str, ...] = DEFAULT_PACKAGES,
                 path: Path | None = None) -> Path:
    """Write ``payload`` as ``benchmarks/results/<name>.json`` (or ``path``) with date, machine and versions added.

    Entries of ``payload["machine"]`` (a script's own extras, e.g. load average) extend the machine info.
    The top-level ``date`` and ``versions`` (Python plus ``packages``) are the keys older result files use.
    """
    machine = machine_info(packages) | payload.get("machine", {})
    versions = {"python": machine["python"], **machine["packages"]}
    document = {"date": machine["date"], "versions": versions, **payload, "machine": machine}
    path = path or RESULTS_DIR / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2, ensure_ascii=False, default=str) + "\n", encoding="utf-8")
    return path


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _memory_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                return round(int(line.split()[1]) / 1024**2, 1)
    except OSError:
        pass
    return None


def _gpu_name() -> str | None:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None
