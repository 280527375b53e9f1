"""What a valid user id is: the same rule for authenticated requests, events and the CLI."""

from __future__ import annotations

import re
from typing import TypeGuard

MAX_USER_ID_LENGTH = 100

# Unicode category Cc is exactly U+0000–U+001F and U+007F–U+009F; a regex scan is far cheaper per
# call than unicodedata.category() on every character.
_FORBIDDEN_IN_USER_ID = re.compile("[\x00-\x1f\x7f-\x9f{}]")


def is_valid_user_id(value: object) -> TypeGuard[str]:
    """1–100 characters, no control character (category Cc), no `{` or `}` (docs/http-api.md#authentication, docs/events.md#validation)."""
    return (
        isinstance(value, str) and 0 < len(value) <= MAX_USER_ID_LENGTH and _FORBIDDEN_IN_USER_ID.search(value) is None
    )
