"""`Scorer.session`: append, candidates and fork, against batch scores of the whole trajectory."""

import pytest

import padv
from conftest import DEMO, read_jsonl


def test_appended_steps_are_the_batch_steps(toy, demo_scored):
    record = read_jsonl(DEMO)[0]
    messages = record["messages"]
    batch = demo_scored[0]["steps"]
    session = toy.session(messages[:2])
    streamed = []
    for k in range(2, len(messages), 2):
        streamed += session.append(messages[k:k + 2])
    assert len(session) == len(messages) and session.messages == messages
    assert [s["step"] for s in streamed] == [s["step"] for s in batch]
    for a, b in zip(streamed, batch):
        assert a["message"] == b["message"]
        assert abs(a["advantage"] - b["advantage"]) < 1e-5


def test_candidates_and_fork_leave_the_session_alone(toy, demo_scored):
    messages = read_jsonl(DEMO)[0]["messages"]
    session = toy.session(messages[:2])
    fork = session.fork()
    fork.append(messages[2:3])
    assert len(session) == 2 and len(fork) == 3
    steps = fork.candidates([messages[4], {"role": "assistant", "content": "wait"}],
                            observation=messages[3])
    assert len(steps) == 2 and len(fork) == 3
    assert abs(steps[0]["advantage"] - demo_scored[0]["steps"][1]["advantage"]) < 1e-5


def test_a_bad_message_raises_and_changes_nothing(toy):
    messages = read_jsonl(DEMO)[0]["messages"]
    session = toy.session(messages[:2])
    with pytest.raises(padv.PadvError, match="robot"):
        session.append([{"role": "robot", "content": "x"}])
    assert len(session) == 2
    with pytest.raises(padv.PadvError, match="candidate 0"):
        session.candidates([{"role": "user", "content": "not an action"}])


def test_a_step_whose_tool_call_the_template_drops_says_so(toy):
    # The toyworld template writes no tool calls: the step says so, as
    # `Scorer.score` does for the whole record.
    call = {"role": "assistant", "content": "",
            "tool_calls": [{"function": {"name": "look", "arguments": {}}}]}
    session = toy.session([{"role": "user", "content": "hi"}])
    [step] = session.append([call])
    assert "dropped the tool call `look`" in step["warnings"][0]
    plain, dropped = session.candidates([{"role": "assistant", "content": "go"}, call],
                                        observation={"role": "user", "content": "again"})
    assert "warnings" not in plain and "look" in dropped["warnings"][0]


def test_bad_arguments_are_named_and_strings_are_messages(toy):
    messages = read_jsonl(DEMO)[0]["messages"]
    session = toy.session(messages[:2])
    with pytest.raises(padv.PadvError, match=r"^actions\[1\]\.role: unknown role `robot`"):
        session.candidates(["go north", {"role": "robot", "content": "x"}])
    with pytest.raises(padv.PadvError, match=r"^actions\[0\]: expected a message dict or a string"):
        session.candidates([3])
    with pytest.raises(padv.PadvError, match=r"^observation: one message"):
        session.candidates(["go"], observation=[messages[2], messages[2]])
    with pytest.raises(padv.PadvError, match=r"^messages\[0\]: expected a message dict"):
        session.append(["hi"])
    # Strings are an assistant action and a user observation, as over HTTP.
    a = session.candidates(["go north"], observation="you see a door")
    b = session.candidates([{"role": "assistant", "content": "go north"}],
                           observation={"role": "user", "content": "you see a door"})
    assert a == b and len(session) == 2
