"""Signing and key handling for stored entries."""

from cacheness.storage.security._signing import (
    DEFAULT_SIGNED_FIELDS,
    VALID_SIGNED_FIELDS,
    Signer,
    load_signing_key,
)

__all__ = ["DEFAULT_SIGNED_FIELDS", "VALID_SIGNED_FIELDS", "Signer", "load_signing_key"]
