"""Bare faust-streaming: consume N events with take_events and do nothing (a baseline).

Prints one JSON line: {"events": N, "seconds": first event to N-th event}.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time

import faust

BOOTSTRAP, TOPIC, GROUP, N = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
app = faust.App(GROUP, broker=f"kafka://{BOOTSTRAP}", store="memory://", value_serializer="raw",
                key_serializer="raw", broker_session_timeout=6, broker_heartbeat_interval=1,
                topic_disable_leader=True, web_enabled=False, consumer_auto_offset_reset="earliest",
                datadir=tempfile.mkdtemp(), worker_redirect_stdouts=False)  # fmt: skip
source = app.topic(TOPIC, key_serializer="raw", value_serializer="raw", internal=False)
seen = 0
first = None


@app.agent(source)
async def consume(stream):
    global seen, first
    async for events in stream.take_events(1000, within=0.5):
        if first is None:
            first = time.perf_counter()
        seen += len(events)
        if seen >= N:
            print(json.dumps({"events": seen, "seconds": time.perf_counter() - first}), flush=True)
            os._exit(0)


if __name__ == "__main__":
    from faust.worker import Worker

    Worker(app, loglevel="warning", quiet=True, redirect_stdouts=False).execute_from_commandline()
