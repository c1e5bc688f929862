"""``ember.models._deadline.Deadline``: ``asyncio.timeout``'s semantics on timers shared by calls
that end at about the same time (the service's per-call timeout)."""

import asyncio

import pytest

from ember.models._deadline import RESOLUTION, Deadline


def test_an_expired_deadline_raises_timeout_error_and_leaves_the_task_uncancelled():
    async def main():
        with pytest.raises(TimeoutError), Deadline(0.02):
            await asyncio.sleep(5)
        return asyncio.current_task().cancelling()

    assert asyncio.run(main()) == 0


def test_a_block_that_ends_in_time_is_not_cancelled_later():
    async def main():
        with Deadline(0.02):
            await asyncio.sleep(0)
        await asyncio.sleep(0.05)  # past the deadline: nothing may cancel this wait
        return "done"

    assert asyncio.run(main()) == "done"


def test_another_cancellation_stays_a_cancelled_error():
    async def victim():
        with Deadline(5):
            await asyncio.sleep(5)

    async def main():
        task = asyncio.ensure_future(victim())
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())


def test_a_cancellation_at_the_deadline_is_not_swallowed():
    async def victim(blocks):
        with Deadline(0.02) as block:
            blocks.append(block)
            await asyncio.sleep(5)

    async def main():
        blocks = []
        task = asyncio.ensure_future(victim(blocks))
        await asyncio.sleep(0)
        # The task's owner cancels it at the very instant its deadline expires it.
        asyncio.get_running_loop().call_at(blocks[0]._index * RESOLUTION, task.cancel)
        with pytest.raises(asyncio.CancelledError):
            await task
        assert blocks[0].expired

    asyncio.run(main())


def test_calls_ending_at_about_the_same_time_share_one_timer():
    async def one():
        with Deadline(60):
            await asyncio.sleep(0)

    async def main():
        loop = asyncio.get_running_loop()
        before = len(loop._scheduled)
        await asyncio.gather(*(one() for _ in range(200)))
        return len(loop._scheduled) - before

    assert asyncio.run(main()) <= 2  # one slot, or two if the burst straddles a slot boundary


@pytest.mark.parametrize("seconds", [None, float("inf")])
def test_no_deadline_never_expires(seconds):
    async def main():
        with Deadline(seconds):
            await asyncio.sleep(0.02)
        return "done"

    assert asyncio.run(main()) == "done"
