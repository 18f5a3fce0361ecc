"""Async SMS sending: hundreds in flight in one worker, transient failures retried with
exponential backoff and jitter, permanent ones reported."""

from aiotq import App
from examples._gateway import GatewayError, post_sms

app = App("sms")


@app.task(
    autoretry_for=(GatewayError,),  # 503 from the gateway: try again later...
    max_retries=6,  # ...up to 6 times...
    retry_backoff=0.1,  # ...after 0.1, 0.2, 0.4 ... s (capped by retry_backoff_max)
    retry_backoff_max=2.0,
    retry_jitter=True,  # randomised, so a burst of failures does not retry in lockstep
    time_limit=10,
)
async def send_sms(port: int, mobile: str, code: str) -> str:
    await post_sms(port, mobile, f"your code is {code}")
    return f"sent to {mobile}"
