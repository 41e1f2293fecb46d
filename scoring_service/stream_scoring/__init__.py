"""The model on the event stream: every event scored as it arrives, decisions to an output stream.

    python -m scoring_service stream-score --stream fraud:transactions --decisions fraud:decisions

``runner.StreamScorer`` reads the input stream as a member of a consumer group, scores each
event through the same scoring core as the API (the domain's live deployment, one feature read,
on-demand features, labels, reasons, the prediction log), writes each decision with
``decisions.DecisionWriter`` (keyed by the event's business id, at most once, atomically with
its dedup key) and only then acknowledges. ``windows.WindowStep`` lets the streaming window
state absorb each event (the feature pipelines' logic, reused). Guide: docs/stream-scoring.md.
"""
