"""The memory sampler on real processes: children that allocate known amounts, and what it reports."""

import subprocess
import sys
import textwrap
import time

import psutil
import pytest

from codistill.launch.memory import DRIVER_AND_DESCENDANTS, DRIVER_ONLY, PSS, MemorySampler, RunMemory, hosting

MiB = 2**20
# A child holding SIZE MiB of touched pages (bytes of one value: every page is written, none is shared
# with the zero page), optionally forking a grandchild that shares them; it prints "ready" once they are
# resident and exits when its stdin closes. With FREE it drops them after "ready" and says "freed".
CHILD = textwrap.dedent("""
    import os, sys
    size, fork, free = int(sys.argv[1]), sys.argv[2] == "fork", sys.argv[3] == "free"
    block = b"x" * (size << 20)
    if fork and os.fork() == 0:
        sys.stdin.read()
        os._exit(0)
    print("ready", flush=True)
    if free:
        sys.stdin.readline()
        del block
        print("freed", flush=True)
    sys.stdin.read()
""")


class Child:
    def __init__(self, mib: int, fork: bool = False, free: bool = False):
        self.proc = subprocess.Popen([sys.executable, "-c", CHILD, str(mib), "fork" if fork else "-", "free" if free else "-"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout.readline().strip() == "ready"
        self.pid = self.proc.pid

    def say(self, line: str) -> str:
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        return self.proc.stdout.readline().strip()

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=10)


@pytest.fixture
def children():
    made: list[Child] = []
    yield lambda *a, **kw: made.append(Child(*a, **kw)) or made[-1]
    for c in made:
        c.close()


def _idle_total(root: int) -> int:
    sampler = MemorySampler(root, children=True)
    return sampler.sample()


def test_sampler_sees_a_childs_allocation_within_a_margin(children):
    before = MemorySampler(children=True).sample()
    child = children(200)
    with MemorySampler(children=True, interval_s=0.05) as sampler:
        time.sleep(0.3)
    peaks = sampler.peaks()
    assert peaks.measure == PSS  # Linux: smaps_rollup is readable for our own processes
    assert 195 * MiB <= peaks.process_bytes[child.pid] <= 240 * MiB  # 200 MiB plus an interpreter
    assert peaks.total_bytes - before >= 195 * MiB
    assert peaks.samples >= 3


def test_without_children_only_the_root_is_counted(children):
    child = children(200)
    with MemorySampler(children=False, interval_s=0.05) as sampler:
        time.sleep(0.2)
    peaks = sampler.peaks()
    assert child.pid not in peaks.process_bytes
    assert set(peaks.process_bytes) == {psutil.Process().pid}


def test_peak_outlives_the_allocation(children):
    child = children(150, free=True)
    with MemorySampler(child.pid, children=False, interval_s=0.05) as sampler:
        time.sleep(0.2)
        assert child.say("free") == "freed"
        time.sleep(0.2)
        now = sampler.sample()
    assert now < 60 * MiB  # the child gave the pages back...
    assert sampler.peaks().total_bytes >= 145 * MiB  # ...and its peak is still reported


def test_pages_shared_with_a_forked_grandchild_are_counted_once(children):
    child = children(200, fork=True)
    time.sleep(0.2)
    proc = psutil.Process(child.pid)
    grandchild = proc.children()[0]
    rss_sum = proc.memory_info().rss + grandchild.memory_info().rss
    total = _idle_total(child.pid)  # the child and its descendant, by PSS
    assert rss_sum >= 400 * MiB  # RSS counts the shared 200 MiB in both
    assert 195 * MiB <= total <= 260 * MiB


def test_per_hosted_region_divides_each_process_by_its_regions(children):
    two, one = children(200), children(60)
    with MemorySampler(children=True, interval_s=0.05) as sampler:
        time.sleep(0.2)
    peaks = sampler.peaks()
    region = peaks.per_hosted_region(hosting([two.pid, two.pid, one.pid]))
    # the first hosts 2 regions: (200 MiB + interpreter) / 2 beats the second's 60 MiB + interpreter
    assert 100 * MiB <= region <= 120 * MiB
    assert peaks.per_hosted_region({999_999_999: 1}) is None  # a process never seen (another machine's)


def test_run_memory_in_one_process_charges_the_growth_to_its_regions():
    with RunMemory(distributed=False, regions=4, interval_s=0.05) as memory:
        block = b"y" * (200 * MiB)
        time.sleep(0.2)
        memory.placed(object())  # an in-process runner names no processes
    del block
    figures = memory.figures()
    assert figures.scope == DRIVER_ONLY
    assert 48 * MiB <= figures.peak_region_bytes <= 56 * MiB
    assert figures.peak_total_bytes >= 200 * MiB


def test_run_memory_with_processes_reads_the_runners_hosts(children):
    child = children(120)

    class Runner:
        pids = [child.pid] * 3

        def region_pids(self):
            return self.pids

    with RunMemory(distributed=True, regions=3, interval_s=0.05) as memory:
        time.sleep(0.2)
        memory.placed(Runner())
    figures = memory.figures()
    assert figures.scope == DRIVER_AND_DESCENDANTS
    assert 40 * MiB <= figures.peak_region_bytes <= 50 * MiB  # (120 MiB + interpreter) / 3


# Fragmented heap: 300k blocks of 1 KiB through glibc malloc (pymalloc takes only <= 512 bytes), every
# 50th kept, so the freed ones sit below live ones where free() alone cannot give them back.
FRAGMENTED = textwrap.dedent("""
    import psutil
    from codistill.launch.memory import RunMemory, release_free_memory
    me = psutil.Process()
    blocks = [bytes([i % 251]) * 1024 for i in range(300_000)]
    kept = blocks[::50]
    del blocks
    before = me.memory_info().rss
""")


def _fragmented(then: str) -> tuple[int, int]:
    """RSS with the freed blocks still resident, and what `then` prints after."""
    script = FRAGMENTED + textwrap.dedent(then)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True).stdout
    before, after = map(int, out.split())
    return before, after


def test_release_free_memory_hands_freed_heap_back():
    before, after = _fragmented("""
        release_free_memory()
        print(before, me.memory_info().rss)
    """)
    assert before - after > 150 * MiB, (before / MiB, after / MiB)


def test_a_run_does_not_count_what_an_earlier_one_freed():
    before, counted = _fragmented("""
        with RunMemory(distributed=False, regions=1) as memory:
            pass
        print(before, memory.figures().peak_total_bytes)
    """)
    assert before - counted > 150 * MiB, (before / MiB, counted / MiB)
