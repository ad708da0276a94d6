"""The GIL is released while scoring, and Ctrl-C stops a long call."""

import _thread
import threading
import time

import pytest

import padv
from conftest import DEMO, TOY_POLICY, TOY_REFERENCE, close, read_jsonl


def test_python_runs_while_a_scorer_works(toy):
    records = read_jsonl(DEMO)[:64]
    done = threading.Event()
    result = {}

    def work():
        result["scored"] = toy.score(records)
        done.set()

    thread = threading.Thread(target=work)
    ticks = 0
    thread.start()
    while not done.is_set():
        ticks += 1  # only advances while the scoring thread has let go of the GIL
        time.sleep(0.001)
    thread.join()
    assert len(result["scored"]) == 64
    assert ticks > 10


def test_two_threads_score_at_once_and_agree_with_one(demo_cli):
    records = read_jsonl(DEMO)[:32]
    scorers = [padv.Scorer(TOY_POLICY, TOY_REFERENCE, device="cpu", token_agg="sum")
               for _ in range(2)]
    results = [None, None]
    inside = threading.Barrier(2)

    def work(k):
        inside.wait()
        results[k] = scorers[k].score(records)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results[0] == results[1]
    assert close(results[0], demo_cli[:32])


def test_one_scorer_shared_by_threads_gives_each_its_own_results(toy, demo_cli):
    records = read_jsonl(DEMO)
    parts = [records[0:20], records[20:40], records[40:60]]
    results = [None] * 3
    threads = [threading.Thread(target=lambda k=k: results.__setitem__(k, toy.score(parts[k])))
               for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert close(results[0] + results[1] + results[2], demo_cli[:60])


def test_keyboard_interrupt_stops_a_long_call_and_the_scorer_still_works():
    scorer = padv.Scorer(TOY_POLICY, TOY_REFERENCE, device="cpu", token_agg="sum",
                         prefix_cache=False)
    records = read_jsonl(DEMO) * 4  # many slices of 64: far longer than the timer
    timer = threading.Timer(0.3, _thread.interrupt_main)  # as Ctrl-C would
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            scorer.score(records)
    finally:
        timer.cancel()
    assert len(scorer.score(records[:3])) == 3
