"""shardnet.protocol: the sans-IO core.

Verifiable threshold sharing over edwards25519, master-key sealing, HPKE shard
sealing, threshold unwrap, signed records and their canonical encoding. Nothing
here does IO: time (``now``) and randomness (``rng``) are parameters. This
module names the public surface; everything else is private.
"""

from . import _wire as wire
from ._armor import keyset_from_text, keyset_to_text, share_from_text, share_to_text
from ._codec import decode, encode
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
from ._shard import HpkePrivateKey, ShardMeta, open_shard, read_shard_meta, seal_shard
from ._sign import open_signed, sign_body
from ._unwrap import Partial, combine_partials, partial_decrypt, verify_partial
from ._vss import (
    MAX_SHARES,
    RefreshDeal,
    ReshareDeal,
    refresh_commitments,
    refresh_deal,
    refresh_share,
    reshare_commitments,
    reshare_deal,
    reshare_share,
)

__all__ = [
    "KEMS", "MAX_MASTER", "MAX_SHARES",
    "DecryptionFailed", "DuplicateShare", "InvalidPartial", "InvalidPoint", "InvalidShare",
    "InvalidShares", "InvalidSignature", "MalformedEncoding", "MixedShares",
    "RemoteProtocolError", "ShardExpired", "ShardnetError", "TooFewPartials", "TooFewShares",
    "WrongRecipient",
    "HpkePrivateKey", "Keyset", "Partial", "Recovered", "RefreshDeal", "ReshareDeal", "Share",
    "ShardMeta",
    "batch_verify_shares", "combine_key", "combine_partials", "decode", "encode",
    "keyset_from_text", "keyset_to_text", "open_shard", "open_signed", "open_with_unwrapped",
    "partial_decrypt", "read_shard_meta", "recover_secret", "refresh_commitments",
    "refresh_deal", "refresh_share", "reshare_commitments", "reshare_deal", "reshare_share",
    "seal_shard", "share_from_text", "share_to_text", "sign_body", "split_key",
    "verify_partial", "verify_share", "wire",
]
