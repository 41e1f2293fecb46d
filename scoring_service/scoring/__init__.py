"""The scorer: a live deployment over one online store, with micro-batching, deadlines,
the circuit breaker and admission."""
