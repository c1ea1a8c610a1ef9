"""CoreShare: one thread fewer on the CPU while the export worker warms up, all of them after."""

from __future__ import annotations

import pytest
import torch

from convspec.compiler.training.device import CoreShare, Placement


class FakeWorker:
    def __init__(self, warm_after: int):
        self.asked, self.warm_after = 0, warm_after

    def warming(self) -> bool:
        self.asked += 1
        return self.asked <= self.warm_after


CPU = Placement(torch.device("cpu"), None, False)


@pytest.fixture
def four_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(4)
    yield
    torch.set_num_threads(before)


def test_one_thread_fewer_until_warm_then_all(four_threads, monkeypatch):
    monkeypatch.setattr(CoreShare, "EVERY_S", 0.0)
    worker = FakeWorker(warm_after=3)
    share = CoreShare(CPU, worker)  # asks once: warming
    assert torch.get_num_threads() == 3
    share.check()  # asks again: still warming
    share.check()  # asks: still warming (3rd)
    assert torch.get_num_threads() == 3
    share.check()  # 4th: warm
    assert torch.get_num_threads() == 4
    share.check()
    assert worker.asked == 4  # never asked again once warm


def test_leaving_gives_every_thread_back_even_if_never_warm(four_threads):
    with CoreShare(CPU, FakeWorker(warm_after=10**6)) as share:
        share.check()
        assert torch.get_num_threads() == 3
    assert torch.get_num_threads() == 4


def test_checks_are_throttled(four_threads):
    worker = FakeWorker(warm_after=10**6)
    share = CoreShare(CPU, worker)
    for _ in range(1000):
        share.check()
    assert worker.asked <= 3  # at most every EVERY_S (0.1 s): a thousand steps take far less
    assert torch.get_num_threads() == 3


def test_nothing_changes_when_already_warm_or_no_worker_or_cuda(four_threads):
    for place, worker in (
        (CPU, FakeWorker(warm_after=0)),
        (CPU, None),
        (Placement(torch.device("cuda"), None, False), FakeWorker(warm_after=10**6)),
    ):
        share = CoreShare(place, worker)
        share.check()
        assert torch.get_num_threads() == 4 and share.worker is None


def test_one_thread_stays_one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        CoreShare(CPU, FakeWorker(warm_after=10**6))
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
