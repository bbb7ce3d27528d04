"""Which language a text is written in, from its share of each language's commonest words.

Feedback texts are long enough (dozens of words) for function words to decide: each language's short list below
covers a third or more of running text in that language and little of the others. No dependency earns its place
for this one check; a text too short to tell (under MIN_WORDS) is not judged.
"""

from __future__ import annotations

import re

MIN_WORDS = 12
# The share of words a language's list must cover, and by how much it must beat the runner-up, to name it.
MIN_SHARE = 0.12
MIN_MARGIN = 0.04

STOPWORDS: dict[str, frozenset[str]] = {code: frozenset(words.split()) for code, words in {
    "en": "the of and to a in is it that for on with as was are be this by not or have from at an which but "
          "you they we his her their your can has were what there all if would will when so no",
    "de": "der die das und ist nicht ein eine zu den von mit sich des auf für im dem auch es an als wie bei "
          "oder aus wenn sie er wir ich nur noch einen einer hat sind war",
    "fr": "le la les de des et est un une du en que qui dans pour pas au sur ne se ce il elle sont avec plus "
          "par nous vous ou mais cette aux leur être été",
    "es": "el la los las de del y que en un una es por con para no se su al lo como más pero sus le ya o "
          "este esta son entre cuando muy sin sobre también",
    "nl": "de het een en van is dat in te op voor met zijn niet die aan er ook als bij maar om dan wordt "
          "door naar nog wel geen kan hij zij we",
    "da": "og i at er det en til på den af med for som de ikke har et var jeg han hun vi kan fra men om så "
          "skal der også eller",
    "sv": "och i att det som en på är av för med till den har de inte om ett var jag han hon vi kan så men "
          "från eller också skall",
    "it": "il di che e la per un in è non una del della le si con da sono al lo gli dei delle più come ma "
          "anche questo nel alla",
    "pt": "de a o que e do da em um para é com não uma os no se na por mais as dos como mas ao ele das "
          "seu sua ou quando muito",
}.items()}
_WORD = re.compile(r"[^\W\d_]+", re.UNICODE)


def detect_language(text: str) -> str | None:
    """The ISO 639-1 code of `text`'s language among `STOPWORDS`, or None when the text cannot tell."""
    words = [word.lower() for word in _WORD.findall(text)]
    if len(words) < MIN_WORDS:
        return None
    shares = sorted(((sum(word in vocabulary for word in words) / len(words), code)
                     for code, vocabulary in STOPWORDS.items()), reverse=True)
    (best_share, best), (second_share, _) = shares[0], shares[1]
    if best_share < MIN_SHARE or best_share - second_share < MIN_MARGIN:
        return None
    return best
