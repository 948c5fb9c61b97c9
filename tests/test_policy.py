"""Keyset release policies (shardnet.protocol._policy), against the real cedarpy."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import statistics
import subprocess
import sys
import textwrap
import time

import pytest

from shardnet.protocol._policy import (
    DEFAULT_POLICY,
    MAX_IFS,
    MAX_NESTING,
    MAX_POLICY_BYTES,
    MAX_TOKENS,
    THREAT_CRITICAL,
    THREAT_LEVELS,
    Decision,
    Policy,
    PolicyError,
    RequestContext,
)

KEYSET = "9f" * 16
PEER = "12D3KooWGzh1n5vGqAqNfBqPD7nN5gAmWvMh7kG3Z8Q7hSZ2sXyz"
# Tue 2023-11-14 10:30:00 UTC (ISO weekday 2)
TUESDAY_1030 = 1699957800
# Sat 2023-11-18 10:30:00 UTC (ISO weekday 6)
SATURDAY_1030 = TUESDAY_1030 + 4 * 86400

BASE = RequestContext(
    keyset_id=KEYSET, requester=PEER, requester_org="acme", requester_country="DE",
    reason="scheduled key rotation", time=TUESDAY_1030, approvals=3, quorum=3, threat_level=0,
)


def ctx(**changes: object) -> RequestContext:
    return dataclasses.replace(BASE, **changes)  # type: ignore[arg-type]


# ---------------------------------------------------------------- default policy

# DEFAULT_POLICY's digest is bound into shards: changing one byte of its text
# orphans every shard sealed under it. If this fails, revert the text.
DEFAULT_DIGEST = "71f3cf0fb46fe2fd427d73beaf8201a8f6a0b4f47121a9cc37151aa199d67d07"


def test_default_policy_digest_is_pinned() -> None:
    assert Policy(DEFAULT_POLICY).digest.hex() == DEFAULT_DIGEST


def test_default_allows_with_quorum() -> None:
    d = Policy(DEFAULT_POLICY).decide(BASE)
    assert d == Decision(True, ["quorum-reached"], [])
    assert Policy(DEFAULT_POLICY).decide(ctx(approvals=5)).allowed


def test_default_denies_without_quorum() -> None:
    d = Policy(DEFAULT_POLICY).decide(ctx(approvals=2))
    assert d == Decision(False, [], [])
    assert not Policy(DEFAULT_POLICY).decide(ctx(approvals=0, quorum=1)).allowed


def test_default_denies_at_critical_threat_only() -> None:
    policy = Policy(DEFAULT_POLICY)
    assert THREAT_LEVELS[THREAT_CRITICAL] == "critical"
    for level in range(THREAT_CRITICAL):
        assert policy.decide(ctx(threat_level=level)).allowed, level
    d = policy.decide(ctx(threat_level=THREAT_CRITICAL))
    assert d == Decision(False, ["threat-critical"], [])


# ---------------------------------------------------------------- custom policies

OFFICE = """
// EU requesters, office hours (09:00-17:59 UTC, Monday to Friday), with quorum.
@id("eu-office-hours")
permit (principal, action == Action::"reconstruct", resource)
when {
  ["DE", "FR", "NL"].contains(principal.country) &&
  context.hour >= 9 && context.hour < 18 &&
  context.weekday <= 5 &&
  context.approvals >= context.quorum
};
"""


def test_country_and_office_hours() -> None:
    policy = Policy(OFFICE)
    assert policy.decide(BASE) == Decision(True, ["eu-office-hours"], [])
    assert policy.decide(ctx(requester_country="FR")).allowed
    assert not policy.decide(ctx(requester_country="US")).allowed
    assert not policy.decide(ctx(time=SATURDAY_1030)).allowed  # weekend
    assert not policy.decide(ctx(time=TUESDAY_1030 - 2 * 3600)).allowed  # 08:30
    assert policy.decide(ctx(time=TUESDAY_1030 + 7 * 3600 + 29 * 60)).allowed  # 17:59
    assert not policy.decide(ctx(time=TUESDAY_1030 + 7 * 3600 + 30 * 60)).allowed  # 18:00
    assert not policy.decide(ctx(approvals=2)).allowed


def test_context_exposes_time_fields_and_threat_name() -> None:
    policy = Policy("""
        permit (principal, action, resource) when {
          context.time == 1699957800 && context.hour == 10 && context.minute == 30 &&
          context.weekday == 2 && context.now == datetime("2023-11-14T10:30:00Z") &&
          context.now.toTime() >= duration("9h") && context.threat == "elevated" &&
          principal.org == "acme" && principal == Requester::"PEER" &&
          resource == Keyset::"KEYSET" && context.reason like "*rotation*"
        };""".replace("PEER", PEER).replace("KEYSET", KEYSET))
    assert policy.decide(ctx(threat_level=2)).allowed
    assert not policy.decide(ctx(threat_level=3)).allowed
    assert not policy.decide(ctx(requester_org="evil")).allowed
    assert not policy.decide(ctx(keyset_id="00" * 16)).allowed


def test_forbid_beats_permit() -> None:
    policy = Policy(DEFAULT_POLICY + """
        @id("no-sanctioned")
        forbid (principal, action, resource) when { principal.country == "KP" };
    """)
    assert policy.decide(BASE).allowed
    d = policy.decide(ctx(requester_country="KP"))
    assert d == Decision(False, ["no-sanctioned"], [])
    both = policy.decide(ctx(requester_country="KP", threat_level=5))
    assert both == Decision(False, ["no-sanctioned", "threat-critical"], [])


def test_reasons_fall_back_to_positional_ids() -> None:
    policy = Policy("permit (principal, action, resource);\n"
                    "permit (principal, action, resource) when { context.approvals > 99 };")
    assert policy.decide(BASE).reasons == ["policy0"]


# ---------------------------------------------------------------- fail closed

def test_evaluation_error_denies_even_when_another_permit_holds() -> None:
    # Cedar skips an erroring policy and would still allow on "quorum-reached";
    # decide() fails closed instead.
    policy = Policy(DEFAULT_POLICY + """
        @id("overflows")
        forbid (principal, action, resource)
        when { context.approvals * 9223372036854775807 < 0 };
    """)
    d = policy.decide(BASE)
    assert not d.allowed
    assert d.reasons == []
    assert len(d.errors) == 1 and "overflow" in d.errors[0]
    # no error on this input: the overflow needs approvals >= 2
    assert policy.decide(ctx(approvals=1, quorum=1)).allowed


def test_missing_attribute_is_caught_before_it_could_error() -> None:
    # A missing attribute would be an evaluation error in Cedar; validating
    # against the schema refuses the policy up front.
    with pytest.raises(PolicyError, match=r"policy1 \(line 2\): attribute `clearance`"):
        Policy("permit (principal, action, resource);\n"
               "permit (principal, action, resource) when { principal.clearance > 3 };")
    with pytest.raises(PolicyError, match=r'@id\("typo"\) \(line 2\):.*`quroum`'):
        Policy('\n@id("typo")\npermit (principal, action, resource) '
               'when { context.approvals >= context.quroum };')


# ---------------------------------------------------------------- refused texts

def test_syntax_error_names_the_problem_and_line() -> None:
    text = (DEFAULT_POLICY + '\n// a comment; with "quotes;"\n@id("x;y")\n'
            'permit (principal, action, resource)\n  when { context.approvals >= };\n')
    bad_line = text.splitlines().index('@id("x;y")') + 1
    with pytest.raises(PolicyError) as info:
        Policy(text)
    msg = str(info.value)
    assert "\n" not in msg
    assert msg == ("policy does not parse: "
                   f"policy starting at line {bad_line}: unexpected token `}}`")
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("text, expect", [
    ("permit (principal, action, resource)", "unexpected end of input"),
    ("allow (principal, action, resource);", "invalid policy effect"),
    ('permit (principal, action, resource) when { context.reason == "open };', "line 1"),
    ("", "empty"),
    ("// nothing but a comment\n", "empty"),
    ("forbid (principal, action, resource);", "no permit rule"),
    ("permit (principal == ?principal, action, resource);", "templates"),
    ('permit (principal, action == Action::"read", resource);', "unrecognized action"),
    ("permit (principal, action, resource) when { principal.org == 3 };", "not compatible"),
])
def test_refused_policies(text: str, expect: str) -> None:
    with pytest.raises(PolicyError, match=expect) as info:
        Policy(text)
    assert "\n" not in str(info.value)


def test_size_limit() -> None:
    rule = "permit (principal, action, resource);\n"
    fits = rule + "/" * (MAX_POLICY_BYTES - len(rule))
    assert Policy(fits).decide(BASE).allowed
    with pytest.raises(PolicyError, match="65537 bytes, over the 65536-byte limit"):
        Policy(fits + "/")
    with pytest.raises(PolicyError, match="limit"):  # counted in UTF-8 bytes, not characters
        Policy(rule + "// " + "é" * (MAX_POLICY_BYTES // 2))
    with pytest.raises(PolicyError, match="must be str"):
        Policy(rule.encode())  # type: ignore[arg-type]


# ---------------------------------------------------------------- hostile texts

def when(body: str) -> str:
    return "permit (principal, action, resource) when { " + body + " };"


def test_nesting_and_size_limits_are_checked_before_cedar_parses() -> None:
    # The when-braces are one level, so MAX_NESTING - 1 parentheses fit.
    d = MAX_NESTING - 1
    deep = Policy(when("(" * d + "context.approvals >= context.quorum" + ")" * d))
    assert deep.decide(BASE).allowed
    with pytest.raises(PolicyError, match=f"nests brackets {MAX_NESTING + 1} deep"):
        Policy(when("(" * (d + 1) + "true" + ")" * (d + 1)))
    with pytest.raises(PolicyError, match="nests brackets"):
        Policy(when("[" * MAX_NESTING + "1" + "]" * MAX_NESTING + ".isEmpty()"))
    ifs = "if true then " * MAX_IFS + "true" + " else false" * MAX_IFS
    assert Policy(when(ifs)).decide(BASE).allowed
    with pytest.raises(PolicyError, match=f"{MAX_IFS + 1} if-expressions"):
        Policy(when("if true then " + ifs + " else false"))
    with pytest.raises(PolicyError, match=f"over the limit of {MAX_TOKENS} per rule"):
        Policy(when("context.approvals" + " + 1" * MAX_TOKENS + " > 0"))
    # brackets inside strings and comments are not code
    assert Policy(when('context.reason != "((((((((((((((((((("') + "\n// [[[[[[[[[[[[[[[[[[[[\n")


HOSTILE = [  # each under 64 KiB; each crashes the process if handed straight to Cedar
    when("(" * 1000 + "true" + ")" * 1000),
    when("[" * 1000 + "1" + "]" * 1000 + ".isEmpty()"),
    when("{a:" * 1000 + "1" + "}" * 1000 + " == {}"),
    when("if true then " * 2500 + "true" + " else true" * 2500),
    when("+".join(["1"] * 30000) + " > 0"),
    when("context" + ".a" * 30000 + " == 1"),
]


def test_hostile_policies_are_refused_without_crashing() -> None:
    # In a child process on a 512 KiB thread stack: a guard that let one of these
    # through would kill the child with SIGSEGV instead of raising PolicyError.
    assert all(len(t.encode()) <= MAX_POLICY_BYTES for t in HOSTILE)
    worst_ok = when("(" * (MAX_NESTING - 2) + "if true then " * MAX_IFS
                    + "(context.approvals" + " + 1" * (MAX_TOKENS // 2 - 200) + " > 0)"
                    + " else false" * MAX_IFS + ")" * (MAX_NESTING - 2))
    script = textwrap.dedent("""
        import json, sys, threading
        from shardnet.protocol._policy import Policy, PolicyError, RequestContext
        texts, worst_ok = json.loads(sys.stdin.read())
        out = []
        def run():
            for t in texts:
                try:
                    Policy(t)
                    out.append("accepted")
                except PolicyError as e:
                    out.append(str(e))
            ctx = RequestContext("ab", "peer", "org", "DE", "r", 0, 1, 1, 0)
            out.append(Policy(worst_ok).decide(ctx).allowed)
        threading.stack_size(512 * 1024)
        th = threading.Thread(target=run)
        th.start()
        th.join()
        print(json.dumps(out))
    """)
    proc = subprocess.run([sys.executable, "-c", script], input=json.dumps([HOSTILE, worst_ok]),
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, (proc.returncode, proc.stderr[-2000:])
    results = json.loads(proc.stdout)
    assert len(results) == len(HOSTILE) + 1
    for text, res in zip(HOSTILE, results, strict=False):
        assert res != "accepted" and "limit" in res, (text[:60], res)
    # the deepest accepted shape runs; Cedar's own recursion guard may turn it into
    # an evaluation error, which is a deny, never a crash
    assert results[-1] in (True, False)


# ---------------------------------------------------------------- identity

def test_digest_is_sha256_of_utf8_text_and_stable() -> None:
    text = OFFICE + "// café\n"
    a, b = Policy(text), Policy(text)
    assert a.text == text
    assert a.digest == b.digest == hashlib.sha256(text.encode("utf-8")).digest()
    assert len(a.digest) == 32
    assert a == b and hash(a) == hash(b)
    assert Policy(text + " ").digest != a.digest  # the text, not its meaning, is hashed
    assert Policy(text + " ") != a


def test_decide_is_deterministic() -> None:
    policy = Policy(DEFAULT_POLICY + OFFICE.replace("eu-office-hours", "office"))
    for c in (BASE, ctx(threat_level=5), ctx(approvals=0), ctx(time=SATURDAY_1030)):
        first = policy.decide(c)
        assert all(policy.decide(c) == first for _ in range(50))
        assert Policy(policy.text).decide(c) == first


# ---------------------------------------------------------------- request context

@pytest.mark.parametrize("changes, err", [
    ({"keyset_id": "9F" * 16}, ValueError),
    ({"keyset_id": "abc"}, ValueError),
    ({"keyset_id": ""}, ValueError),
    ({"requester": ""}, ValueError),
    ({"requester_country": "de"}, ValueError),
    ({"requester_country": "DEU"}, ValueError),
    ({"reason": "x" * 4097}, ValueError),
    ({"time": -1}, ValueError),
    ({"time": 253402300800}, ValueError),
    ({"approvals": -1}, ValueError),
    ({"quorum": 0}, ValueError),
    ({"threat_level": 6}, ValueError),
    ({"threat_level": -1}, ValueError),
    ({"approvals": True}, TypeError),
    ({"time": 1.5}, TypeError),
    ({"reason": None}, TypeError),
])
def test_request_context_is_checked(changes: dict[str, object], err: type[Exception]) -> None:
    with pytest.raises(err):
        ctx(**changes)


def test_odd_peer_ids_and_reasons_are_data_not_syntax() -> None:
    odd = 'a"b\\c\n::Requester'
    policy = Policy('permit (principal, action, resource) when { principal == Requester::"x" };')
    sneaky = '"; permit(principal,action,resource);'
    assert not policy.decide(ctx(requester=odd, reason=sneaky)).allowed
    assert Policy(DEFAULT_POLICY).decide(ctx(requester=odd)).allowed


# ---------------------------------------------------------------- latency (reported, not asserted)

def test_decide_latency(capsys: pytest.CaptureFixture[str]) -> None:
    policy = Policy(DEFAULT_POLICY)
    for _ in range(100):
        policy.decide(BASE)
    samples = []
    for _ in range(1000):
        t0 = time.perf_counter()
        policy.decide(BASE)
        samples.append(time.perf_counter() - t0)
    median_us = statistics.median(samples) * 1e6
    with capsys.disabled():
        print(f"\nPolicy.decide median over 1000 calls: {median_us:.1f} us")
