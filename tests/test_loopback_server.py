"""The loopback provider server, driven by the real openai and anthropic SDKs.

Everything runs offline against 127.0.0.1. Checks are structural (statuses, exception
classes, counts, records), never wall-clock budgets; the only timing checks are lower
bounds the server itself guarantees (latency, Retry-After gaps).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import subprocess
import sys

import anthropic
import openai
import pytest

from ember.testing import Fault, LoopbackRequest, LoopbackServer, count_tokens, default_responder
from ember.testing.server import parse_fault

USER = [{"role": "user", "content": "hello there friend"}]
ECHO = '[m] You said: "hello there friend"'


def _openai(server: LoopbackServer, **kwargs) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.openai_base_url, api_key="test", max_retries=0, **kwargs)


def _anthropic(server: LoopbackServer, **kwargs) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=server.anthropic_base_url, api_key="test", max_retries=0, **kwargs)


def _asking(text: str) -> LoopbackRequest:
    return LoopbackRequest("openai", "m", [{"role": "user", "content": text}], None, None, (), None, False, {}, 0)


# --- round trips through the real SDKs -------------------------------------------------------


def test_openai_plain_answers_arithmetic_with_word_usage(loopback_server):
    reply = _openai(loopback_server).chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "What is 17 + 25?"}]
    )
    assert reply.choices[0].message.content == "42"
    assert reply.choices[0].finish_reason == "stop"
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens, reply.usage.total_tokens) == (5, 1, 6)
    (record,) = loopback_server.requests
    assert (record.index, record.provider, record.method, record.path) == (0, "openai", "POST", "/v1/chat/completions")
    assert (record.model, record.status, record.fault, record.answer) == ("gpt-4o-mini", 200, None, "42")
    assert record.body["messages"][0]["content"] == "What is 17 + 25?"
    assert record.arrived <= record.finished


def test_openai_stream_with_usage_chunk(loopback_server):
    chunks = list(
        _openai(loopback_server).chat.completions.create(
            model="m", messages=USER, stream=True, stream_options={"include_usage": True}
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == ECHO
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == []
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (3, count_tokens(ECHO))
    assert all(c.usage is None for c in chunks[:-1])
    assert loopback_server.requests[0].stream


def test_openai_stream_without_usage_ends_with_finish_chunk(loopback_server):
    chunks = list(_openai(loopback_server).chat.completions.create(model="m", messages=USER, stream=True))
    assert chunks[-1].choices[0].finish_reason == "stop" and chunks[-1].usage is None


def test_anthropic_plain_merges_system_prompt(loopback_server):
    seen = []
    loopback_server.responder = lambda request: seen.append(request) or "fine thanks"
    reply = _anthropic(loopback_server).messages.create(
        model="claude-x", max_tokens=50, system="be brief", messages=USER, extra_body={"temperature": 0.5}
    )
    assert reply.content[0].text == "fine thanks" and reply.stop_reason == "end_turn"
    assert (reply.usage.input_tokens, reply.usage.output_tokens) == (5, 2)
    (request,) = seen
    assert request.provider == "anthropic" and request.model == "claude-x"
    assert request.messages == [{"role": "system", "content": "be brief"}, *USER]
    assert (request.temperature, request.max_tokens, request.seed) == (0.5, 50, None)


def test_anthropic_stream_event_sequence_and_final_message(loopback_server):
    client = _anthropic(loopback_server)
    events = [e.type for e in client.messages.create(model="m", max_tokens=50, messages=USER, stream=True)]
    deltas = events.count("content_block_delta")
    assert deltas == count_tokens(ECHO)
    assert events == [
        "message_start",
        "content_block_start",
        *["content_block_delta"] * deltas,
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    with client.messages.stream(model="m", max_tokens=50, messages=USER) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == ECHO == final.content[0].text
    assert (final.usage.input_tokens, final.usage.output_tokens, final.stop_reason) == (
        3,
        count_tokens(ECHO),
        "end_turn",
    )


def test_models_list_in_each_format():
    with LoopbackServer(models=["a", "b"]) as server:
        assert [m.id for m in _openai(server).models.list()] == ["a", "b"]
        assert [m.id for m in _anthropic(server).models.list()] == ["a", "b"]
        assert [r.provider for r in server.requests] == ["openai", "anthropic"]


# --- limits: max_tokens and stop --------------------------------------------------------------


def test_max_tokens_truncates_words_and_reports_length(loopback_server):
    reply = _openai(loopback_server).chat.completions.create(model="m", messages=USER, max_tokens=2)
    assert reply.choices[0].message.content == "[m] You"
    assert (reply.choices[0].finish_reason, reply.usage.completion_tokens) == ("length", 2)
    message = _anthropic(loopback_server).messages.create(model="m", max_tokens=3, messages=USER)
    assert (message.content[0].text, message.stop_reason, message.usage.output_tokens) == (
        "[m] You said:",
        "max_tokens",
        3,
    )


def test_stop_sequences_cut_the_answer(loopback_server):
    reply = _openai(loopback_server).chat.completions.create(model="m", messages=USER, stop=["friend", "there"])
    assert reply.choices[0].message.content == '[m] You said: "hello '
    assert reply.choices[0].finish_reason == "stop"
    message = _anthropic(loopback_server).messages.create(
        model="m", max_tokens=50, messages=USER, stop_sequences=["said"]
    )
    assert (message.content[0].text, message.stop_reason, message.stop_sequence) == (
        "[m] You ",
        "stop_sequence",
        "said",
    )


def test_responder_sees_parsed_openai_request(loopback_server):
    seen = []
    loopback_server.responder = lambda request: seen.append(request) or "ok"
    _openai(loopback_server).chat.completions.create(
        model="m",
        messages=[{"role": "system", "content": "sys"}, {"role": "user", "content": [{"type": "text", "text": "hi"}]}],
        temperature=0.2,
        max_completion_tokens=7,
        stop="END",
        seed=3,
        user="u1",
    )
    (request,) = seen
    assert request.messages == [{"role": "system", "content": "sys"}, {"role": "user", "content": "hi"}]
    assert (request.temperature, request.max_tokens, request.stop, request.seed) == (0.2, 7, ("END",), 3)
    assert (request.index, request.stream, request.body["user"], request.last_user_message) == (0, False, "u1", "hi")


@pytest.mark.parametrize(
    ("question", "answer"),
    [
        ("What is 17 + 25?", "42"),
        ("2 + 3 * 4", "14"),
        ("calculate 6 x 7", "42"),
        ("What's 7 / 2?", "3.5"),
        ("10 - -3 =", "13"),
        ("1.5 * 2", "3"),
        ("Meet on 2024-10-22", '[m] You said: "Meet on 2024-10-22"'),
        ("What is 1 / 0?", '[m] You said: "What is 1 / 0?"'),
    ],
)
def test_default_responder(question, answer):
    assert default_responder(_asking(question)) == answer


def test_broken_responder_answers_500_and_keeps_serving(loopback_server):
    loopback_server.responder = lambda request: 1 / 0
    with pytest.raises(openai.InternalServerError, match="ZeroDivisionError"):
        _openai(loopback_server).chat.completions.create(model="m", messages=USER)
    loopback_server.responder = default_responder
    assert _openai(loopback_server).chat.completions.create(model="m", messages=USER).choices[0].message.content == ECHO


def test_invalid_requests_get_provider_errors(loopback_server):
    with pytest.raises(anthropic.BadRequestError, match="max_tokens"):
        _anthropic(loopback_server).post("/v1/messages", body={"model": "m", "messages": USER}, cast_to=object)
    with pytest.raises(openai.NotFoundError):
        _openai(loopback_server).post("/nowhere", body={}, cast_to=object)
    with pytest.raises(openai.BadRequestError, match="messages"):
        _openai(loopback_server).post("/chat/completions", body={"model": "m"}, cast_to=object)
    with pytest.raises(openai.BadRequestError, match="stop"):
        _openai(loopback_server).chat.completions.create(model="m", messages=USER, extra_body={"stop": 3})
    assert [r.status for r in loopback_server.requests] == [400, 404, 400, 400]


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b"NONSENSE\r\n\r\n", 400),
        (b"POST /v1/chat/completions HTTP/1.1\r\ncontent-length: -5\r\n\r\n", 400),
        (b"POST /v1/chat/completions HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n", 501),
    ],
)
def test_unreadable_http_is_answered_and_closed(loopback_server, raw, status):
    async def send():
        reader, writer = await asyncio.open_connection("127.0.0.1", loopback_server.port)
        writer.write(raw)
        response = await reader.read()  # the server closes the connection after answering
        writer.close()
        return response

    response = asyncio.run(send())
    assert response.startswith(b"HTTP/1.1 %d " % status) and b"connection: close" in response
    assert loopback_server.requests == []


# --- faults ------------------------------------------------------------------------------------


def _call_openai(server, stream=False, **kwargs):
    reply = _openai(server, **kwargs).chat.completions.create(model="m", messages=USER, stream=stream)
    return list(reply) if stream else reply


def _call_anthropic(server, stream=False, **kwargs):
    reply = _anthropic(server, **kwargs).messages.create(model="m", max_tokens=10, messages=USER, stream=stream)
    return list(reply) if stream else reply


@pytest.mark.parametrize("stream", [False, True])
def test_rate_limit_fault_raises_rate_limit_error_with_retry_after(loopback_server_factory, stream):
    server = loopback_server_factory(faults=[Fault.rate_limit(retry_after=0.5)])
    with pytest.raises(openai.RateLimitError) as caught:
        _call_openai(server, stream)
    assert caught.value.response.headers["retry-after"] == "0.5"
    assert caught.value.response.headers["retry-after-ms"] == "500"
    assert caught.value.code == "rate_limit_exceeded"
    with pytest.raises(anthropic.RateLimitError) as caught:
        _call_anthropic(server, stream)
    assert caught.value.response.headers["retry-after"] == "0.5"
    assert caught.value.body["error"]["type"] == "rate_limit_error"
    assert [(r.status, r.fault) for r in server.requests] == [(429, "rate_limit")] * 2


def test_server_error_fault_raises_internal_server_error(loopback_server_factory):
    server = loopback_server_factory(faults=[Fault.server_error(503, provider="openai"), Fault.server_error(529)])
    with pytest.raises(openai.InternalServerError) as caught:
        _call_openai(server)
    assert caught.value.status_code == 503 and caught.value.type == "server_error"
    with pytest.raises(anthropic.OverloadedError):
        _call_anthropic(server, stream=True)
    assert [r.status for r in server.requests] == [503, 529]


def test_slow_fault_trips_the_client_timeout(loopback_server_factory):
    server = loopback_server_factory(faults=[Fault.slow(delay=30, on=[0, 1])])
    with pytest.raises(openai.APITimeoutError):
        _call_openai(server, timeout=0.2)
    with pytest.raises(anthropic.APITimeoutError):
        _call_anthropic(server, timeout=0.2)
    assert _call_openai(server).choices[0].message.content == ECHO  # index 2 is on time
    assert [r.fault for r in server.requests] == ["slow", "slow", None]


def test_drop_fault_raises_connection_error(loopback_server_factory):
    server = loopback_server_factory(faults=[Fault.drop()])
    with pytest.raises(openai.APIConnectionError):
        _call_openai(server)
    with pytest.raises(anthropic.APIConnectionError):
        _call_anthropic(server, stream=True)
    assert [(r.status, r.fault) for r in server.requests] == [(None, "drop")] * 2


def test_context_length_fault_is_a_bad_request_in_each_format(loopback_server_factory):
    server = loopback_server_factory(faults=[Fault.context_length()])
    with pytest.raises(openai.BadRequestError) as caught:
        _call_openai(server)
    assert caught.value.code == "context_length_exceeded"
    with pytest.raises(anthropic.BadRequestError) as caught:
        _call_anthropic(server)
    assert caught.value.body["error"]["type"] == "invalid_request_error"
    assert caught.value.body["error"]["message"].startswith("prompt is too long")


@pytest.mark.parametrize("stream", [False, True])
def test_malformed_fault_fails_json_decoding(loopback_server_factory, stream):
    server = loopback_server_factory(faults=[Fault.malformed()])
    with pytest.raises(json.JSONDecodeError):
        _call_openai(server, stream)
    with pytest.raises(json.JSONDecodeError):
        _call_anthropic(server, stream)
    assert [(r.status, r.fault) for r in server.requests] == [(200, "malformed")] * 2


def test_faults_on_indexes_then_recover(loopback_server_factory):
    server = loopback_server_factory(faults=[Fault.rate_limit(retry_after=0, on=[0, 1])])
    client = _openai(server)
    for _ in range(2):
        with pytest.raises(openai.RateLimitError):
            client.chat.completions.create(model="m", messages=USER)
    client.chat.completions.create(model="m", messages=USER)
    assert [(r.index, r.fault) for r in server.requests] == [(0, "rate_limit"), (1, "rate_limit"), (2, None)]
    server.reset()  # indexes restart, so the schedule fires again
    with pytest.raises(openai.RateLimitError):
        client.chat.completions.create(model="m", messages=USER)
    assert [r.index for r in server.requests] == [0] and server.stats.total == 1


def test_sdk_retries_honour_retry_after(loopback_server_factory):
    server = loopback_server_factory(faults=[Fault.rate_limit(retry_after=0.3, on=[0])])
    client = openai.OpenAI(base_url=server.openai_base_url, api_key="test", max_retries=1)
    assert client.chat.completions.create(model="m", messages=USER).choices[0].message.content == ECHO
    first, second = server.requests
    assert (first.status, second.status) == (429, 200)
    assert second.arrived - first.finished >= 0.3


def test_rate_faults_are_reproducible_per_seed_and_filtered():
    faults = [Fault.server_error(rate=0.3, provider="anthropic"), Fault.drop(rate=0.2, path="/v1/chat/completions")]

    def failures(seed):
        with LoopbackServer(faults=faults, seed=seed) as server:
            client = _openai(server)
            for _ in range(40):
                with contextlib.suppress(openai.APIConnectionError):
                    client.chat.completions.create(model="m", messages=USER)
            return [r.fault for r in server.requests]

    first = failures(seed=1)
    assert first == failures(seed=1) != failures(seed=2)
    assert set(first) == {"drop", None}  # the anthropic-only fault never fires on OpenAI traffic


def test_fault_validation():
    with pytest.raises(ValueError):
        Fault.drop(rate=0.5, on=[1])
    with pytest.raises(ValueError):
        Fault.server_error(status=404)
    with pytest.raises(ValueError):
        Fault.malformed(rate=1.5)
    with pytest.raises(ValueError):
        Fault.slow(delay=1, provider="cohere")


# --- records, stats, concurrency ---------------------------------------------------------------


def test_records_never_hold_the_api_key():
    with LoopbackServer() as server:
        openai.OpenAI(base_url=server.openai_base_url, api_key="sk-secret-1", max_retries=0).chat.completions.create(
            model="m", messages=USER
        )
        anthropic.Anthropic(base_url=server.url, api_key="sk-secret-2", max_retries=0).messages.create(
            model="m", max_tokens=5, messages=USER
        )
        asyncio.run(_raw_requests(server.port, 1))
        records = server.requests
    assert [r.has_api_key for r in records] == [True, True, False]
    assert "sk-secret" not in repr(records)


def test_latency_is_settable_at_runtime(loopback_server):
    client = _openai(loopback_server)
    client.chat.completions.create(model="m", messages=USER)
    loopback_server.latency = 0.2
    client.chat.completions.create(model="m", messages=USER)
    fast, slow = loopback_server.requests
    assert slow.finished - slow.arrived >= 0.2 > fast.finished - fast.arrived
    with pytest.raises(ValueError):
        loopback_server.latency = -1


def test_max_in_flight_reaches_concurrency():
    async def fifty_calls(server):
        client = openai.AsyncOpenAI(base_url=server.openai_base_url, api_key="test", max_retries=0)
        try:
            return await asyncio.gather(
                *(
                    client.chat.completions.create(model="m", messages=[{"role": "user", "content": f"q{i}"}])
                    for i in range(50)
                )
            )
        finally:
            await client.close()

    with LoopbackServer(latency=0.1) as server:
        replies = asyncio.run(fifty_calls(server))
        stats, records = server.stats, server.requests
    assert sorted(r.choices[0].message.content for r in replies) == sorted(f'[m] You said: "q{i}"' for i in range(50))
    assert (stats.total, stats.in_flight) == (50, 0)
    overlap = max(sum(r.arrived <= s.arrived < r.finished for r in records) for s in records)
    assert stats.max_in_flight == overlap > 1


def test_pause_holds_every_call_in_flight_until_resume():
    async def fifty_held_calls(server):
        client = openai.AsyncOpenAI(base_url=server.openai_base_url, api_key="test", max_retries=0)
        try:
            calls = asyncio.gather(*(client.chat.completions.create(model="m", messages=USER) for _ in range(50)))
            await asyncio.to_thread(server.wait_for_in_flight, 50)
            held = server.stats
            server.resume()
            return held, await calls
        finally:
            await client.close()

    with LoopbackServer(latency=0.1) as server:
        server.pause()
        held, replies = asyncio.run(fifty_held_calls(server))
        stats = server.stats
    assert (held.in_flight, held.max_in_flight, len(replies)) == (50, 50, 50)
    assert (stats.total, stats.in_flight, stats.max_in_flight) == (50, 0, 50)


def test_responder_can_pause_the_server():
    server = LoopbackServer()
    with pytest.raises(RuntimeError):
        server.pause()
    with server:
        server.responder = lambda request: server.pause() or "last one"
        client = _openai(server, timeout=0.3)
        assert client.chat.completions.create(model="m", messages=USER).choices[0].message.content == "last one"
        with pytest.raises(openai.APITimeoutError):
            client.chat.completions.create(model="m", messages=USER)
        assert server.stats.in_flight == 1
        server.resume()


def test_wait_for_in_flight_times_out(loopback_server):
    with pytest.raises(TimeoutError):
        loopback_server.wait_for_in_flight(1, timeout=0.01)


async def _raw_requests(port: int, n: int, server: LoopbackServer | None = None) -> list[int]:
    """Open ``n`` connections first, then send one request on each; the statuses.

    With a paused ``server``, all ``n`` are held in flight at once before it resumes."""
    body = json.dumps({"model": "m", "messages": USER}).encode()
    request = b"POST /v1/chat/completions HTTP/1.1\r\nhost: loopback\r\ncontent-length: %d\r\n\r\n%s" % (
        len(body),
        body,
    )
    connections = await asyncio.gather(*(asyncio.open_connection("127.0.0.1", port) for _ in range(n)))

    async def exchange(reader, writer):
        writer.write(request)
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.startswith(b"content-length"))
        assert json.loads(await reader.readexactly(length))["choices"][0]["message"]["content"] == ECHO
        return int(head.split(b" ")[1])

    try:
        exchanges = asyncio.gather(*(exchange(r, w) for r, w in connections))
        if server is not None:
            await asyncio.to_thread(server.wait_for_in_flight, n, 60)
            server.resume()
        return await exchanges
    finally:
        for _, writer in connections:
            writer.close()


def test_thousand_concurrent_connections_all_answered():
    with LoopbackServer(latency=0.2) as server:
        server.pause()

        async def run():
            statuses = await _raw_requests(server.port, 1000, server)
            return statuses, server.stats  # before the clients close: every connection still open

        statuses, stats = asyncio.run(run())
    assert statuses == [200] * 1000
    assert (stats.total, stats.in_flight, stats.max_in_flight, stats.connections) == (1000, 0, 1000, 1000)


def test_keep_alive_serves_many_requests_on_one_connection(loopback_server):
    client = _openai(loopback_server)
    for _ in range(5):
        client.chat.completions.create(model="m", messages=USER)
    assert loopback_server.stats.connections == 1 and loopback_server.stats.total == 5


# --- CLI and fixtures --------------------------------------------------------------------------


def test_parse_fault_specs():
    assert parse_fault("server_error:status=503,rate=0.05") == Fault.server_error(503, rate=0.05)
    assert parse_fault("rate_limit:retry_after=2,on=0+3") == Fault.rate_limit(2.0, on=[0, 3])
    assert parse_fault("drop:provider=anthropic") == Fault.drop(provider="anthropic")
    for bad in ("explode", "slow:speed=3", "slow:delay=x", "malformed:rate=2"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_fault(bad)


def test_cli_serves_until_terminated():
    process = subprocess.Popen(
        [sys.executable, "-m", "ember.testing.server", "--port", "0", "--latency", "0", "--fault", "rate_limit:on=0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        lines = [process.stdout.readline() for _ in range(3)]
        base_url = lines[1].split("base_url=")[1].strip()
        client = openai.OpenAI(base_url=base_url, api_key="test", max_retries=0)
        with pytest.raises(openai.RateLimitError):
            client.chat.completions.create(model="m", messages=USER)
        assert client.chat.completions.create(model="m", messages=USER).choices[0].message.content == ECHO
    finally:
        process.terminate()
        process.wait(timeout=10)
        process.stdout.close()


def test_server_restart_and_port_conflict():
    server = LoopbackServer().start()
    with pytest.raises(RuntimeError):
        server.start()
    with pytest.raises(OSError):
        LoopbackServer(port=server.port).start()
    server.close()
    server.close()  # idempotent
