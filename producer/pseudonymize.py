"""Pseudonymising account identifiers before they leave the producer, for replays of real data.

A keyed HMAC-SHA256, not a plain hash: account numbers are short and structured, so an unkeyed
hash could be reversed by hashing every possible number. The key stays outside the data
(``PSEUDONYM_KEY``); the same key gives the same pseudonym, so per-account features still work.
"""

from __future__ import annotations

import hashlib
import hmac

MIN_KEY_BYTES = 16


class PseudonymKeyError(ValueError):
    pass


def check_key(key: str | bytes | None) -> bytes:
    if not key:
        raise PseudonymKeyError("set PSEUDONYM_KEY to a secret of at least 16 characters")
    raw = key.encode() if isinstance(key, str) else key
    if len(raw) < MIN_KEY_BYTES:
        raise PseudonymKeyError(f"PSEUDONYM_KEY is {len(raw)} bytes; use at least {MIN_KEY_BYTES}")
    return raw


def pseudonymize(account_id: str, key: bytes) -> str:
    """'acct_' + the first 20 hex digits of HMAC-SHA256(key, account_id)."""
    return "acct_" + hmac.new(key, account_id.encode(), hashlib.sha256).hexdigest()[:20]
