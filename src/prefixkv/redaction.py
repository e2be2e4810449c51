"""How secrets inside printed values are shown: not at all.

A URL's user information (``redis://user:PASSWORD@host``) is the one place a secret hides in
an otherwise printable option value; everything that prints such a URL (the server's
start-up banner, tier logs, error messages) prints :func:`redacted_url` of it.
"""

from __future__ import annotations

HIDDEN = "***"


def redacted_url(url: str) -> str:
    """``url`` with the password of its user information replaced by ``***``:
    ``redis://u:pw@h:1/0`` -> ``redis://u:***@h:1/0``. A user name without a password is
    hidden too (it is often a misplaced password: ``redis://pw@h``). Everything between the
    first ``:`` after ``//`` and the *last* ``@`` counts as the password, so a password with
    unescaped ``/``, ``@`` or ``?`` in it is hidden whole, even where the URL is invalid.
    Returns ``url`` unchanged when it has no ``//`` or no ``@`` after it. Pure."""
    scheme, slashes, rest = url.partition("//")
    at = rest.rfind("@")
    if not slashes or at == -1:
        return url
    user, colon, _ = rest[:at].partition(":")
    shown = f"{user}:{HIDDEN}" if colon else HIDDEN
    return f"{scheme}//{shown}{rest[at:]}"
