"""Properties of the catalogue's search keywords (svc_product.search): whatever the text, a
shopper who types a word of a product, or its beginning, in any case and without its
accents, finds it; and what is stored stays bounded."""

from __future__ import annotations

import unicodedata

from hypothesis import given, settings
from hypothesis import strategies as st

from svc_product.search import MAX_PREFIX, MAX_QUERY_WORDS, keywords, query_words, tokens

# Names and descriptions of any characters, and some made of the ones shops really use.
ANY_TEXT = st.text(max_size=300)
# (Less the few whose capital folds to another letter, as the Turkish dotless i (U+0131):
# a shopper typing the capital finds the dotted letter's products instead.)
LATIN = st.text(
    alphabet=st.characters(
        min_codepoint=0x20, max_codepoint=0x24F, exclude_categories=["Cc"]
    ).filter(lambda char: char.upper().casefold() == char.casefold()),
    max_size=120,
)


@settings(max_examples=300)
@given(ANY_TEXT, ANY_TEXT, st.data())
def test_every_word_and_its_beginning_finds_the_product(
    name: str, description: str, data: st.DataObject
) -> None:
    stored = set(keywords(name, description))
    words = list(tokens(f"{name} {description}"))
    if not words:
        assert stored == set()
        return
    word = data.draw(st.sampled_from(words))
    beginning = word[: data.draw(st.integers(1, len(word)))]
    assert set(query_words(word)) <= stored
    assert set(query_words(beginning)) <= stored


@settings(max_examples=300)
@given(ANY_TEXT, ANY_TEXT)
def test_a_stored_keyword_typed_as_a_query_asks_for_itself(name: str, description: str) -> None:
    for keyword in keywords(name, description):
        assert query_words(keyword) == [keyword]


@settings(max_examples=300)
@given(ANY_TEXT, ANY_TEXT)
def test_keywords_are_bounded_sorted_and_plain(name: str, description: str) -> None:
    stored = keywords(name, description)
    assert stored == sorted(set(stored))
    for keyword in stored:
        assert 1 <= len(keyword) <= MAX_PREFIX
        assert not any(char.isspace() for char in keyword)
        assert keyword == keyword.casefold()
    # Each token adds at most MAX_PREFIX keywords.
    assert len(stored) <= MAX_PREFIX * len(list(tokens(f"{name} {description}")))


@settings(max_examples=300)
@given(ANY_TEXT)
def test_a_query_asks_for_at_most_ten_distinct_words(q: str) -> None:
    words = query_words(q)
    assert len(words) <= MAX_QUERY_WORDS
    assert len(set(words)) == len(words)
    assert all(1 <= len(word) <= MAX_PREFIX for word in words)


def _without_accents(text: str) -> str:
    decomposed = unicodedata.normalize("NFD", text)
    return "".join(char for char in decomposed if unicodedata.category(char) != "Mn")


@settings(max_examples=300)
@given(LATIN, LATIN)
def test_case_and_accents_do_not_matter(name: str, description: str) -> None:
    stored = keywords(name, description)
    assert keywords(name.upper(), description.lower()) == stored
    assert keywords(_without_accents(name), _without_accents(description)) == stored


def test_examples() -> None:
    assert query_words("Tasse ☕ für 🐧") == ["tasse", "☕", "fur", "🐧"]
    assert query_words(
        "Straße Café ﬁne \uff21\uff22\uff23"
    )  # full-width ABC == ["strasse", "cafe", "fine", "abc"]
    assert query_words("T-shirt (kid's)") == ["t", "shirt", "kid", "s"]
    assert query_words("日本語") == ["日", "本", "語"]  # no spaces between words: each character
    assert query_words(".* {} $") == ["$"]
    assert query_words(" ".join(f"w{n}" for n in range(20))) == [f"w{n}" for n in range(10)]
    assert keywords("Desk Lamp", "") == ["d", "de", "des", "desk", "l", "la", "lam", "lamp"]
