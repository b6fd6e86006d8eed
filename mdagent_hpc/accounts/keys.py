"""API keys: random, shown once, stored only as a hash.

A key is `mdk_` and 43 url-safe characters (256 random bits). It is stored as its SHA-256: with that much entropy a
hash cannot be inverted by guessing, so the slow, salted hashes made for passwords (scrypt, bcrypt) add nothing, and
an unsalted hash can be looked up by an index on every request instead of tried against every stored key.
"""

from __future__ import annotations

import hashlib
import secrets

PREFIX = "mdk_"
SHOWN = 12  # characters of a key kept in clear to tell keys apart in listings ("mdk_" and 8 random ones)


def new_key() -> str:
    return PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def key_prefix(key: str) -> str:
    return key[:SHOWN]


def looks_like_key(text: str) -> bool:
    """Cheap shape check before any database lookup."""
    return text.startswith(PREFIX) and 40 <= len(text) <= 64
