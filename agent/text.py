"""Text from outside (argv, stdin, pasted prompts) made safe to log and send: undecodable bytes replaced."""

from __future__ import annotations


def readable_text(text: str | bytes) -> str:
    """``text`` as valid Unicode: bytes that are not UTF-8, and the lone surrogates Python keeps them as, become U+FFFD."""
    if isinstance(text, bytes):
        return text.decode("utf-8", errors="replace")
    try:
        # argv and a C-locale stdin carry undecodable bytes as surrogate escapes: get the bytes back.
        raw = text.encode("utf-8", errors="surrogateescape")
    except UnicodeEncodeError:
        raw = text.encode("utf-8", errors="surrogatepass")  # other lone surrogates (from JSON, a paste)
    return raw.decode("utf-8", errors="replace")
