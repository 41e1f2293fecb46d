"""The framework ceiling: the scoring route's request model, FastAPI and uvicorn, and no work.

Served with the service's own uvicorn settings (uvloop, httptools, access log off), so the
difference to ``POST /v1/transactions/score`` is what the service does per request.
"""

from __future__ import annotations

import argparse

import uvicorn
from fastapi import FastAPI

from scoring_service.schemas import Transaction


def create_app() -> FastAPI:
    """One route that validates a transaction and answers its id."""
    app = FastAPI(title="Trivial endpoint (framework ceiling)")

    @app.post("/v1/transactions/score")
    async def score(transaction: Transaction) -> dict[str, str]:
        return {"transaction_id": transaction.transaction_id}

    @app.get("/health/ready")
    async def ready() -> dict[str, str]:
        return {"status": "ready"}

    return app


def main() -> None:
    """Serve the trivial app."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    uvicorn.run(
        create_app(),
        host=args.host,
        port=args.port,
        log_config=None,
        access_log=False,
        loop="uvloop",
        http="httptools",
    )


if __name__ == "__main__":
    main()
