"""shardnet.protocol: the sans-IO core.

Verifiable threshold sharing over edwards25519, master-key sealing, HPKE shard
sealing, threshold unwrap, signed records and their canonical encoding. Nothing
here does IO: time (``now``) and randomness (``rng``) are parameters. This
module names the public surface; everything else is private.
"""

from . import _audit_log as audit_log
from . import _batches as batches
from . import _cosign as cosign
from . import _directory_pull as directory_pull
from . import _epoch as epoch
from . import _epoch_records as epoch_records
from . import _feed as feed
from . import _keyset_fetch as keyset_fetch
from . import _keyset_rules as keyset_rules
from . import _membership as membership
from . import _note as note
from . import _outbox as outbox
from . import _placement as placement
from . import _possession as possession
from . import _release_round as release_round
from . import _tlog as tlog
from . import _triggers as triggers
from . import _wire as wire
from . import _witness as witness
from ._armor import MAX_FILE as MAX_ARMOR_FILE
from ._armor import keyset_from_text, keyset_to_text, share_from_text, share_to_text
from ._audit import AuditChainBroken, AuditEntry, verify_chain
from ._audit import decode_body as decode_audit_body
from ._audit import encode_body as encode_audit_body
from ._audit import make_entry as make_audit_entry
from ._codec import decode, decode_record, encode, want, want_bytes
from ._cosign import CoSigned
from ._errors import (
    DecryptionFailed,
    DuplicateShare,
    InvalidPartial,
    InvalidPoint,
    InvalidShare,
    InvalidShares,
    InvalidSignature,
    MalformedEncoding,
    MixedShares,
    RemoteProtocolError,
    ShardExpired,
    ShardnetError,
    TooFewPartials,
    TooFewShares,
    WrongRecipient,
)
from ._geo import continent_of
from ._keyset import (
    KEMS,
    MAX_MASTER,
    Keyset,
    Recovered,
    Share,
    batch_verify_shares,
    combine_key,
    open_with_unwrapped,
    recover_secret,
    split_key,
    verify_share,
)
from ._membership import Admission, Genesis, JoinRequest, MemberRevocation, Membership
from ._policy import DEFAULT_POLICY, Policy, PolicyError
from ._quorum import Added, ApprovalRule, Equivocation, ReleaseDenied, Tally, decide_release
from ._quorum import State as TallyState
from ._reconstruct import ReconstructionFailed, Session
from ._records import Delivery, Descriptor, Receipt, b58decode, b58encode, peer_id_of, public_key_of
from ._release_round import ReleaseRound
from ._requests import MAX_LIFETIME as MAX_REQUEST_LIFETIME
from ._requests import NoShard, Release, Request, Vote, partial_payload, share_payload
from ._shard import (
    HpkeOpener,
    HpkePrivateKey,
    ShardMeta,
    hpke_seal,
    open_shard,
    peek_shard_meta,
    read_shard_meta,
    reseal_own,
    seal_shard,
)
from ._sign import Signer, open_signed, sign_body, signer_of
from ._unwrap import Partial, combine_partials, partial_decrypt, verify_partial
from ._vss import (
    MAX_SHARES,
    RefreshDeal,
    ReshareDeal,
    check_params,
    refresh_commitments,
    refresh_deal,
    refresh_share,
    reshare_commitments,
    reshare_deal,
    reshare_share,
)

__all__ = [
    "DEFAULT_POLICY", "KEMS", "MAX_ARMOR_FILE", "MAX_MASTER", "MAX_REQUEST_LIFETIME", "MAX_SHARES",
    "AuditChainBroken", "DecryptionFailed", "DuplicateShare", "InvalidPartial", "InvalidPoint",
    "InvalidShare", "InvalidShares", "InvalidSignature", "MalformedEncoding", "MixedShares",
    "PolicyError", "ReconstructionFailed", "ReleaseDenied", "RemoteProtocolError", "ShardExpired",
    "ShardnetError", "TooFewPartials", "TooFewShares", "WrongRecipient",
    "Added", "Admission", "ApprovalRule", "CoSigned", "Genesis", "JoinRequest", "MemberRevocation", "Membership", "AuditEntry", "Delivery", "Descriptor", "Equivocation", "HpkeOpener", "HpkePrivateKey",
    "Keyset", "NoShard", "Partial", "Policy", "Receipt", "Recovered", "RefreshDeal", "Release", "Request",
    "ReleaseRound", "ReshareDeal", "Session", "Signer", "Share", "ShardMeta", "Tally", "TallyState", "Vote",
    "b58decode", "b58encode", "batch_verify_shares", "check_params", "combine_key", "combine_partials",
    "continent_of", "decide_release", "decode", "decode_audit_body", "decode_record", "encode",
    "encode_audit_body", "keyset_from_text", "keyset_to_text", "make_audit_entry", "open_shard",
    "audit_log", "batches", "cosign", "directory_pull", "note", "tlog", "witness", "epoch", "epoch_records", "keyset_fetch", "keyset_rules", "membership", "open_signed", "open_with_unwrapped", "outbox", "partial_decrypt", "partial_payload", "peer_id_of",
    "placement", "possession", "public_key_of", "hpke_seal", "peek_shard_meta", "read_shard_meta", "recover_secret", "reseal_own", "refresh_commitments",
    "refresh_deal", "refresh_share", "release_round", "reshare_commitments", "reshare_deal", "reshare_share", "triggers", "feed",
    "seal_shard", "share_from_text", "share_payload", "share_to_text", "sign_body", "signer_of", "split_key",
    "verify_chain", "verify_partial", "verify_share", "want", "want_bytes", "wire",
]
