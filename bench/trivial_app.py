"""The anchors: what the HTTP stack alone costs, with the service's own server settings.

- ``trivial``: the scoring route's request model on FastAPI and no work (the framework's
  ceiling): the difference to ``POST /v1/transactions/score`` is what the service does per
  request, its own framework use included.
- ``bare``: a raw ASGI app that reads the body and answers a fixed JSON document (the HTTP
  stack's ceiling: server, event loop, HTTP parser).

Both run under uvicorn with the service's settings (uvloop, httptools, access log off).
"""

from __future__ import annotations

import argparse

import uvicorn
from fastapi import FastAPI
from starlette.types import Receive, Scope, Send

from feature_repo.domain import load_domain
from scoring_service.api.domain_api import DomainApi

# The payment domain's request model, as the service builds it from the domain file.
PAYMENTS = DomainApi.build(load_domain("feature_repo/fraud"))
Transaction = PAYMENTS.request


def create_app() -> FastAPI:
    """One route that validates a transaction and answers its id."""
    app = FastAPI(title="Trivial endpoint (framework ceiling)")

    @app.post("/v1/transactions/score")
    async def score(transaction: Transaction) -> dict[str, str]:  # type: ignore[valid-type]
        return {"transaction_id": transaction.transaction_id}  # type: ignore[attr-defined]

    @app.get("/health/ready")
    async def ready() -> dict[str, str]:
        return {"status": "ready"}

    return app


BARE_BODY = b'{"transaction_id":"tx_000000042","score":0.01,"label":"not_fraud"}'
BARE_HEADERS = [
    (b"content-type", b"application/json"),
    (b"content-length", b"%d" % len(BARE_BODY)),
]


async def bare_app(scope: Scope, receive: Receive, send: Send) -> None:
    """Any HTTP request: its body read to the end, then a fixed JSON answer."""
    if scope["type"] != "http":
        return  # lifespan: nothing to start
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False)
    await send({"type": "http.response.start", "status": 200, "headers": BARE_HEADERS})
    await send({"type": "http.response.body", "body": BARE_BODY})


def main() -> None:
    """Serve one of the anchors."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--app", choices=["trivial", "bare"], default="trivial")
    args = parser.parse_args()
    uvicorn.run(
        create_app() if args.app == "trivial" else bare_app,
        host=args.host,
        port=args.port,
        log_config=None,
        access_log=False,
        loop="uvloop",
        http="httptools",
        lifespan="auto" if args.app == "trivial" else "off",
    )


if __name__ == "__main__":
    main()
