"""Streaming features, for any domain: windowed aggregates fresh within a second.

A domain declares its windows as a ``windows.WindowCatalogue`` (fraud:
``feature_pipelines/fraud/windows.py``); this package runs it:

- ``source``: the durable event stream (``EventSource``; Redis Streams by default);
- ``windows``: the window maths and the point-in-time stamps of a row;
- ``state``: each entity's recent events in Redis, idempotent under redelivery;
- ``consumer``: read -> state -> Feast push (online now, offline on a thread) -> acknowledge;
- ``replay``: the consumer's rows for a stored history, in bulk, for the offline store.
"""
