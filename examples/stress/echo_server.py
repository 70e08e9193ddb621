"""A line-echo server over TCP (asyncio, standard library only): each line a client sends
comes back as it was. What a WebSocket echo server does, minus the framing.

    python echo_server.py --port 8765
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError):
        while line := await reader.readline():
            writer.write(line)
            await writer.drain()
    writer.close()


async def _serve(host: str, port: int) -> None:
    server = await asyncio.start_server(_echo, host, port)
    print(f"echo server listening on {host}:{port}", flush=True)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    asyncio.run(_serve(args.host, args.port))


if __name__ == "__main__":
    main()
