"""Jobs that turn raw events into features, in the layout a newcomer can read from the names.

Shared machinery, naming no domain, at this level:

- ``materialize``: offline store -> online store (Feast's incremental materialization);
- ``skew``: online vs offline point-in-time vectors of a FeatureService;
- ``tables``: offline feature tables written the way every Feast offline store reads them;
- ``schema``: the timestamp columns every table has;
- ``streaming``: the stream consumer framework (source, windows, state, consumer, replay).

One folder per domain holds its jobs: ``fraud`` (generate, aggregate, stream events and their
window catalogue) and ``credit`` (loader). ``cli`` is the entry point of them all.
"""
