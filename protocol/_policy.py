"""Keyset release policies: Cedar text that every custodian evaluates on its own.

A keyset carries a Cedar policy. When a requester asks to reconstruct the
keyset, each custodian builds a :class:`RequestContext` from the request and
its own state and calls :meth:`Policy.decide`; it releases its share only when
the decision is ``allowed``. Evaluation is pure (no IO, no clock: ``time`` is an
input), deterministic, and fails closed: a policy that raises an evaluation
error anywhere denies, even where Cedar alone would have allowed.

The Cedar request
-----------------
* principal ``Requester::"<peer id>"`` with attributes ``org`` (String) and
  ``country`` (String, ISO 3166-1 alpha-2, upper case; ``"ZZ"`` = unknown);
* action ``Action::"reconstruct"`` (the only action);
* resource ``Keyset::"<keyset id, lower-case hex>"`` (no attributes);
* context, all computed from :class:`RequestContext`:

  ==================  ========  ===============================================
  ``reason``          String    the requester's stated reason
  ``time``            Long      request time, unix seconds (UTC)
  ``now``             datetime  the same instant, for ``datetime``/``duration``
                                comparisons (``context.now.toTime()`` etc.)
  ``hour``            Long      hour of day, UTC, 0..23
  ``minute``          Long      minute of the hour, 0..59
  ``weekday``         Long      ISO weekday, UTC: 1 = Monday .. 7 = Sunday
  ``approvals``       Long      approvals gathered so far
  ``quorum``          Long      approvals required (at least 1)
  ``threat_level``    Long      the evaluating custodian's threat level, 0..5
  ``threat``          String    its name, see :data:`THREAT_LEVELS`
  ==================  ========  ===============================================

:data:`POLICY_SCHEMA` is this shape as a Cedar schema. A policy is checked
against it once, when :class:`Policy` is built, so a typo (``context.quroum``),
an attribute that does not exist, a type mismatch or an unknown action or
entity type is a :class:`PolicyError` up front instead of a keyset that can
never be reconstructed.

Bounds
------
Policy text can come from anyone who creates a keyset, and Cedar's parser
recurses: a few hundred nested brackets crash the whole process, not just the
call. So before Cedar sees a text, each rule is checked lexically: at most
:data:`MAX_POLICY_BYTES` in all, and per rule at most :data:`MAX_NESTING`
levels of brackets (the ``when { }`` braces count), :data:`MAX_IFS` ``if``
expressions and :data:`MAX_TOKENS` tokens. With these, the deepest accepted
rule parses, validates and evaluates on a 256 KiB thread stack.

Threat levels
-------------
``0 low, 1 guarded, 2 elevated, 3 high, 4 severe, 5 critical``
(:data:`THREAT_LEVELS`, index = level; :data:`THREAT_CRITICAL` = 5).

Default policy
--------------
:data:`DEFAULT_POLICY` permits exactly when ``approvals >= quorum`` and the
evaluating custodian's ``threat_level`` is below 5 (critical): a forbid at
critical overrides the permit. Its text is bound into shards through
:attr:`Policy.digest`, so it must never change (a test pins its digest).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

import cedarpy

__all__ = [
    "DEFAULT_POLICY", "MAX_FIELD_CHARS", "MAX_IFS", "MAX_NESTING", "MAX_POLICY_BYTES",
    "MAX_TOKENS", "POLICY_SCHEMA", "THREAT_CRITICAL", "THREAT_LEVELS",
    "Decision", "Policy", "PolicyError", "RequestContext",
]

MAX_POLICY_BYTES = 64 * 1024
"""Largest accepted policy text, in UTF-8 bytes."""

MAX_FIELD_CHARS = 4096
"""Largest accepted string field of a :class:`RequestContext` (peer id, org, reason...)."""

THREAT_LEVELS: tuple[str, ...] = ("low", "guarded", "elevated", "high", "severe", "critical")
"""Threat level names; the index is the level (0 = low .. 5 = critical)."""

THREAT_CRITICAL = 5

MAX_NESTING = 12
"""Deepest bracket nesting (``(``, ``[``, ``{``) accepted in one rule."""

MAX_IFS = 32
"""Most ``if`` expressions accepted in one rule."""

MAX_TOKENS = 4000
"""Most tokens accepted in one rule (string literals count as one)."""

_MAX_LONG = 2**63 - 1  # Cedar's Long is a signed 64-bit integer
_MAX_TIME = 253402300799  # 9999-12-31T23:59:59Z, the last second a datetime can name

POLICY_SCHEMA = """\
entity Requester = { org: String, country: String };
entity Keyset;
action reconstruct appliesTo {
  principal: Requester,
  resource: Keyset,
  context: {
    reason: String, time: Long, now: datetime, hour: Long, minute: Long, weekday: Long,
    approvals: Long, quorum: Long, threat_level: Long, threat: String
  }
};
"""
"""The Cedar schema (human-readable syntax) every policy is validated against."""

DEFAULT_POLICY = """\
// shardnet default keyset policy, version 1.
// Release a share once the request has gathered its quorum of approvals...
@id("quorum-reached")
permit (principal, action == Action::"reconstruct", resource)
when { context.approvals >= context.quorum };

// ...unless this custodian's threat level is critical (5).
@id("threat-critical")
forbid (principal, action, resource)
when { context.threat_level >= 5 };
"""

_SCHEMA = cedarpy.Schema.from_str(POLICY_SCHEMA)
_ACTION = {"type": "Action", "id": "reconstruct"}
_COUNTRY = re.compile(r"[A-Z]{2}")
_HEX = re.compile(r"(?:[0-9a-f]{2})+")
_FOR_POLICY = re.compile(r"^for policy `[^`]*`, ")
_TOKEN = re.compile(r'""|[A-Za-z_][A-Za-z0-9_]*|[0-9]+|&&|\|\||[=!<>]=|::|\S')
_EFFECT = re.compile(r'\s*(?:@[A-Za-z_][A-Za-z0-9_]*\s*(?:\(\s*""\s*\)\s*)?)*permit\b')


class PolicyError(ValueError):
    """A policy text that is too large, does not parse, or fails validation."""


@dataclass(frozen=True)
class Decision:
    """The outcome of :meth:`Policy.decide`.

    ``reasons`` names the policies that determined the outcome (each one's
    ``@id`` annotation when it has one, else Cedar's positional ``policyN``),
    sorted: the satisfied permits when allowed, the satisfied forbids when a
    forbid denied, and empty when nothing permitted or when the decision failed
    closed on ``errors`` (Cedar's evaluation errors, sorted).
    """

    allowed: bool
    reasons: list[str]
    errors: list[str]


@dataclass(frozen=True)
class RequestContext:
    """Everything one custodian knows about one reconstruction request.

    Checked on construction (``ValueError``/``TypeError``): strings are at most
    :data:`MAX_FIELD_CHARS` characters, ``keyset_id`` is lower-case hex,
    ``requester`` is non-empty, ``requester_country`` is two upper-case letters,
    ``0 <= time <= 253402300799``, ``approvals >= 0``, ``quorum >= 1``, both fit a
    Cedar Long, and ``0 <= threat_level <= 5``.
    """

    keyset_id: str
    requester: str
    requester_org: str
    requester_country: str
    reason: str
    time: int
    approvals: int
    quorum: int
    threat_level: int

    def __post_init__(self) -> None:
        for name in ("keyset_id", "requester", "requester_org", "requester_country", "reason"):
            value = getattr(self, name)
            if not isinstance(value, str):
                raise TypeError(f"{name} must be str, not {type(value).__name__}")
            if len(value) > MAX_FIELD_CHARS:
                raise ValueError(f"{name} is longer than {MAX_FIELD_CHARS} characters")
        for name in ("time", "approvals", "quorum", "threat_level"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise TypeError(f"{name} must be int, not {type(value).__name__}")
        if not _HEX.fullmatch(self.keyset_id):
            raise ValueError(f"keyset_id must be lower-case hex, got {self.keyset_id[:80]!r}")
        if not self.requester:
            raise ValueError("requester (peer id) must not be empty")
        if not _COUNTRY.fullmatch(self.requester_country):
            raise ValueError(
                f"requester_country must be an ISO 3166-1 alpha-2 code in upper case (ZZ if "
                f"unknown), got {self.requester_country[:80]!r}")
        if not 0 <= self.time <= _MAX_TIME:
            raise ValueError(f"time must be unix seconds in 0..{_MAX_TIME}, got {self.time}")
        if not 0 <= self.approvals <= _MAX_LONG:
            raise ValueError(f"approvals must be in 0..2**63-1, got {self.approvals}")
        if not 1 <= self.quorum <= _MAX_LONG:
            raise ValueError(f"quorum must be in 1..2**63-1, got {self.quorum}")
        if not 0 <= self.threat_level <= THREAT_CRITICAL:
            raise ValueError(
                f"threat_level must be in 0..{THREAT_CRITICAL}, got {self.threat_level}")

    def cedar_request(self) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """The Cedar request (principal, action, resource, context) and its entities."""
        when = _dt.datetime.fromtimestamp(self.time, tz=_dt.UTC)
        stamp = (f"{when.year:04d}-{when.month:02d}-{when.day:02d}"
                 f"T{when.hour:02d}:{when.minute:02d}:{when.second:02d}Z")
        principal = {"type": "Requester", "id": self.requester}
        resource = {"type": "Keyset", "id": self.keyset_id}
        context = {
            "reason": self.reason,
            "time": self.time,
            "now": {"__extn": {"fn": "datetime", "arg": stamp}},
            "hour": when.hour,
            "minute": when.minute,
            "weekday": when.isoweekday(),
            "approvals": self.approvals,
            "quorum": self.quorum,
            "threat_level": self.threat_level,
            "threat": THREAT_LEVELS[self.threat_level],
        }
        entities = [
            {"uid": principal, "parents": [],
             "attrs": {"org": self.requester_org, "country": self.requester_country}},
            {"uid": resource, "parents": [], "attrs": {}},
        ]
        request = {"principal": principal, "action": _ACTION, "resource": resource,
                   "context": context}
        return request, entities


class Policy:
    """A parsed and validated Cedar policy; build once, :meth:`decide` many times.

    Raises :class:`PolicyError` (one line: what is wrong and, when it can be
    told, at which line) if ``text`` is not a ``str``, is over
    :data:`MAX_POLICY_BYTES` UTF-8 bytes, nests or chains deeper than the
    engine can take safely (see :data:`MAX_NESTING`), does not parse, has a
    template (``?principal``/``?resource``), has no ``permit`` (it could never
    allow), or does not validate against :data:`POLICY_SCHEMA`.
    """

    __slots__ = ("_count", "_digest", "_set", "_text")

    def __init__(self, text: str) -> None:
        if not isinstance(text, str):
            raise PolicyError(f"policy text must be str, not {type(text).__name__}")
        try:
            raw = text.encode("utf-8")
        except UnicodeEncodeError:
            raise PolicyError("policy text is not encodable as UTF-8") from None
        if len(raw) > MAX_POLICY_BYTES:
            raise PolicyError(
                f"policy text is {len(raw)} bytes, over the {MAX_POLICY_BYTES}-byte limit")
        statements = _statements(text)
        for st in statements:  # before Cedar sees it: deep nesting overflows its stack
            problem = _too_complex(st.skeleton)
            if problem:
                raise PolicyError(f"policy starting at line {st.line} {problem}")
        try:
            policy_set = cedarpy.PolicySet.from_str(text)
        except ValueError as e:
            raise PolicyError(f"policy does not parse: {_parse_error_at(statements, e)}") from None
        if policy_set.templates():
            raise PolicyError(
                "policy has templates (?principal/?resource slots), which are not supported")
        if len(policy_set) == 0:
            raise PolicyError("policy is empty: it has no permit or forbid rule")
        if len(policy_set) != len(statements):  # the scanner must agree with Cedar
            raise PolicyError(f"policy has {len(policy_set)} rules but {len(statements)} "
                              "statements were found; cannot analyse it")
        if not any(_EFFECT.match(st.skeleton) for st in statements):
            raise PolicyError("policy has no permit rule, so it could never allow a reconstruction")
        result = cedarpy.validate_policies(text, _SCHEMA)
        if not result.validation_passed:
            annotations = result.id_annotations_by_policy_id
            msgs = []
            for err in result.errors:
                msg = _one_line(_FOR_POLICY.sub("", err.error))
                pid = err.policy_id
                if pid:
                    label = f"@id({json.dumps(annotations[pid])})" if annotations.get(pid) else pid
                    k = int(pid[6:]) if pid.startswith("policy") and pid[6:].isascii() and pid[6:].isdigit() else -1
                    at = f" (line {statements[k].line})" if 0 <= k < len(statements) else ""
                    msg = f"{label}{at}: {msg}"
                msgs.append(msg)
            extra = f" (+{len(msgs) - 3} more)" if len(msgs) > 3 else ""
            raise PolicyError("policy does not validate: " + "; ".join(msgs[:3]) + extra)
        self._text = text
        self._digest = hashlib.sha256(raw).digest()
        self._set = policy_set
        self._count = len(policy_set)

    @property
    def text(self) -> str:
        """The policy text exactly as given."""
        return self._text

    @property
    def digest(self) -> bytes:
        """SHA-256 of the UTF-8 text (32 bytes): the policy hash bound into shards."""
        return self._digest

    def decide(self, ctx: RequestContext) -> Decision:
        """Evaluate the policy for one request; any evaluation error denies."""
        request, entities = ctx.cedar_request()
        try:
            result = cedarpy.is_authorized(request, self._set, entities)
        except Exception as e:  # fail closed on anything the engine throws
            return Decision(False, [], [f"evaluation failed: {_one_line(str(e))}"])
        diagnostics = result.diagnostics
        errors = sorted(_one_line(m) for m in diagnostics.errors)
        if errors or result.decision is cedarpy.Decision.NoDecision:
            return Decision(False, [], errors or ["no decision"])
        annotations = diagnostics.id_annotations_by_reason
        reasons = sorted({annotations.get(pid) or pid for pid in diagnostics.reasons})
        return Decision(result.decision is cedarpy.Decision.Allow, reasons, [])

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Policy) and other._text == self._text

    def __hash__(self) -> int:
        return hash(self._digest)

    def __repr__(self) -> str:
        return f"Policy(digest={self._digest.hex()[:16]}..., {self._count} rules)"


def _one_line(msg: str) -> str:
    return " ".join(msg.split())


@dataclass(frozen=True)
class _Statement:
    line: int  # 1-based line of its first token
    text: str  # the source, from the end of the previous statement through its ";"
    skeleton: str  # the same with comments dropped and string literals emptied to ""


def _statements(text: str) -> list[_Statement]:
    """``text`` cut after each top-level ``;`` (and an unterminated tail).

    ``//`` comments and ``;`` inside string literals do not cut; pieces of only
    whitespace and comments are dropped. Cedar has no other comment form and no
    other use of ``;``, so on text Cedar accepts this yields one piece per policy.
    """
    out: list[_Statement] = []
    skel: list[str] = []
    line, i, n, begin = 1, 0, len(text), 0
    first: int | None = None  # line of the current piece's first token
    while i < n:
        c = text[i]
        if c == "/" and text.startswith("//", i):
            end = text.find("\n", i)
            i = n if end < 0 else end
            skel.append(" ")
            continue
        if c == "\n":
            line += 1
        elif not c.isspace():
            if first is None:
                first = line
            if c == '"':
                i += 1
                while i < n and text[i] != '"':
                    if text[i] == "\\":
                        i += 1
                    elif text[i] == "\n":
                        line += 1
                    i += 1
                c = '""'
            elif c == ";":
                skel.append(c)
                out.append(_Statement(first, text[begin:i + 1], "".join(skel)))
                begin, first, skel = i + 1, None, []
                i += 1
                continue
        skel.append(c)
        i += 1
    if first is not None:
        out.append(_Statement(first, text[begin:], "".join(skel)))
    return out


def _too_complex(skeleton: str) -> str:
    """Why one statement would risk overflowing Cedar's stack, or "" if it would not.

    Cedar's parser, validator and evaluator recurse: measured with cedarpy
    4.12.2 on a 512 KiB thread stack, about 39 nested brackets, 263 nested
    ``if``s or 8,000 chained ``+``/``.attr`` terms crash the process (SIGSEGV),
    so the limits keep a wide margin (tests run the deepest accepted rule on a
    256 KiB stack; a Linux main thread has 8 MiB). Cedar's evaluator has its own
    recursion guard, which surfaces as an evaluation error (and so a deny).
    """
    tokens = _TOKEN.findall(skeleton)
    if len(tokens) > MAX_TOKENS:
        return f"has {len(tokens)} tokens, over the limit of {MAX_TOKENS} per rule"
    depth = deepest = ifs = 0
    for tok in tokens:
        if tok in "([{":
            depth += 1
            deepest = max(deepest, depth)
        elif tok in ")]}":
            depth -= 1
        elif tok == "if":
            ifs += 1
    if deepest > MAX_NESTING:
        return f"nests brackets {deepest} deep, over the limit of {MAX_NESTING}"
    if ifs > MAX_IFS:
        return f"has {ifs} if-expressions, over the limit of {MAX_IFS} per rule"
    return ""


def _parse_error_at(statements: list[_Statement], error: ValueError) -> str:
    """Cedar's parse error, prefixed with the line of the first statement that
    fails on its own (Cedar's Python binding reports no position)."""
    for st in statements:
        try:
            cedarpy.PolicySet.from_str(st.text)
        except ValueError as e:
            return f"policy starting at line {st.line}: {_one_line(str(e))}"
    return _one_line(str(error))
