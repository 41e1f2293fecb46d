"""Rollout without a person: shadow, canary steps held on live guardrails, promotion or rollback.

A candidate that passed every gate is put in front of live traffic through the scoring service's
admin API, never through its internals (import-linter contract
``orchestration-drives-the-service-over-http``):

1. **Shadow.** The live deployment plus the candidate as a shadow: it scores the answered
   requests off the answer's path. Held until it has scored ``shadow_min_rows`` rows; then its
   label agreement with the answers must reach ``min_agreement``. Its score distribution over the
   stage is the baseline of the canary steps.
2. **Canary.** The candidate as a challenger taking ``weight`` of the traffic (the other
   variants scaled down), for each of ``canary_weights``. Each step is held until the candidate
   answered ``step_min_rows`` rows, then judged on what happened during the step alone (metric
   deltas): the service's non-policy error rate, its deadline misses, the candidate's model time
   p99 against the champion's, the candidate's score PSI against its shadow baseline.
3. **Promotion.** The candidate becomes the champion with the champion's weight; the previous
   champion stays as the first fallback step (it answers what the new one cannot).

A failed guardrail, a refused deployment or a step that does not see enough traffic within
``max_hold_seconds`` puts the deployment that was live before the rollout back at once (``POST
/admin/deployments`` with it) and raises ``RolloutStopped``; every stage, guardrail, promotion and
rollback is a record in the decision log.

The service's metrics are per process: point ``service_url`` at one process (the embedded
default runs one); with several replicas behind a balancer every replica must be reached through
its own address, which this controller does not do yet.
"""

from __future__ import annotations

import json
import math
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from orchestration.decisions import DecisionLog, RunInfo
from orchestration.resources import RolloutRules

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]

# Refusals that are the service failing, not the business policy answering: a client sees them
# as errors. (Validation refusals such as invalid_request are the caller's fault.)
SERVICE_ERRORS = (
    "feature_store_unavailable",
    "model_unavailable",
    "internal_error",
    "overloaded",
    "not_ready",
)
CANDIDATE_NAME = "candidate"


class RolloutStopped(Exception):
    """The rollout stopped and the previous deployment answers again; the message says why."""


class ServiceUnreachable(RolloutStopped):
    """The service's admin API did not answer or refused a call."""


class ServiceClient:
    """The scoring service's admin API and metrics, over HTTP (stdlib only)."""

    def __init__(self, url: str, admin_key: str, timeout: float = 60.0) -> None:
        self.url = url.rstrip("/")
        self.admin_key = admin_key
        self.timeout = timeout

    def _call(self, method: str, path: str, body: object | None = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(
            self.url + path,
            data=data,
            method=method,
            headers={"X-API-Key": self.admin_key, "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                raw = response.read()
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")[:500]
            raise ServiceUnreachable(f"{method} {path} answered {exc.code}: {detail}") from exc
        except (urllib.error.URLError, OSError) as exc:
            raise ServiceUnreachable(f"{method} {self.url}{path} failed: {exc}") from exc
        if path == "/metrics":
            return raw.decode()
        return json.loads(raw) if raw else None

    def deployment(self) -> dict[str, Any]:
        """The live deployment (its spec as JSON)."""
        described = self._call("GET", "/admin/deployments")
        live = described.get("live") if isinstance(described, dict) else None
        if not isinstance(live, dict):
            raise ServiceUnreachable("the service reports no live deployment")
        return live

    def apply(self, spec: Mapping[str, Any]) -> None:
        self._call("POST", "/admin/deployments", dict(spec))

    def metrics(self) -> Samples:
        """Every sample of ``/metrics``: (name, sorted labels) -> value."""
        text = self._call("GET", "/metrics")
        samples: Samples = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                key = (sample.name, tuple(sorted(sample.labels.items())))
                samples[key] = float(sample.value)
        return samples


# --- reading the metrics ---------------------------------------------------------------------


def _sum(samples: Samples, name: str, **labels: str) -> float:
    return sum(
        value
        for (n, found), value in samples.items()
        if n == name and all((k, v) in found for k, v in labels.items())
    )


def _delta(after: Samples, before: Samples, name: str, **labels: str) -> float:
    return _sum(after, name, **labels) - _sum(before, name, **labels)


def _buckets(samples: Samples, name: str, **labels: str) -> dict[float, float]:
    """Cumulative bucket counts of a histogram (summed over other labels), by upper bound."""
    out: dict[float, float] = {}
    for (n, found), value in samples.items():
        if n != f"{name}_bucket" or not all((k, v) in found for k, v in labels.items()):
            continue
        bound = float(dict(found)["le"])
        out[bound] = out.get(bound, 0.0) + value
    return dict(sorted(out.items()))


def _bucket_delta(after: Samples, before: Samples, name: str, **labels: str) -> dict[float, float]:
    a, b = _buckets(after, name, **labels), _buckets(before, name, **labels)
    return {bound: a[bound] - b.get(bound, 0.0) for bound in a}


def quantile(cumulative: Mapping[float, float], q: float) -> float | None:
    """The upper bound of the bucket holding quantile ``q`` (None without observations)."""
    total = cumulative.get(math.inf, 0.0)
    if total <= 0:
        return None
    for bound, count in cumulative.items():
        if count >= q * total:
            return bound
    return math.inf


def psi(expected: Mapping[float, float], actual: Mapping[float, float]) -> float | None:
    """Population stability index between two histograms given as cumulative bucket counts."""

    def shares(cumulative: Mapping[float, float]) -> list[float] | None:
        counts, previous = [], 0.0
        for count in cumulative.values():
            counts.append(count - previous)
            previous = count
        total = sum(counts)
        return [c / total for c in counts] if total > 0 else None

    e, a = shares(expected), shares(actual)
    if e is None or a is None or len(e) != len(a):
        return None
    floor = 1e-4
    return float(
        sum(
            (max(x, floor) - max(y, floor)) * math.log(max(x, floor) / max(y, floor))
            for x, y in zip(a, e, strict=True)
        )
    )


# --- deployments the controller composes ---------------------------------------------------------


def _clean(spec: Mapping[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(dict(spec)))


def with_shadow(live: Mapping[str, Any], candidate: str) -> dict[str, Any]:
    spec = _clean(live)
    spec["name"] = f"rollout {candidate}: shadow"
    spec["shadows"] = [
        *[s for s in spec.get("shadows", []) if s.get("name") != CANDIDATE_NAME],
        {"name": CANDIDATE_NAME, "package": candidate},
    ]
    return spec


def with_canary(live: Mapping[str, Any], candidate: str, weight: float) -> dict[str, Any]:
    """The candidate as a challenger taking ``weight``; the other variants scaled by 1 - weight."""
    spec = _clean(live)
    spec["name"] = f"rollout {candidate}: canary {weight:.0%}"
    scale = 1.0 - weight
    spec["champion"]["weight"] = spec["champion"]["weight"] * scale
    for challenger in spec.get("challengers", []):
        challenger["weight"] = challenger["weight"] * scale
    spec["challengers"] = [
        *spec.get("challengers", []),
        {"name": CANDIDATE_NAME, "package": candidate, "weight": weight},
    ]
    if weight >= 1.0:  # the rest keep a zero weight: the candidate answers everything
        spec["champion"]["weight"] = 0.0
    spec["shadows"] = [s for s in spec.get("shadows", []) if s.get("name") != CANDIDATE_NAME]
    return spec


def promoted(live: Mapping[str, Any], candidate: str) -> dict[str, Any]:
    """The candidate as champion (the champion's weight); the old champion first in fallback."""
    spec = _clean(live)
    previous = spec["champion"]
    spec["name"] = f"{candidate} champion (promoted from {previous['package']})"
    spec["champion"] = {
        **{k: v for k, v in previous.items() if k not in ("package", "ensemble")},
        "package": candidate,
    }
    variants = {v.get("package") for v in spec.get("challengers", [])} | {candidate}
    fallback = [f for f in spec.get("fallback", []) if f.get("package") != previous.get("package")]
    if previous.get("package") and previous["package"] not in variants:
        fallback.insert(0, {"name": "previous-champion", "package": previous["package"]})
    spec["fallback"] = fallback
    spec["shadows"] = [s for s in spec.get("shadows", []) if s.get("name") != CANDIDATE_NAME]
    return spec


# --- guardrails -------------------------------------------------------------------------------


@dataclass
class Guardrail:
    name: str
    passed: bool
    value: float | None
    limit: float
    message: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "passed": self.passed,
            "value": self.value,
            "limit": self.limit,
            "message": self.message,
        }


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else (math.inf if math.isinf(seconds) else seconds * 1000)


def canary_guardrails(
    before: Samples,
    after: Samples,
    champion_p50: float | None,
    baseline: Mapping[float, float],
    rules: RolloutRules,
    domain: str,
) -> list[Guardrail]:
    """The guardrails of one canary step, on what happened between ``before`` and ``after``."""
    requests = _delta(after, before, "scoring_request_seconds_count", domain=domain)
    errors = sum(_delta(after, before, "scoring_errors_total", code=c) for c in SERVICE_ERRORS)
    error_rate = errors / requests if requests else 0.0
    misses = _delta(after, before, "scoring_outage_answers_total", cause="deadline") + _delta(
        after, before, "scoring_unread_fallback_answers_total", cause="deadline"
    )
    miss_rate = misses / requests if requests else 0.0
    name = "scoring_variant_predict_seconds"
    candidate_p50 = quantile(_bucket_delta(after, before, name, variant=CANDIDATE_NAME), 0.5)
    allowed = max(
        rules.max_model_time_ratio * (champion_p50 or 0.0), rules.model_time_floor_ms / 1000
    )
    request_p99 = quantile(
        _bucket_delta(after, before, "scoring_request_seconds", domain=domain), 0.99
    )
    scores = _bucket_delta(after, before, "scoring_variant_score", variant=CANDIDATE_NAME)
    drift = psi(baseline, scores)
    return [
        Guardrail(
            "error_rate",
            error_rate <= rules.max_error_rate,
            error_rate,
            rules.max_error_rate,
            f"{errors:.0f} service errors in {requests:.0f} scoring requests",
        ),
        Guardrail(
            "deadline_misses",
            miss_rate <= rules.max_deadline_miss_rate,
            miss_rate,
            rules.max_deadline_miss_rate,
            f"{misses:.0f} feature reads past their deadline in {requests:.0f} requests",
        ),
        Guardrail(
            "model_time",
            candidate_p50 is not None and candidate_p50 <= allowed,
            _ms(candidate_p50),
            _ms(allowed) or 0.0,
            f"candidate's model time per call, median <= {_ms(candidate_p50)} ms; the "
            f"champion's alone (shadow stage) <= {_ms(champion_p50)} ms; allowed "
            f"{_ms(allowed):.1f} ms ({rules.max_model_time_ratio:g}x, at least "
            f"{rules.model_time_floor_ms:g} ms)",
        ),
        Guardrail(
            "request_p99",
            request_p99 is not None and request_p99 <= rules.max_request_p99_ms / 1000,
            _ms(request_p99),
            rules.max_request_p99_ms,
            f"p99 of the domain's scoring requests in the step <= {_ms(request_p99)} ms",
        ),
        Guardrail(
            "score_psi",
            drift is not None and drift <= rules.max_score_psi,
            drift,
            rules.max_score_psi,
            "candidate's scores in this step against its shadow scores"
            if drift is not None
            else "no scores to compare",
        ),
    ]


# --- the controller ---------------------------------------------------------------------------


@dataclass
class Rollout:
    """One candidate's way from shadow to champion, or back out."""

    client: ServiceClient
    candidate: str
    domain: str
    rules: RolloutRules
    log: DecisionLog
    run: RunInfo
    sleep: Callable[[float], None] = time.sleep
    monotonic: Callable[[], float] = time.monotonic
    records: list[Any] = field(default_factory=list)

    def _record(
        self, kind: str, subject: str, passed: bool | None, message: str, **extra: Any
    ) -> None:
        self.records.append(
            self.log.record(
                self.run,
                kind,  # type: ignore[arg-type]
                subject,
                passed=passed,
                candidate=self.candidate,
                champion=self.champion,
                message=message,
                **extra,
            )
        )

    def run_all(self) -> dict[str, Any]:
        """Shadow, canary steps, promotion; the deployment promoted. Raises RolloutStopped."""
        self.original = self.client.deployment()
        self.champion = self.original["champion"].get("package")
        self.champion_variant = self.original["champion"]["name"]
        try:
            baseline = self._shadow()
            for weight in self.rules.canary_weights:
                self._canary(weight, baseline)
        except RolloutStopped as stop:
            self._roll_back(str(stop))
            raise
        final = promoted(self.original, self.candidate)
        self._apply(final, "promotion")
        self._record(
            "promotion",
            "champion",
            True,
            f"{self.candidate} promoted to champion after shadow and "
            f"{len(self.rules.canary_weights)} canary steps; {self.champion} kept as the first "
            "fallback step",
            evidence={"deployment": final, "previous": self.original},
        )
        return final

    def _apply(self, spec: Mapping[str, Any], stage: str) -> None:
        try:
            self.client.apply(spec)
        except ServiceUnreachable as exc:
            raise RolloutStopped(f"the service refused the {stage} deployment: {exc}") from exc

    def _hold(self, variant_rows: Callable[[Samples], float], needed: int, stage: str) -> Samples:
        """Wait until the candidate has ``needed`` rows in this stage; the metrics then."""
        started = self.monotonic()
        while True:
            now = self.client.metrics()
            if variant_rows(now) >= needed:
                return now
            if self.monotonic() - started > self.rules.max_hold_seconds:
                raise RolloutStopped(
                    f"{stage}: the candidate saw {variant_rows(now):.0f} of the {needed} rows "
                    f"needed within {self.rules.max_hold_seconds:g} s; too little traffic to judge"
                )
            self.sleep(self.rules.poll_seconds)

    def _shadow(self) -> dict[float, float]:
        spec = with_shadow(self.original, self.candidate)
        before = self.client.metrics()
        self._apply(spec, "shadow")

        def rows(now: Samples) -> float:
            return _delta(now, before, "scoring_variant_requests_total", variant=CANDIDATE_NAME)

        after = self._hold(rows, self.rules.shadow_min_rows, "shadow")
        agreement = _sum(after, "scoring_shadow_label_agreement", shadow=CANDIDATE_NAME)
        baseline = _bucket_delta(after, before, "scoring_variant_score", variant=CANDIDATE_NAME)
        self.champion_p50 = quantile(
            _bucket_delta(
                after, before, "scoring_variant_predict_seconds", variant=self.champion_variant
            ),
            0.5,
        )
        passed = agreement >= self.rules.min_agreement
        guardrail = Guardrail(
            "agreement",
            passed,
            agreement,
            self.rules.min_agreement,
            f"label agreement with the answers over {rows(after):.0f} shadow-scored rows",
        )
        self._record(
            "rollout",
            "shadow",
            passed,
            f"shadow: agreement {agreement:.3f} (at least {self.rules.min_agreement:g})",
            metrics={
                "agreement": agreement,
                "rows": rows(after),
                "champion_model_time_p50_ms": _ms(self.champion_p50),
            },
            evidence={"guardrails": [guardrail.as_dict()], "deployment": spec["name"]},
        )
        if not passed:
            raise RolloutStopped(f"shadow: {guardrail.name} {agreement:.3f} < {guardrail.limit:g}")
        return baseline

    def _canary(self, weight: float, baseline: dict[float, float]) -> None:
        spec = with_canary(self.original, self.candidate, weight)
        before = self.client.metrics()
        self._apply(spec, f"canary {weight:.0%}")

        def rows(now: Samples) -> float:
            return _delta(now, before, "scoring_variant_requests_total", variant=CANDIDATE_NAME)

        after = self._hold(rows, self.rules.step_min_rows, f"canary {weight:.0%}")
        guardrails = canary_guardrails(
            before, after, self.champion_p50, baseline, self.rules, self.domain
        )
        failed = [g for g in guardrails if not g.passed]
        self._record(
            "rollout",
            f"canary {weight:.0%}",
            not failed,
            f"canary {weight:.0%}: "
            + (
                "every guardrail passed"
                if not failed
                else "; ".join(f"{g.name} {g.value} over {g.limit:g} ({g.message})" for g in failed)
            ),
            metrics={g.name: g.value for g in guardrails} | {"rows": rows(after)},
            evidence={"guardrails": [g.as_dict() for g in guardrails], "deployment": spec["name"]},
        )
        if failed:
            raise RolloutStopped(
                f"canary {weight:.0%}: "
                + "; ".join(f"{g.name} failed ({g.message})" for g in failed)
            )

    def _roll_back(self, why: str) -> None:
        """The deployment live before the rollout, at once; a rollback record (the alert)."""
        restored = True
        try:
            self.client.apply(self.original)
        except ServiceUnreachable as exc:
            restored = False
            why = f"{why}; restoring the previous deployment failed too: {exc}"
        self._record(
            "rollback",
            "deployment",
            restored,
            f"rolled back to {self.original.get('name')!r}: {why}",
            evidence={"restored": self.original},
        )


def decisions_of(records: Iterable[Any]) -> list[dict[str, Any]]:
    return [r.model_dump(mode="json") for r in records]
