"""How much RAM a decode may still take: the kernel's MemAvailable, capped by a cgroup limit.

Why by hand: psutil is not a dependency, and neither it nor ``os.sysconf`` sees the cgroup
limit of a container or a CI job, which is what kills a process that decodes past it.
"""

from __future__ import annotations

import math
from pathlib import Path

# float32 pixels per inference batch (evaluation, the export's parity and INT8 checks): 55 images at
# 3x224x224, all of digits. Why not 128 MiB: the batch and its preprocessing temporaries set the peak
# RSS (bench/real_size.py, 2,000 files: 1.65 GiB at 128 MiB, 1.41 GiB at 32 MiB, for a 0.28 GiB cache).
INFERENCE_BYTES = 32 << 20

MEMINFO = Path("/proc/meminfo")
CGROUP = Path("/sys/fs/cgroup")
OWN_CGROUP = Path("/proc/self/cgroup")


def available_bytes() -> int | None:
    """Bytes this process can still allocate without swapping or being killed; None when unknown."""
    room = [r for r in (_meminfo_available(), _cgroup_room()) if r is not None]
    return min(room) if room else None


def images_per_batch(image_shape: tuple[int, ...]) -> int:
    """Images per inference batch: as many as fit :data:`INFERENCE_BYTES` of float32 pixels."""
    return max(1, INFERENCE_BYTES // (4 * math.prod(image_shape)))


def gib(n: int | float) -> str:
    return f"{n / 2**30:.1f} GiB"


def _meminfo_available() -> int | None:
    try:
        for line in MEMINFO.read_text("ascii").splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024  # kB
    except (OSError, ValueError, IndexError):
        pass
    return None


def _cgroup_room() -> int | None:
    """The least room (limit less usage) of this process's cgroup and its parents; None when unlimited.

    Why the parents too: a container's limit sits on a folder above the process's own one.
    """
    rooms = []
    for folder, limit_name, usage_name in _cgroup_chain():
        try:
            text = (folder / limit_name).read_text("ascii").strip()
            if text == "max" or int(text) >= 1 << 60:  # v1 writes "no limit" as a huge number
                continue
            used = int((folder / usage_name).read_text("ascii").strip()) - _page_cache(folder)
            rooms.append(max(0, int(text) - used))
        except (OSError, ValueError):
            continue
    return min(rooms) if rooms else None


def _page_cache(folder: Path) -> int:
    """File pages, active and inactive: the kernel reclaims them before it kills anything in the cgroup.

    Why all of them: the room decides a refusal, which must be certain; the usage counts the
    page cache of every image file read lately.
    """
    try:
        stats = dict(line.split(" ", 1) for line in (folder / "memory.stat").read_text("ascii").splitlines())
        prefix = "total_" if "total_inactive_file" in stats else ""  # v1's total_ keys count the children
        return sum(int(stats.get(f"{prefix}{kind}_file", 0)) for kind in ("active", "inactive"))
    except (OSError, ValueError):
        return 0


def _cgroup_chain() -> list[tuple[Path, str, str]]:
    """``(folder, limit file, usage file)`` from this process's cgroup up to the root, v2 and v1."""
    chain = []
    try:
        lines = OWN_CGROUP.read_text("ascii").splitlines()
    except OSError:
        return chain
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if controllers == "":
            base, names = CGROUP, ("memory.max", "memory.current")
        elif "memory" in controllers.split(","):
            base, names = CGROUP / "memory", ("memory.limit_in_bytes", "memory.usage_in_bytes")
        else:
            continue
        folder = base / path.strip("/")
        while True:
            chain.append((folder, *names))
            if folder == base or base not in folder.parents:
                break
            folder = folder.parent
    return chain
