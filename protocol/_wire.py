"""Every protocol id, gossip topic, frame tag and size cap of the wire, in one place.

Stream protocols carry one request and one reply per stream, each a
length-prefixed frame (``node/_net.py``). A :class:`StreamProtocol` names the
caps both sides enforce: the request frame the server reads at most, the reply
the client accepts at most, and how many requests one peer may have in
progress on it. Gossip topics carry signed records only; :class:`Topic` names
the largest message a validator accepts.

Time: every freshness, TTL and not-after check in the code uses
:data:`MAX_CLOCK_SKEW` as the allowance for clocks that disagree.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Seconds two honest nodes' clocks may disagree by. Every check of a record's
#: time against "now" (freshness windows, not-after, "dated in the future")
#: allows this much and no more.
MAX_CLOCK_SKEW = 60

#: Seconds a custodian's descriptor counts as live after it was last heard (its node
#: republishes it every 10 s by default; at least three republish intervals): past it,
#: the custodian is stale and no placement candidate.
DESCRIPTOR_TTL = 600

#: Seconds a delivery cover stays fresh: a custodian refuses one sent earlier.
DELIVERY_WINDOW = 300

#: Seconds a stream request may take, from opening the stream to the last byte
#: of the reply; servers give a handler as long.
REQUEST_TIMEOUT = 10.0


@dataclass(frozen=True)
class StreamProtocol:
    id: str
    max_request: int  # bytes of the request frame a server reads at most
    max_reply: int  # bytes of the reply payload a client accepts at most
    max_concurrent_per_peer: int  # requests from one peer in progress at once


@dataclass(frozen=True)
class Topic:
    name: str
    max_message: int  # bytes of one gossip message a validator accepts at most


#: Shard delivery; the reply is a signed receipt.
DELIVER = StreamProtocol("/shardnet/deliver/1", 512 * 1024, 4096, 8)
#: Anti-entropy pull of every descriptor the peer knows (the request body is ignored).
#: Served for peers from before DIRECTORY_DELTA, and pulled from them.
DIRECTORY = StreamProtocol("/shardnet/directory/1", 1024, 4 * 1024 * 1024, 4)
#: Anti-entropy pull of the descriptors the puller lacks: the request is a summary of
#: what it holds (``protocol/_directory_pull.py``).
DIRECTORY_DELTA = StreamProtocol("/shardnet/directory/2", 128 * 1024, 4 * 1024 * 1024, 4)
#: Release ask (a request and its approvals); the reply is a list of signed releases. On
#: version 2 the same ask, from a requester that understands a signed no-shard answer
#: (``protocol/_requests.py``): a custodian holding none replies with one.
RELEASE_V1 = StreamProtocol("/shardnet/release/1", 64 * 1024, 64 * 1024, 4)
RELEASE = StreamProtocol("/shardnet/release/2", 64 * 1024, 64 * 1024, 4)
#: Anti-entropy pull of the live requests and their votes.
SYNC = StreamProtocol("/shardnet/sync/1", 1024, 2 * 1024 * 1024, 4)
#: An owner hands a keyset record to an approver that holds no shard.
KEYSET = StreamProtocol("/shardnet/keyset/1", 256 * 1024, 64, 4)

#: Anti-entropy pull of membership records (admissions, revocations, open proposals):
#: the request is a summary of those the puller holds, as for DIRECTORY_DELTA.
MEMBERSHIP = StreamProtocol("/shardnet/membership/1", 128 * 1024, 4 * 1024 * 1024, 4)

#: Proof of possession: an owner's HPKE challenge; the reply is the custodian's signed answer.
POSSESSION = StreamProtocol("/shardnet/possession/1", 4096, 1024, 2)

#: A coordinator that never saw a keyset asks for its record by id; the reply is the record
#: with holders' receipts (``protocol/_keyset_fetch.py``).
KEYSET_FETCH = StreamProtocol("/shardnet/keyset-fetch/1", 256, 512 * 1024, 2)

#: Refresh and reshare rounds (``protocol/_epoch.py``): the coordinator asks for a deal, an
#: echo, a co-signature, or hands over the commit. A request carries the plan, and for a
#: new holder the keyset record, its epoch records and the deals; an echo and a commit also
#: carry the keyset's rule records in force (a new holder seals and releases under them);
#: the reply one signed record.
EPOCH = StreamProtocol("/shardnet/epoch/1", 1024 * 1024, 256 * 1024, 4)

#: A keyset's rules (policy versions, revocation lists): ``["shardnet/rules", 1, ask, body]``.
#: Ask "propose": a proposal short of its quorum, handed to another of the keyset's
#: authorities (proposals never travel on gossip); the reply is b"ok". Ask "pull": anti-
#: entropy, the body a list of ``[keyset id, policy version, its record id, revocations
#: version, its record id, [open proposal ids held]]`` (a window of the keysets the puller
#: knows, within the request size); the reply the records in force that are news to it
#: (a higher version, or the same one's winning rival), then the open proposals it lacks
#: of keysets it is an authority of, within the reply size.
RULES = StreamProtocol("/shardnet/rules/1", 128 * 1024, 4 * 1024 * 1024, 4)

STREAM_PROTOCOLS = (DELIVER, DIRECTORY, DIRECTORY_DELTA, RELEASE_V1, RELEASE, SYNC, KEYSET, MEMBERSHIP, POSSESSION,
                    KEYSET_FETCH, EPOCH, RULES)

#: Signed custodian descriptors.
DIRECTORY_TOPIC = Topic("shardnet/directory/1", 8 * 1024)
#: Signed reconstruction requests.
REQUEST_TOPIC = Topic("shardnet/request/1", 4096)
#: Signed approval votes.
VOTE_TOPIC = Topic("shardnet/vote/1", 1024)

#: Co-signed membership records: admission certificates, membership revocations, and
#: proposals for them that still lack signatures.
MEMBERSHIP_TOPIC = Topic("shardnet/membership/1", 16 * 1024)

#: Policy versions of keysets, complete (K authority signatures) only. A node that does not
#: know the keyset cannot check its authorities, refuses the message and does not relay it.
POLICY_TOPIC = Topic("shardnet/policy/1", 96 * 1024)
#: Revocation lists of keysets, complete only, as for POLICY_TOPIC.
REVOCATION_TOPIC = Topic("shardnet/revocation/1", 96 * 1024)

#: Many complete rule records at once (``protocol/_batches.py``): a bulk revocation is one
#: message per MAX_RULES_BATCH keysets, not one per keyset.
RULES_BATCH_TOPIC = Topic("shardnet/rules-batch/1", 96 * 1024)

TOPICS = (DIRECTORY_TOPIC, REQUEST_TOPIC, VOTE_TOPIC, MEMBERSHIP_TOPIC, POLICY_TOPIC, REVOCATION_TOPIC,
          RULES_BATCH_TOPIC)


def scoped(name: str, network_prefix: str) -> str:
    """A protocol id or topic inside one network: ``/shardnet/deliver/1`` becomes
    ``/shardnet/<prefix>/deliver/1`` (the prefix: the first 8 hex digits of the network
    id), so that nodes of two networks never speak to each other by mistake."""
    lead = "/shardnet/" if name.startswith("/") else "shardnet/"
    if not name.startswith(lead) or len(network_prefix) != 8:
        raise ValueError(f"cannot scope {name!r} to network {network_prefix!r}")
    return f"{lead}{network_prefix}/{name[len(lead):]}"

#: Frame tags: the first field of the msgpack array a stream request carries.
DELIVER_FRAME_TAG = "shardnet/deliver-frame"
RELEASE_ASK_TAG = "shardnet/release-ask"
DIRECTORY_PULL_TAG = "shardnet/directory-pull"
EPOCH_FRAME_TAG = "shardnet/epoch-frame"
RULES_FRAME_TAG = "shardnet/rules"
RULES_ASKS = ("propose", "pull")
#: Seconds between two anti-entropy pulls of keyset rules.
RULES_PULL_EVERY = 60.0
#: The asks of an epoch round (the first field after the tag).
EPOCH_ASKS = ("deal", "echo", "sign", "commit", "rewrap")
#: Seconds a node waits between two rewraps of everything it holds (one asked sooner is
#: answered with receipts of the last, which rewrapped every keyset it holds).
REWRAP_MIN_INTERVAL = 60
#: Epoch records one frame carries at most (a node that missed some catches up from them).
MAX_EPOCH_CHAIN = 64
#: Seconds an epoch round may take, by default and at most.
EPOCH_TIMEOUT = 60
MAX_EPOCH_TIMEOUT = 3600

#: Entries a pull summary (directory, membership) holds, and records its reply carries, at most.
DIRECTORY_PULL_MAX = 4096
#: Open proposals (co-signed records short of their quorum) a node keeps at most.
MAX_PROPOSALS = 256

#: The body a pull request (directory, sync) carries.
PULL = b"pull"
