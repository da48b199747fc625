"""Catalogue search as keyword tokens: what a product stores, what a query asks for.

A product stores ``keywords``: every prefix of every token of its name and description. A
query's words become tokens the same way, and a product matches when each of them is one
of its keywords, that is, when every query word begins some word of its name or
description. "lam" finds "Desk Lamp", "LAMP" and "lámp" find it too; "amp" does not (words
match from their start, not anywhere inside). On MongoDB this is ``$all`` over a multikey
index on ``keywords``: an index look-up, not a scan of the catalogue.

Normalising: compatibility decomposition (NFKD, so "ﬁ" is "fi" and full-width letters are
plain ones), case folding ("Straße" is "strasse"), and accents dropped (nonspacing marks, so
"café" is "cafe"): a shopper who types without accents, as most do on a phone, still finds
the product. A token is a run of letters, digits and marks; anything else separates tokens,
except symbols (emoji, "☕") and wide East Asian characters (CJK ideographs, kana, hangul),
which are each a token of their own: there are no spaces between Japanese words, so each
character is searchable, and a query of several such characters matches products holding
them all.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterator

# A query's words beyond this many are ignored (as before keywords).
MAX_QUERY_WORDS = 10
# Prefixes are stored up to this length; a longer query word is looked up by its first
# MAX_PREFIX characters (so it may also find words that differ only after them).
MAX_PREFIX = 24


def _normalised(text: str) -> str:
    # Case folding can produce characters that decompose further (NFKC_Casefold's recipe);
    # after dropping the marks, NFC puts hangul jamo back into syllables.
    folded = unicodedata.normalize("NFKD", unicodedata.normalize("NFKD", text).casefold())
    kept = "".join(char for char in folded if unicodedata.category(char) != "Mn")
    return unicodedata.normalize("NFC", kept)


def _stands_alone(char: str) -> bool:
    return unicodedata.category(char)[0] == "S" or unicodedata.east_asian_width(char) in "WF"


def tokens(text: str) -> Iterator[str]:
    """The tokens of `text`, normalised, in order (repeats included)."""
    word: list[str] = []
    for char in _normalised(text):
        if _stands_alone(char):
            if word:
                yield "".join(word)
                word = []
            if not char.isspace():
                yield char
        elif unicodedata.category(char)[0] in "LNM":
            word.append(char)
        elif word:
            yield "".join(word)
            word = []
    if word:
        yield "".join(word)


def keywords(name: str, description: str) -> list[str]:
    """What a product with this name and description stores in ``keywords``: every prefix
    (up to MAX_PREFIX characters) of every token, once each, sorted. At most as many as the
    two texts have characters."""
    found: set[str] = set()
    for token in tokens(f"{name}\n{description}"):
        found.update(token[:length] for length in range(1, min(len(token), MAX_PREFIX) + 1))
    return sorted(found)


def query_words(q: str) -> list[str]:
    """The keywords a query `q` asks for (each must match), in order, without repeats: its
    first MAX_QUERY_WORDS tokens, each cut to MAX_PREFIX characters. Empty when `q` has no
    token (blank, or punctuation only)."""
    words: list[str] = []
    for token in tokens(q):
        word = token[:MAX_PREFIX]
        if word not in words:
            words.append(word)
        if len(words) == MAX_QUERY_WORDS:
            break
    return words
