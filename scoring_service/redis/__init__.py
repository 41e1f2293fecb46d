"""Fast online reads of Feast's own Redis layout, one concern per module.

- ``codec``: Feast's key and field layout, the packed HMGETs of one read, value decoding;
- ``pipeline``: the asyncio RESP connection (pipelined, with a silence watchdog), the client
  that pools such connections to one Redis server, and its blocking twin;
- ``cluster``: the same interface over a Redis Cluster: commands routed by hash slot, one
  pipeline per master, MOVED and ASK followed, the slot map read again when a node fails;
- ``reader``: ``RedisFeatureReader``, which turns a read's replies into a ``FeatureBatch``
  through ``feature_repo.online.assemble``, and which stores it can serve.
"""
