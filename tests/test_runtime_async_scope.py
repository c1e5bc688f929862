"""``ModelService.ainvoke_model`` belongs to the current cancel scope, as ``submit`` does: a scope
cancelled from another thread cancels the awaited call, which closes its HTTP request."""

import asyncio
import threading

import pytest
from helpers import eventually

from ember._runtime import Cancelled, open_scope

MODEL = "openai:gpt-4o-mini"


def _cancel_when_in_flight(server, scope, count=1):
    """From another thread: cancel ``scope`` once ``count`` requests are at the server."""
    thread = threading.Thread(target=lambda: (server.wait_for_in_flight(count), scope.cancel("stop")), daemon=True)
    thread.start()
    return thread


def test_a_scope_cancelled_from_another_thread_cancels_an_async_call(loopback_models):
    server, service = loopback_models.server, loopback_models.service
    server.latency = 30  # the call would wait this long: only the cancellation ends it

    async def main():
        with open_scope() as scope:
            _cancel_when_in_flight(server, scope)
            with pytest.raises(Cancelled, match="stop"):
                await service.ainvoke_model(MODEL, "What is 2 + 2?")
            assert not scope._futures  # nothing left attached
        return asyncio.current_task().cancelling()

    assert asyncio.run(main()) == 0  # the task is not left half-cancelled
    assert eventually(lambda: server.requests and server.requests[0].client_closed)
    assert eventually(lambda: service.stats.in_flight == 0) and len(server.requests) == 1


def test_a_gather_of_async_calls_is_cancelled_together(loopback_models):
    server, service = loopback_models.server, loopback_models.service
    server.latency = 30

    async def main():
        with open_scope() as scope:
            _cancel_when_in_flight(server, scope, count=3)
            calls = [service.ainvoke_model(MODEL, f"What is {i} + 1?") for i in range(3)]
            return await asyncio.gather(*calls, return_exceptions=True)

    assert all(isinstance(outcome, Cancelled) for outcome in asyncio.run(main()))
    assert eventually(lambda: len(server.requests) == 3 and all(r.client_closed for r in server.requests))


def test_a_finished_async_call_leaves_nothing_attached_and_an_owner_cancel_stays_asyncio(loopback_models):
    server, service = loopback_models.server, loopback_models.service

    async def main():
        with open_scope() as scope:
            assert (await service.ainvoke_model(MODEL, "What is 2 + 2?")).text
            assert not scope._futures
            server.latency = 30
            task = asyncio.ensure_future(service.ainvoke_model(MODEL, "What is 3 + 3?"))
            await asyncio.to_thread(server.wait_for_in_flight, 1)
            task.cancel()  # the task's owner, not the scope
            with pytest.raises(asyncio.CancelledError):
                await task
            assert not scope.cancelled and not scope._futures

    asyncio.run(main())
    assert eventually(lambda: server.requests[-1].client_closed)


def test_an_async_call_in_a_scope_cancelled_already_never_reaches_the_server(loopback_models):
    async def main():
        with open_scope() as scope:
            scope.cancel("gone")
            with pytest.raises(Cancelled, match="gone"):
                await loopback_models.service.ainvoke_model(MODEL, "What is 2 + 2?")

    asyncio.run(main())
    assert loopback_models.server.requests == []


def test_a_stream_iterated_on_the_io_loop_is_cancelled_with_its_scope(loopback_models):
    """On the I/O loop a stream is iterated directly (no future to attach): the scope still reaches it."""
    from ember._runtime import _loop

    server, service = loopback_models.server, loopback_models.service
    server.stream_interval = 30  # the stream starts, then stalls between events

    async def main():
        with open_scope() as scope:
            # The server answers the request (no longer "in flight" there), then stalls mid-stream.
            threading.Thread(target=lambda: eventually(lambda: server.requests) and scope.cancel("stop"),
                             daemon=True).start()
            with pytest.raises(Cancelled, match="stop"):
                async for _ in service.astream(MODEL, "Tell me a long story"):
                    pass

    _loop.submit(main()).result(timeout=10)
    assert eventually(lambda: server.requests[0].client_closed)
    assert eventually(lambda: service.stats.in_flight == 0)
