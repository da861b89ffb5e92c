"""A DataLoader worker forked while the prefetch holds one of the data cache's locks does not keep
it (ml.data.flocks).

An flock belongs to the open file description, which fork shares: before, a worker forked while a
prefetch thread held the ``.intent`` lock held it too, the prefetch's next ``take`` waited for the
worker, the worker waited for data, and the run hung (a CI run did, until its test's timeout).
Here a thread holds each lock while the process forks, as the prefetch thread does while the
DataLoader starts its workers; the forked child stays alive through each check. (Between the fork
and the child's first moment on a CPU its copy still holds the lock: that is what the child
closes first, so the checks below start once the child has answered once.)
"""

from __future__ import annotations

import fcntl
import multiprocessing
import os
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

import pytest

from ml.data import flocks, partial, storage

FORK = multiprocessing.get_context("fork")

# The data cache's locks, as the prefetch and the readers take them.
LOCKS: dict[str, tuple[Callable[[Path], AbstractContextManager], Callable[[Path], Path]]] = {
    "intent (who fetches what)": (partial._deciding, lambda c: c.with_name(c.name + ".intent")),
    "fill (sealing the copy)": (
        lambda c: partial.fill_lock(c, exclusive=True),
        lambda c: c.with_name(c.name + ".fill"),
    ),
    "download (the prefetch's fetch)": (partial.download_lock, partial.lock_path),
}


@pytest.fixture
def copy(tmp_path) -> Path:
    c = tmp_path / "data_train.hdf5.etag-1"
    partial.start(c, 1000)
    return c


def _free(path: Path) -> bool:
    """Whether no process holds an flock on ``path`` (a non-blocking exclusive try, let go at once)."""
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)


@contextmanager
def _held_by_a_thread(lock: AbstractContextManager):
    """The lock held by another thread of this process (the prefetch's) until the block ends."""
    held, done = threading.Event(), threading.Event()

    def hold() -> None:
        with lock:
            held.set()
            done.wait(30)

    t = threading.Thread(target=hold)
    t.start()
    assert held.wait(30)
    try:
        yield
    finally:
        done.set()
        t.join(30)


def _child(path: str, asked, answers) -> None:
    """A forked worker: answers whether the lock file is free, as often as it is asked."""
    while asked.get() is not None:
        answers.put(_free(Path(path)))


@pytest.fixture
def forked_child():
    """Fork a child that lives until the test ends; ``ask()`` has it try the lock."""
    made = []

    def fork(path: Path):
        asked, answers = FORK.SimpleQueue(), FORK.SimpleQueue()
        child = FORK.Process(target=_child, args=(str(path), asked, answers), daemon=True)
        child.start()
        made.append((child, asked))

        def ask() -> bool:
            asked.put(True)
            return answers.get()

        return ask

    yield fork
    for child, asked in made:
        asked.put(None)
        child.join(10)
        if child.is_alive():
            child.kill()


@pytest.mark.parametrize("name", LOCKS)
def test_a_worker_forked_while_a_lock_is_held_does_not_keep_it(name, copy, forked_child):
    take, lock_file = LOCKS[name]
    with _held_by_a_thread(take(copy)):
        child_sees_it_free = forked_child(lock_file(copy))
        # The child does not hold the parent's lock: it sees it as another's while the parent holds it.
        assert not child_sees_it_free()
        assert not _free(lock_file(copy))
    # The parent let go while the child lives: the lock is free for the parent's next take, and
    # for the child.
    assert _free(lock_file(copy))
    assert child_sees_it_free()
    with take(copy):  # the prefetch's next take does not wait for the worker
        pass


def test_an_ended_prefetch_is_seen_as_gone_while_a_worker_forked_during_it_lives(copy, forked_child):
    """Readers stream a claimed range themselves when the prefetcher is gone (fetcher_alive); a
    worker forked mid-fetch must not make an ended fetch look alive."""
    with _held_by_a_thread(partial.download_lock(copy)):
        child_sees_it_free = forked_child(partial.lock_path(copy))
        assert not child_sees_it_free()  # the child is running (it closed its copies on the way)
        assert partial.fetcher_alive(copy)
    assert not partial.fetcher_alive(copy)


def test_a_lock_let_go_leaves_no_descriptor_behind(copy):
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(50):
        with partial._deciding(copy), partial.fill_lock(copy, exclusive=False):
            pass
        partial.fetcher_alive(copy)
    assert len(os.listdir("/proc/self/fd")) == before
    assert not flocks._lock_fds


def _makes_its_own_clients(answers) -> None:
    answers.put(storage._proc()["pid"] == os.getpid())


def test_a_worker_forked_while_a_thread_holds_the_client_lock_makes_its_own_clients():
    """The per-process clients' lock (ml.data.storage), held by a prefetch thread making the
    parent's client at the fork, is a new one in the child: its first read does not hang."""
    answers = FORK.SimpleQueue()
    with _held_by_a_thread(storage._lock):
        child = FORK.Process(target=_makes_its_own_clients, args=(answers,), daemon=True)
        child.start()
        child.join(10)
    alive = child.is_alive()
    if alive:
        child.kill()
    assert not alive and answers.get()
