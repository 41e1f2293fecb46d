"""Decisions to the output stream, at most once per business id (exactly once with redelivery).

One Lua script per batch writes, for each decision, a dedup key (``SET NX EX``) and, only when
that key was new, the decision's entry on the output stream: Redis runs a script whole, so a
decision and its dedup key are written together or not at all. The input entries are
acknowledged after the script returns; an event redelivered after a crash (or taken over from a
dead member) finds its key and yields no second decision.

The keys share the output stream's hash tag (``{<decisions>}:decided:<id>``), so on a Redis
Cluster they live in the output stream's slot and one script may touch them all.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final, cast

import redis.asyncio as aioredis

#: KEYS: the output stream, then one dedup key per decision. ARGV: the dedup keys' lifetime
#: (seconds), the stream's approximate MAXLEN (0: none), then per decision its business id,
#: event id and answer (JSON). Returns 1 per decision written, 0 per one decided before.
_WRITE: Final = """
local ttl = tonumber(ARGV[1])
local maxlen = tonumber(ARGV[2])
local out = {}
for i = 2, #KEYS do
  local a = 3 + (i - 2) * 3
  if redis.call('SET', KEYS[i], ARGV[a + 1], 'NX', 'EX', ttl) then
    if maxlen > 0 then
      redis.call('XADD', KEYS[1], 'MAXLEN', '~', maxlen, '*',
                 'id', ARGV[a], 'event_id', ARGV[a + 1], 'answer', ARGV[a + 2])
    else
      redis.call('XADD', KEYS[1], '*',
                 'id', ARGV[a], 'event_id', ARGV[a + 1], 'answer', ARGV[a + 2])
    end
    out[#out + 1] = 1
  else
    out[#out + 1] = 0
  end
end
return out
"""


@dataclass(frozen=True)
class Decision:
    """One decision: the business id it is keyed by, the input entry's id, the answer (JSON)."""

    business_id: str
    event_id: str
    answer: bytes


class DecisionWriter:
    """Writes decisions to ``stream``, each business id at most once within ``ttl_seconds``."""

    def __init__(
        self,
        client: aioredis.Redis,
        stream: str,
        *,
        ttl_seconds: int = 7 * 24 * 3600,
        max_len: int = 0,
    ) -> None:
        if ttl_seconds < 1:
            raise ValueError("the dedup keys' lifetime must be at least one second")
        self.client = client
        self.stream = stream
        self.ttl_seconds = ttl_seconds
        self.max_len = max_len
        self._script = client.register_script(_WRITE)

    def key(self, business_id: str) -> str:
        """The dedup key of one business id, in the output stream's slot."""
        return f"{{{self.stream}}}:decided:{business_id}"

    async def decided(self, business_ids: Sequence[str]) -> list[bool]:
        """Which of these ids have a decision already (one MGET)."""
        if not business_ids:
            return []
        values = await self.client.mget([self.key(b) for b in business_ids])
        return [v is not None for v in values]

    async def write(self, decisions: Sequence[Decision]) -> list[bool]:
        """Write what was not decided before; True per decision written by this call."""
        if not decisions:
            return []
        keys = [self.stream, *(self.key(d.business_id) for d in decisions)]
        args: list[Any] = [self.ttl_seconds, self.max_len]
        for d in decisions:
            args.extend((d.business_id, d.event_id, d.answer))
        reply = cast(list[int], await self._script(keys=keys, args=args))
        return [bool(flag) for flag in reply]
