"""A local stand-in SMS gateway for the sms scenario: prints its port, answers each POST after
100 ms, until killed. `python -m benchmarks.gateway`"""

import asyncio

from examples._gateway import start_gateway


async def main() -> None:
    server, port = await start_gateway(delay_s=0.1, failure_rate=0.0)
    print(port, flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
