"""Credentials in URLs never leave the process: one function masks them wherever a URL (or a
message that may quote one) is printed, logged, stored as a param or tag, or written to a file.

``http://alice:s3cret@host:5000`` becomes ``http://alice:***@host:5000``; a ``password=...``
(``token=``, ``secret=``, ...) query or DSN parameter becomes ``password=***``.
"""

from __future__ import annotations

import re
from typing import Any

MASK = "***"
# scheme://user:password@ -- the password may itself hold '@' (everything up to the last '@'
# before the host's '/' counts), never whitespace or '/'.
_USERINFO = re.compile(r"(?P<head>\b[A-Za-z][A-Za-z0-9+.\-]*://[^\s:/@]*):(?P<pw>[^\s/]*)@")
_KEYWORDS = re.compile(
    r"(?i)(?P<head>\b(?:password|passwd|pwd|sslpassword|token|access_token|secret|api_key)=)"
    r"(?P<pw>[^&\s#;'\"]+)"
)


def mask(text: str) -> str:
    """``text`` with every password in a URL (or ``password=`` parameter) replaced by ***."""
    if not isinstance(text, str) or not text:
        return text
    text = _USERINFO.sub(lambda m: f"{m['head']}:{MASK}@" if m["pw"] else m[0], text)
    return _KEYWORDS.sub(lambda m: f"{m['head']}{MASK}", text)


def mask_tree(value: Any) -> Any:
    """:func:`mask` applied to every string in nested dicts and lists (a config as a dict)."""
    if isinstance(value, str):
        return mask(value)
    if isinstance(value, dict):
        return {k: mask_tree(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(mask_tree(v) for v in value)
    return value
