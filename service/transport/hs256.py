"""HS256 tokens accepted without PyJWT when nothing about them needs its judgement (docs/http-api.md#authentication).

A new player's first request verifies its token once; through PyJWT that cost about 200 us of CPU at a
moderate request rate (header and payload parsed twice, option merging, claim checks for every option).
`FastHs256.accept` checks a token the way PyJWT would accept it: the plain header `{"alg":"HS256"}` (with
`"typ":"JWT"` at most), a valid signature, a JSON object payload whose integer `exp` has not passed, `iat` and
`nbf` (if present) integers not in the future. Anything else, every failure included, returns None and
the caller asks PyJWT, which gives the documented reason; so this only ever accepts what PyJWT accepts.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from collections.abc import Callable
from typing import Any

import msgspec
from jwt.algorithms import HMACAlgorithm
from jwt.exceptions import InvalidKeyError
from jwt.utils import base64url_decode

_PLAIN_HEADERS = ({"alg": "HS256"}, {"alg": "HS256", "typ": "JWT"})
_COMPACT = re.compile(r"[\w-]+\.[\w-]+\.[\w-]+", re.ASCII)  # three base64url segments, nothing else
_MAX_EXP = 2**53  # beyond it `exp` has no exact float: PyJWT's judgement


class FastHs256:
    """Accepts plain, valid, unexpired HS256 tokens signed with `key`; `is_valid_user_id` checks `sub`."""

    def __init__(self, key: bytes, is_valid_user_id: Callable[[Any], bool]) -> None:
        # The key as PyJWT would use it; a key PyJWT refuses for HMAC (a PEM or SSH key) disables the shortcut.
        try:
            self._key: bytes | None = HMACAlgorithm(HMACAlgorithm.SHA256).prepare_key(key)
        except InvalidKeyError:
            self._key = None
        self._is_valid_user_id = is_valid_user_id
        self._plain_header_segments: dict[str, bool] = {}  # a header segment -> whether it is plain

    def accept(self, token: str) -> tuple[str, float] | None:
        """`(sub, exp)` of a token PyJWT would accept with no issuer or audience configured, else None."""
        if self._key is None or not _COMPACT.fullmatch(token):
            return None
        signing_input, _, signature = token.rpartition(".")
        header_segment, _, payload_segment = signing_input.partition(".")
        if not payload_segment or not self._is_plain_header(header_segment):
            return None
        try:
            expected = hmac.new(self._key, signing_input.encode(), hashlib.sha256).digest()
            if not hmac.compare_digest(base64url_decode(signature), expected):
                return None
            claims = msgspec.json.decode(base64url_decode(payload_segment))
        except (ValueError, msgspec.DecodeError):  # binascii.Error and non-ASCII input are ValueErrors
            return None
        if not isinstance(claims, dict):
            return None
        now = time.time()
        exp = claims.get("exp")
        if type(exp) is not int or not now < exp < _MAX_EXP:
            return None
        for claim in ("iat", "nbf"):
            value = claims.get(claim, 0)
            if type(value) is not int or value > now:
                return None
        user_id = claims.get("sub")
        if not isinstance(user_id, str) or not self._is_valid_user_id(user_id):
            return None
        return user_id, float(exp)

    def _is_plain_header(self, segment: str) -> bool:
        plain = self._plain_header_segments.get(segment)
        if plain is None:
            try:
                plain = msgspec.json.decode(base64url_decode(segment)) in _PLAIN_HEADERS
            except (ValueError, msgspec.DecodeError):
                plain = False
            if len(self._plain_header_segments) < 16:  # issuers write one or two spellings; bound the rest
                self._plain_header_segments[segment] = plain
        return plain
