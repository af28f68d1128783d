"""benchmark.device's CPU helpers: single-threaded workers for independent parts, and the heap setting."""

import platform
import sys
import threading

import pytest
import torch

from benchmark.device import map_on_cpu_threads, parts_for_cpu_threads, retain_cpu_heap


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def test_parts_keep_their_order_and_run_on_single_threaded_workers(two_threads):
    seen: list[tuple[int, int, int]] = []

    def fn(k: int) -> int:
        seen.append((k, threading.get_ident(), torch.get_num_threads()))
        return k * k

    assert map_on_cpu_threads(fn, list(range(7))) == [k * k for k in range(7)]
    assert sorted(k for k, _, _ in seen) == list(range(7))
    assert {n for _, _, n in seen} == {1}  # torch runs on one thread in each worker
    assert threading.get_ident() not in {t for _, t, _ in seen}
    assert torch.get_num_threads() == 2  # restored


def test_tensor_results_equal_the_plain_loop_and_the_grad_mode_carries_over(two_threads):
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 5, 3, padding=1)
    parts = list(torch.randn(9, 3, 16, 16).split(2))
    with torch.no_grad():
        want = [conv(p) for p in parts]
        got = map_on_cpu_threads(conv, parts)
        assert all(not g.requires_grad for g in got)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, atol=1e-6, rtol=1e-6)
    assert all(o.requires_grad for o in map_on_cpu_threads(conv, parts))  # grad on: the graph is kept
    with torch.inference_mode():
        assert all(o.is_inference() for o in map_on_cpu_threads(conv, parts))


def test_one_thread_or_one_part_is_the_plain_loop():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert map_on_cpu_threads(lambda _: threading.get_ident(), [0, 1, 2]) == [threading.get_ident()] * 3
    finally:
        torch.set_num_threads(before)
    assert map_on_cpu_threads(lambda _: threading.get_ident(), [0]) == [threading.get_ident()]


def test_an_error_in_a_part_propagates_and_the_threads_are_restored(two_threads):
    def fn(k: int) -> int:
        if k == 3:
            raise ValueError("part 3 is bad")
        return k

    with pytest.raises(ValueError, match="part 3 is bad"):
        map_on_cpu_threads(fn, list(range(5)))
    assert torch.get_num_threads() == 2


@pytest.mark.parametrize("n,chunk,workers", [(10, 4, 2), (32, 4, 2), (3, 4, 2), (7, 2, 3), (5, 4, 1)])
def test_parts_are_even_across_workers(n, chunk, workers, monkeypatch):
    """Parts of ≤ chunk items covering range(n) in order, the same number for every worker."""
    monkeypatch.setattr(torch, "get_num_threads", lambda: workers)
    parts = [(p.start, p.stop) for p in parts_for_cpu_threads(n, chunk)]
    assert [a for a, _ in parts] == [0, *[b for _, b in parts[:-1]]] and parts[-1][1] == n
    assert all(0 < b - a <= chunk for a, b in parts)
    assert len(parts) == n or len(parts) % workers == 0


def test_retain_cpu_heap_opt_out(monkeypatch):
    monkeypatch.setenv("PHBENCH_MALLOC", "default")
    assert retain_cpu_heap() is False
    monkeypatch.delenv("PHBENCH_MALLOC")
    if sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc":
        assert retain_cpu_heap() is True  # glibc accepts every setting
