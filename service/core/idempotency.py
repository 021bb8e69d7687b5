"""What an Idempotency-Key may be: 1 to 200 printable ASCII characters, not starting or ending with
a space (an HTTP header's value is ASCII; an empty key, an unset variable's, would make nothing
idempotent). The API that takes one and the CLI that sends one check it alike."""

from __future__ import annotations

import re

_KEY = re.compile(r"[\x21-\x7e]([\x20-\x7e]{0,198}[\x21-\x7e])?")
IDEMPOTENCY_KEY_RULE = "1 to 200 printable ASCII characters, not starting or ending with a space"


def checked_idempotency_key(key: str) -> str:
    """The key, if it is one; else ValueError saying what one is."""
    if not _KEY.fullmatch(key):
        why = " (an empty key would make nothing idempotent)" if not key.strip() else ""
        raise ValueError(f"{key!r} cannot be an idempotency key: give {IDEMPOTENCY_KEY_RULE}{why}")
    return key
