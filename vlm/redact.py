"""Credentials never leave the process: URIs with userinfo (``http://user:pw@host``) are redacted in what the
platform writes (manifests, config files, MLflow params, log lines).

- :func:`redact` masks the userinfo of every URI inside a string, or inside any dict/list/tuple of strings
  (``http://user:pw@host`` -> ``http://***@host``): for logs, params and manifests a reader sees that
  credentials were there and were hidden.
- :func:`strip_userinfo` drops it (``http://host``): for values that must stay usable, such as the tracking URI
  in a run's ``config.yaml``; the credentials then come from the environment (``MLFLOW_TRACKING_USERNAME`` /
  ``MLFLOW_TRACKING_PASSWORD``, on a cluster from a Secret).
- :class:`RedactingFilter` applies :func:`redact` to every log record a handler emits.

No library does this for arbitrary text; one regular expression for RFC 3986 ``scheme://userinfo@`` suffices.
"""

from __future__ import annotations

import logging
import re
from typing import Any

MASK = "***"
# scheme "://" userinfo "@": userinfo has no '/', '?', '#', '@' or whitespace (RFC 3986 section 3.2.1)
_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.\-]*://)(?P<userinfo>[^/?#@\s\"'<>]+)@")


def has_userinfo(text: str) -> bool:
    return bool(_USERINFO.search(text))


def redact(value: Any) -> Any:
    """``value`` with the userinfo of every URI masked; containers are copied, other types returned as-is."""
    if isinstance(value, str):
        return _USERINFO.sub(lambda m: f"{m['scheme']}{MASK}@", value)
    if isinstance(value, dict):
        return {k: redact(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(redact(v) for v in value)
    return value


def strip_userinfo(value: Any) -> Any:
    """Like :func:`redact`, but removes the userinfo (the URI stays usable, without credentials)."""
    if isinstance(value, str):
        return _USERINFO.sub(lambda m: m["scheme"], value)
    if isinstance(value, dict):
        return {k: strip_userinfo(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(strip_userinfo(v) for v in value)
    return value


class RedactingFilter(logging.Filter):
    """Masks credentials in a record's message and traceback (both are replaced by the redacted text)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if has_userinfo(message):
            record.msg, record.args = redact(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text and has_userinfo(record.exc_text):
            record.exc_text = redact(record.exc_text)
        return True


def scrub_config(data: dict[str, Any], log: logging.Logger | None = None) -> dict[str, Any]:
    """A config dict to write to a file: userinfo stripped from every URI, with a warning when there was some."""
    clean = strip_userinfo(data)
    if clean != data:
        (log or logging.getLogger(__name__)).warning(
            "the config has URIs with credentials; they are not written. Give them through the environment "
            "(MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD, AWS keys; on a cluster from a Secret)")
    return clean
