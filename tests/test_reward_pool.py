"""The reward worker pool: hard per-task time limits, crashed workers replaced, results in
order, work in parallel. Tasks are builtins so that nothing here is mocked."""

import os
import threading
import time

import pytest

from thinkrl.rewards.pool import WorkerPool


@pytest.fixture(scope="module")
def pool():
    p = WorkerPool(workers=2, memory_mb=1024)
    yield p
    p.close()


def test_results_come_back_in_order(pool):
    out = pool.map(pow, [(2, k) for k in range(10)], timeout_s=10)
    assert [o.status for o in out] == ["ok"] * 10
    assert [o.value for o in out] == [2**k for k in range(10)]


def test_a_hanging_task_times_out_and_its_worker_is_replaced(pool):
    before = pool.replaced
    t0 = time.monotonic()
    out = pool.map(exec, [("while True: pass",), ("x = 1",), ("import time; time.sleep(60)",)], timeout_s=1.0)
    took = time.monotonic() - t0
    assert [o.status for o in out] == ["timeout", "ok", "timeout"]
    assert "1 s" in out[0].value
    assert took < 8, took  # the limit, plus starting two fresh workers
    assert pool.replaced == before + 2
    assert pool.map(pow, [(3, 2)], timeout_s=5)[0].value == 9  # the pool still works


def test_a_raising_task_is_an_error_not_a_crash(pool):
    out = pool.map(exec, [("raise ValueError('bad input')",), ("1/0",)], timeout_s=5)
    assert out[0].status == "error" and out[0].value == "ValueError: bad input"
    assert out[1].status == "error" and out[1].value.startswith("ZeroDivisionError")


def test_a_dying_worker_is_an_error_and_is_replaced(pool):
    before = pool.replaced
    out = pool.map(os._exit, [(3,)], timeout_s=5)
    assert out[0].status == "error" and "died" in out[0].value and "3" in out[0].value
    assert pool.replaced == before + 1
    assert pool.map(abs, [(-4,)], timeout_s=5)[0].value == 4


def test_the_memory_limit_stops_a_runaway_allocation(pool):
    out = pool.map(exec, [("x = bytearray(8 * 2**30)",)], timeout_s=10)
    assert out[0].status == "error" and "MemoryError" in out[0].value


def test_tasks_run_in_parallel(pool):
    pool.map(abs, [(1,), (2,)], timeout_s=5)  # both workers started
    t0 = time.monotonic()
    out = pool.map(time.sleep, [(0.5,)] * 4, timeout_s=5)
    assert all(o.status == "ok" for o in out)
    assert time.monotonic() - t0 < 1.6  # 4 × 0.5 s on 2 workers: about 1 s, not 2


def test_time_limits_hold_off_the_main_thread(pool):
    result = {}
    th = threading.Thread(target=lambda: result.setdefault("out", pool.map(exec, [("while True: pass",)], timeout_s=0.5)))
    th.start()
    th.join(timeout=30)
    assert result["out"][0].status == "timeout"


def test_prestarted_workers_start_at_once_and_serve_the_first_map():
    p = WorkerPool(workers=2, memory_mb=1024)
    try:
        p.prestart(1)
        [w] = p._starting
        assert w.proc.poll() is None  # launched before any task, not waited for
        assert [o.value for o in p.map(pow, [(3, 2)], timeout_s=10)] == [9]
        assert [x.proc.pid for x in p._idle] == [w.proc.pid] and not p._starting  # no second process
        p.prestart(5)  # never more than the pool's size in all
        assert len(p._idle) + len(p._starting) == 2
        assert [o.value for o in p.map(pow, [(2, 5), (2, 6)], timeout_s=10)] == [32, 64]
        assert len(p._idle) == 2 and not p._starting
    finally:
        p.close()
    assert not p._idle and not p._starting


def test_weighted_rewards_warm_up_launches_the_math_worker():
    from thinkrl.rewards.combine import WeightedRewards
    from thinkrl.rewards.pool import shared_pool

    pool = shared_pool("math_verify", 1)
    pool.close()  # other tests may have started its worker; a closed pool starts again when used
    assert not pool._idle and not pool._starting
    rewards = WeightedRewards({"accuracy": 1.0, "format": 1.0}, {"accuracy": {"workers": 1}})
    rewards.warm_up()
    assert len(pool._starting) == 1
    # an answer that is not a plain number goes to that worker
    _, per = rewards(["<think>x</think> <answer>6/2</answer>"], [{"answer": "3"}])
    assert per["accuracy"] == [1.0] and len(pool._idle) == 1 and not pool._starting
    WeightedRewards({"accuracy": 1.0}, {"accuracy": {"workers": 0}}).warm_up()  # in-process: nothing to start
    assert len(pool._idle) == 1 and not pool._starting
