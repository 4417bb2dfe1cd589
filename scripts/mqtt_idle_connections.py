"""Opens N idle MQTT 3.1.1 connections (TCP + CONNECT -> CONNACK accepted), prints
"held N" once every one is up, then keeps them open until stdin closes or SIGTERM.

A bench helper for scripts/bench-mqtt-connections.sh: the same client for every broker.
Each connection uses a unique client id, clean session, keep-alive KEEP_ALIVE_S (no PINGREQ
is sent, so the broker must not time them out during the measurement: keep it long).

Usage: mqtt_idle_connections.py HOST PORT N [--concurrency C]
"""

import argparse
import asyncio
import os
import struct
import sys
import time

KEEP_ALIVE_S = 3600
CONNECT_TIMEOUT_S = 60


def connect_packet(client_id):
    cid = client_id.encode()
    variable = b"\x00\x04MQTT\x04\x02" + struct.pack(">H", KEEP_ALIVE_S)
    payload = struct.pack(">H", len(cid)) + cid
    body = variable + payload
    assert len(body) < 128
    return bytes([0x10, len(body)]) + body


async def open_one(host, port, client_id, held):
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(connect_packet(client_id))
    await writer.drain()
    connack = await asyncio.wait_for(reader.readexactly(4), CONNECT_TIMEOUT_S)
    if connack[0] != 0x20 or connack[3] != 0:
        raise RuntimeError(f"{client_id}: CONNACK {connack.hex()}")
    held.append(writer)


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("host")
    ap.add_argument("port", type=int)
    ap.add_argument("n", type=int)
    ap.add_argument("--concurrency", type=int, default=200)
    args = ap.parse_args()
    held = []
    start = time.monotonic()
    prefix = "idle-%d-" % os.getpid()
    gate = asyncio.Semaphore(args.concurrency)

    async def bounded(i):
        async with gate:
            await open_one(args.host, args.port, prefix + str(i), held)

    await asyncio.gather(*(bounded(i) for i in range(args.n)))
    print(f"held {len(held)} in {time.monotonic() - start:.1f} s", flush=True)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.read)
    for writer in held:
        writer.close()


if __name__ == "__main__":
    asyncio.run(main())
