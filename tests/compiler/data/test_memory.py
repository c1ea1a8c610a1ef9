"""The room a decode may take (MemAvailable, cgroup v1/v2 limits), and what loading does with it."""

from __future__ import annotations

import pytest

from convspec.compiler.data import decoding, memory
from convspec.compiler.data.loading import load_dataset
from convspec.runtime.datasets import DataError
from convspec.specs import spec_from_dict

GIB = 1 << 30


def shapes_spec(folder, cache: str):
    """The shapes folder at 3x24x24: 36 images, 62,208 bytes of uint8 cache."""
    return spec_from_dict(
        {
            "version": 1,
            "task": "multiclass",
            "data": {"source": {"type": "folder", "path": str(folder)}, "cache": cache},
            "input": {"channels": 3, "size": [24, 24]},
            "model": {"layers": [{"type": "flatten"}]},
        },
        base_dir="/",
    )


@pytest.fixture
def fake_proc(tmp_path, monkeypatch):
    """Point the module at a fake /proc/meminfo, /proc/self/cgroup and /sys/fs/cgroup under tmp_path."""
    (tmp_path / "cgroup").mkdir()
    monkeypatch.setattr(memory, "MEMINFO", tmp_path / "meminfo")
    monkeypatch.setattr(memory, "OWN_CGROUP", tmp_path / "self-cgroup")
    monkeypatch.setattr(memory, "CGROUP", tmp_path / "cgroup")
    return tmp_path


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_meminfo_alone(fake_proc):
    write(fake_proc / "meminfo", "MemTotal:       24000000 kB\nMemFree: 100 kB\nMemAvailable:    2097152 kB\n")
    write(fake_proc / "self-cgroup", "0::/\n")
    assert memory.available_bytes() == 2 * GIB


def test_v2_limit_on_a_parent_less_usage_less_page_cache(fake_proc):
    write(fake_proc / "meminfo", "MemAvailable: 20971520 kB\n")  # 20 GiB free on the host
    write(fake_proc / "self-cgroup", "0::/job/step\n")
    job, step = fake_proc / "cgroup" / "job", fake_proc / "cgroup" / "job" / "step"
    write(step / "memory.max", "max\n")
    write(step / "memory.current", "1\n")
    write(job / "memory.max", f"{4 * GIB}\n")  # the container's limit sits above the process's own cgroup
    write(job / "memory.current", f"{3 * GIB}\n")
    write(job / "memory.stat", f"anon 1\nactive_file {GIB // 4}\ninactive_file {GIB // 2}\nshmem 7\n")
    assert memory.available_bytes() == 4 * GIB - (3 * GIB - GIB // 4 - GIB // 2)


def test_v1_memory_controller_and_its_no_limit_number(fake_proc):
    write(fake_proc / "meminfo", "MemAvailable: 20971520 kB\n")
    write(fake_proc / "self-cgroup", "4:memory:/ci/job\n3:cpu:/ci/job\n0::/\n")
    v1 = fake_proc / "cgroup" / "memory"
    write(v1 / "memory.limit_in_bytes", "9223372036854771712\n")  # v1's "unlimited"
    write(v1 / "memory.usage_in_bytes", f"{10 * GIB}\n")
    write(v1 / "ci" / "job" / "memory.limit_in_bytes", f"{2 * GIB}\n")
    write(v1 / "ci" / "job" / "memory.usage_in_bytes", f"{GIB}\n")
    stat = f"active_file 3\ninactive_file 5\ntotal_active_file {GIB // 8}\ntotal_inactive_file {GIB // 4}\n"
    write(v1 / "ci" / "job" / "memory.stat", stat)
    assert memory.available_bytes() == 2 * GIB - (GIB - GIB // 8 - GIB // 4)


def test_nothing_readable_is_unknown(fake_proc):
    assert memory.available_bytes() is None


# ------------------------------------------------------------------ loading


def room(monkeypatch, nbytes):
    monkeypatch.setattr(decoding, "available_bytes", lambda: nbytes)


def test_a_memory_cache_larger_than_the_room_is_refused_before_decoding(shapes_folder, monkeypatch):
    room(monkeypatch, 50_000)
    log: list[str] = []
    spec = shapes_spec(shapes_folder, "memory")
    with pytest.raises(DataError, match=r"data.cache: memory: 36 images of 3x24x24 uint8 need .* use data.cache: disk"):
        load_dataset(spec, log=log.append)
    assert not any("decoding" in m for m in log), log


def test_a_tight_fit_warns_and_trains(shapes_folder, monkeypatch):
    room(monkeypatch, 100_000)
    log: list[str] = []
    spec = shapes_spec(shapes_folder, "memory")
    assert len(load_dataset(spec, log=log.append)) == 36
    assert any(m.startswith("warning: data.cache: memory:") and "may run out of memory" in m for m in log), log


def test_auto_takes_the_disk_when_the_data_would_fill_the_room(shapes_folder, monkeypatch, tmp_path):
    room(monkeypatch, 100_000)  # less than twice the 62,208 bytes
    log: list[str] = []
    spec = shapes_spec(shapes_folder, "auto")
    data = load_dataset(spec, cache_dir=tmp_path / "cache", log=log.append)
    assert len(data) == 36 and list((tmp_path / "cache" / "images").glob("*.npy")), log
    assert not any("warning" in m for m in log), log


def test_an_unusable_disk_cache_then_too_little_room_says_both(shapes_folder, monkeypatch, tmp_path):
    room(monkeypatch, 50_000)
    (tmp_path / "a-file").write_text("not a folder")
    log: list[str] = []
    with pytest.raises(DataError, match=r"data.cache: auto: the disk cache is unusable .* need 0.0 GiB of RAM"):
        load_dataset(shapes_spec(shapes_folder, "auto"), cache_dir=tmp_path / "a-file" / "cache", log=log.append)
    assert any(m.startswith("warning:") and "cache" in m for m in log), log
