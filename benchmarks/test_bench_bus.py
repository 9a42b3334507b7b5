"""pytest-benchmark versions of the bus cases (run: pytest benchmarks --benchmark-enable).

Each group moves 1000 messages of 64 B to one subscriber that reads the first byte:
the compiled sync bus against the peers a user would write by hand, in the same run.
``benchmarks/bench_bus.py`` is the full table (payload sizes, 4 subscribers, latency).
"""

import asyncio

import pytest

from hftalloc import MessageBus

N = 1000
TOPIC = "md.quote.AAPL"
PAYLOAD = bytearray(64)


class Sink:
    last = 0


@pytest.mark.benchmark(group="64B-publish-1-subscriber-x1000")
def test_hftalloc_sync_bus(benchmark):
    bus = MessageBus(blocks_per_class=1024)
    sink = Sink()

    def on_msg(msg):
        sink.last = msg.payload[0]

    bus.subscribe(TOPIC, on_msg)
    publish = bus.publish

    def run():
        for _ in range(N):
            publish(TOPIC, PAYLOAD)

    benchmark(run)
    assert bus.stats().delivered >= N and bus.allocator.in_use == 0
    bus.close()


@pytest.mark.benchmark(group="64B-publish-1-subscriber-x1000")
def test_dict_of_callbacks_copying(benchmark):
    sink = Sink()

    def on_data(data):
        sink.last = data[0]

    handlers = {TOPIC: [on_data]}

    def publish(topic, payload):
        data = bytes(payload)
        for callback in handlers.get(topic, ()):
            callback(data)

    def run():
        for _ in range(N):
            publish(TOPIC, PAYLOAD)

    benchmark(run)


@pytest.mark.benchmark(group="64B-publish-1-subscriber-x1000")
def test_asyncio_queue_fanout(benchmark):
    loop = asyncio.new_event_loop()
    sink = Sink()

    async def one_round():
        queue: asyncio.Queue = asyncio.Queue(maxsize=1024)

        async def consume():
            while (item := await queue.get()) is not None:
                sink.last = item[0]

        task = asyncio.create_task(consume())
        for i in range(N):
            await queue.put(bytes(PAYLOAD))
            if i % 64 == 63:
                await asyncio.sleep(0)
        await queue.put(None)
        await task

    try:
        benchmark(lambda: loop.run_until_complete(one_round()))
    finally:
        loop.close()
