"""A stand-in SMS gateway over plain HTTP/1.1 (no dependency), and the client call to it.

`start_gateway()` answers each POST after `delay_s` and fails a `failure_rate` share of them
with 503, so the tasks that call it have real IO to await and real errors to retry.
"""

from __future__ import annotations

import asyncio
import json
import random


class GatewayError(Exception):
    """A transient gateway failure (HTTP 503): worth a retry."""


async def post_sms(port: int, phone: str, text: str) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    body = json.dumps({"to": phone, "text": text}).encode()
    writer.write(
        b"POST /sms HTTP/1.1\r\nHost: gateway\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
        + body
    )
    await writer.drain()
    status_line = await reader.readline()
    writer.close()
    await writer.wait_closed()
    status = int(status_line.split()[1])
    if status != 200:
        raise GatewayError(f"gateway answered {status}")


async def start_gateway(delay_s: float, failure_rate: float) -> tuple[asyncio.Server, int]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        headers = await reader.readuntil(b"\r\n\r\n")
        length = next(
            (
                int(line.split(b":")[1])
                for line in headers.split(b"\r\n")
                if line.lower().startswith(b"content-length")
            ),
            0,
        )
        await reader.readexactly(length)
        await asyncio.sleep(delay_s)
        failed = random.random() < failure_rate
        status = b"503 Service Unavailable" if failed else b"200 OK"
        writer.write(b"HTTP/1.1 " + status + b"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, backlog=1024)
    return server, server.sockets[0].getsockname()[1]
