"""WorkerShare: how a CPU run shares the machine with the export worker's warm-up, decided from the spec."""

from __future__ import annotations

import pytest
import torch

from convspec.compiler.training.device import SHORT_RUN_MACS, Placement, WorkerShare


class FakeWorker:
    def __init__(self, warming: bool = True):
        self.warming, self.paused, self.calls = warming, False, []

    def pause(self) -> bool:
        self.calls.append("pause")
        self.paused = self.warming
        return self.paused

    def resume(self) -> None:
        self.calls.append("resume")
        self.paused = False


CPU = Placement(torch.device("cpu"), None, False)
SHORT, LONG = SHORT_RUN_MACS / 3, SHORT_RUN_MACS * 3


@pytest.fixture
def four_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(4)
    yield
    torch.set_num_threads(before)


def test_a_short_run_trains_on_one_thread_fewer_throughout_warm_or_not(four_threads):
    for warming in (True, False):  # the same thread count whether or not the worker is still warming
        worker = FakeWorker(warming)
        with WorkerShare(CPU, worker, SHORT):
            assert torch.get_num_threads() == 3 and worker.calls == []
        assert torch.get_num_threads() == 4


def test_a_long_run_pauses_a_warming_worker_and_trains_on_every_thread(four_threads):
    worker = FakeWorker(warming=True)
    with WorkerShare(CPU, worker, LONG):
        assert worker.paused and torch.get_num_threads() == 4
    assert worker.calls == ["pause", "resume"] and not worker.paused
    warm = FakeWorker(warming=False)  # nothing to pause: nothing to resume
    with WorkerShare(CPU, warm, None):  # unknown work counts as long
        assert torch.get_num_threads() == 4
    assert warm.calls == ["pause"]


def test_the_loop_failing_still_gives_back_threads_and_the_worker(four_threads):
    worker = FakeWorker(warming=True)
    with pytest.raises(KeyboardInterrupt), WorkerShare(CPU, worker, LONG):
        raise KeyboardInterrupt
    assert worker.calls == ["pause", "resume"]
    with pytest.raises(KeyboardInterrupt), WorkerShare(CPU, FakeWorker(), SHORT):
        raise KeyboardInterrupt
    assert torch.get_num_threads() == 4


def test_nothing_changes_without_a_worker_on_cuda_or_on_one_thread(four_threads):
    cuda = Placement(torch.device("cuda"), None, False)
    for place, worker in ((CPU, None), (cuda, FakeWorker())):
        for work in (SHORT, LONG):
            with WorkerShare(place, worker, work):
                assert torch.get_num_threads() == 4
            assert worker is None or worker.calls == []
    torch.set_num_threads(1)
    with WorkerShare(CPU, FakeWorker(), SHORT):
        assert torch.get_num_threads() == 1
