"""Names for sleep's topics: each topic's distinctive words, by class-based TF-IDF.

A topic is named after the words that its own episodes share and the other episodes lack:

    score(w, topic) = (episodes of the topic containing w / episodes of the topic)
                      * log(1 + episodes / episodes containing w)

The first factor is a term frequency counted once per episode, so one wordy note cannot name its
topic and a word that most of the topic's notes use ranks high; the second is an inverse
frequency over every episode that was clustered (in a topic or not), so a word that everything
uses (a speaker's own name, "today", "meeting") weighs little. A word found in every topic names
none of them when there are several. Ties go to the word that comes first alphabetically, so a
name does not depend on the order the episodes were read.

Words are runs of at least three letters, case-folded, without English function words and the
most generic verbs and adverbs (:data:`STOPWORDS`); a plural ending in "s" counts as its singular
when the singular occurs among the episodes, and the name shows the form the topic uses most.
Words that several of the topic's episodes use come first, then the best of single episodes, up
to ``sleep.clustering.terms`` words. Every word of a name therefore occurs in at least one of the
topic's own episodes.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence

__all__ = ["STOPWORDS", "name_topics", "tokens"]

_WORD = re.compile(r"[^\W\d_]{3,}", re.UNICODE)

# Function words, and the generic verbs, adverbs and units of time that say nothing about a subject.
STOPWORDS = frozenset("""
about above across after again against almost along already also although always among another any anyone
anything are around back because been before behind being below beside besides between both but came can
cannot could did does doing done down during each either else enough even ever every everyone everything
few for from further get gets getting got had has have having her here hers herself him himself his how
however into its itself just last least less like made make makes making many may maybe might mine more
most much must myself near need needs never next nor not nothing now off often once one ones only onto
other others otherwise our ours ourselves out over own per perhaps put quite rather really said same
say says see seen shall she should since some someone something sometimes soon still such take takes
taken than that the their theirs them themselves then there therefore these they thing things this those
though through thus till today tomorrow too toward towards under until upon used using very via want
wants was way ways well went were what whatever when whenever where whether which while who whom whose
why will with within without would yes yesterday yet you your yours yourself yourselves and all let lot
lots new old get use two three four five six seven eight nine ten first second
keep keeps kept check checks start starts started try tried help helps goes going come comes gave give gives
tell told feel feels look looks know think thought left right
time times minute minutes hour hours day days week weeks month months year years morning evening night tonight
""".split())


def tokens(text: str) -> list[str]:
    """The words of ``text`` that can name a topic, case-folded, in order."""
    return [w for w in (m.group(0).casefold() for m in _WORD.finditer(text)) if w not in STOPWORDS]


def _singular(vocabulary: set[str]) -> dict[str, str]:
    """Each word's key: its singular when it ends in a plural "s" and the singular is in the vocabulary."""
    return {w: (w[:-1] if w.endswith("s") and not w.endswith("ss") and w[:-1] in vocabulary else w) for w in vocabulary}


def name_topics(topics: Sequence[Sequence[int]], words: Sequence[Sequence[str]], n: int) -> list[list[str]]:
    """The ``n`` most distinctive words of each topic (a topic: positions in ``words``, each
    episode's :func:`tokens`); every episode counts for the inverse frequency, whether it is in
    a topic or not."""
    key = _singular({w for ws in words for w in ws})
    keys = [{key[w] for w in ws} for ws in words]
    frequency: Counter[str] = Counter()
    for ks in keys:
        frequency.update(ks)
    total = len(words)
    per_topic: list[Counter[str]] = []
    for members in topics:
        counted: Counter[str] = Counter()
        for i in members:
            counted.update(keys[i])
        per_topic.append(counted)
    everywhere: set[str] = set.intersection(*(set(c) for c in per_topic)) if len(per_topic) > 1 else set()
    names = []
    for members, counted in zip(topics, per_topic, strict=True):
        size = max(1, len(members))
        scored = sorted(
            ((-(c / size) * math.log(1.0 + total / frequency[k]), k) for k, c in counted.items() if k not in everywhere)
        )
        # words that several of the topic's episodes use first, then the best of single episodes
        chosen = ([k for _s, k in scored if counted[k] > 1] + [k for _s, k in scored if counted[k] <= 1])[:n]
        surface: Counter[str] = Counter(w for i in members for w in words[i])
        names.append([max((w for w in surface if key[w] == k), key=lambda w: (surface[w], -len(w), w)) for k in chosen])
    return names
