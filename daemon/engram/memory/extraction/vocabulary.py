"""What the local extractor knows: entity kinds from spaCy's labels, and the verb and preposition
patterns that name a relation type.

A pattern is ``(verb lemma, preposition)``: the preposition is ``None`` for the verb's direct
object (``Tom founded Nimbus``), a word for a prepositional object (``Carol works at Acme``), or
``"by"`` for a passive verb's agent, which becomes the subject (``Nimbus was founded by Tom``).
Relation types are snake_case; a relation's direction is always subject -> object.
"""

from __future__ import annotations

__all__ = [
    "COPULA_ADJECTIVES",
    "ENTITY_KINDS",
    "AGENT_ACTS",
    "KINSHIP",
    "NAMED_OBJECT",
    "PASSIVE_ONLY",
    "LOCATED_TYPES",
    "PLACE_KINDS",
    "ROLE_NOUNS",
    "VERB_PATTERNS",
]

ENTITY_KINDS: dict[str, str] = {
    "PERSON": "person",
    "ORG": "organisation",
    "GPE": "place",
    "LOC": "place",
    "FAC": "place",
    "NORP": "group",
    "PRODUCT": "product",
    "WORK_OF_ART": "work",
    "EVENT": "event",
    "LANGUAGE": "language",
    "LAW": "document",
}
"""spaCy's NER labels -> concept kinds. Dates, times, numbers and amounts are not concepts."""

PLACE_KINDS = frozenset({"place"})

VERB_PATTERNS: dict[tuple[str, str | None], str] = {
    # work
    ("work", "at"): "works_at",
    ("work", "for"): "works_at",
    ("work", "with"): "works_with",
    ("employ", "by"): "works_at",  # passive: X is employed by Y
    ("hire", "by"): "works_at",
    ("join", None): "member_of",
    ("belong", "to"): "member_of",
    ("lead", None): "leads",
    ("run", None): "leads",
    ("manage", None): "leads",
    ("head", None): "leads",
    ("report", "to"): "reports_to",
    ("found", None): "founded",
    ("co-found", None): "founded",
    ("cofound", None): "founded",
    ("establish", None): "founded",
    ("start", None): "founded",
    ("found", "by"): "founded",
    ("establish", "by"): "founded",
    ("teach", "at"): "works_at",
    ("teach", None): "teaches",
    # places
    ("live", "in"): "lives_in",
    ("live", "at"): "lives_in",
    ("reside", "in"): "lives_in",
    ("move", "to"): "lives_in",
    ("relocate", "to"): "lives_in",
    ("settle", "in"): "lives_in",
    ("grow", "in"): "grew_up_in",  # grew up in (the particle is skipped)
    ("bear", "in"): "born_in",  # passive: was born in
    ("come", "from"): "comes_from",
    ("visit", None): "visited",
    ("travel", "to"): "visited",
    ("fly", "to"): "visited",
    ("locate", "in"): "located_in",  # passive: is located in
    ("base", "in"): "based_in",  # passive: is based in
    ("headquarter", "in"): "based_in",
    # study
    ("study", "at"): "studied_at",
    ("study", None): "studies",
    ("graduate", "from"): "studied_at",
    ("attend", None): "studied_at",
    # family and people
    ("marry", None): "married_to",
    ("marry", "to"): "married_to",  # passive: is married to
    ("date", None): "dating",
    ("know", None): "knows",
    ("meet", None): "knows",
    # likes, things
    ("like", None): "likes",
    ("love", None): "likes",
    ("enjoy", None): "likes",
    ("adore", None): "likes",
    ("prefer", None): "likes",
    ("hate", None): "dislikes",
    ("dislike", None): "dislikes",
    ("play", None): "plays",
    ("speak", None): "speaks",
    ("own", None): "owns",
    ("buy", None): "owns",
    ("drive", None): "owns",
    ("use", None): "uses",
    ("write", "in"): "written_in",  # passive: is written in
    ("build", "with"): "uses",
    ("develop", None): "develops",
    ("create", None): "develops",
    # health
    ("take", None): "takes",
    ("suffer", "from"): "has_condition",
    ("diagnose", "with"): "has_condition",  # passive: was diagnosed with
    ("treat", "by"): "treated_by",
}

AGENT_ACTS = frozenset({("found", "by"), ("establish", "by")})
"""Passive patterns whose agent is the relation's subject (``Nimbus was founded by Tom``: Tom
founded Nimbus); in the others the passive's subject stays the subject (``Liam is employed by the
BBC``: Liam works_at BBC)."""

PASSIVE_ONLY = frozenset({("bear", "in"), ("locate", "in"), ("base", "in"), ("write", "in"), ("diagnose", "with"),
                          ("employ", "by"), ("hire", "by"), ("treat", "by"), ("found", "by"), ("establish", "by"),
                          ("marry", "to")})
"""Patterns that hold only for a passive verb (``Paula wrote the compiler in OCaml`` says nothing
written_in about Paula)."""

NAMED_OBJECT = frozenset({"lives_in", "born_in", "grew_up_in", "located_in", "based_in", "comes_from", "visited"})
"""Relation types whose object must be named (an entity or a proper noun): ``lives in a small
village`` or ``visited his parents`` name no place."""

COPULA_ADJECTIVES: dict[tuple[str, str], str] = {
    ("married", "to"): "married_to",
    ("allergic", "to"): "allergic_to",
    ("engaged", "to"): "engaged_to",
    ("based", "in"): "based_in",
    ("located", "in"): "located_in",
}
"""``X is <adjective> <preposition> Y`` (spaCy parses ``married`` in ``is married to`` as an
adjective)."""

KINSHIP = frozenset({
    "mother", "father", "sister", "brother", "son", "daughter", "wife", "husband", "partner",
    "aunt", "uncle", "cousin", "niece", "nephew", "grandmother", "grandfather", "grandson",
    "granddaughter", "friend", "colleague", "boss", "manager", "neighbour", "neighbor", "mentor",
})
"""``X is Y's <noun>`` -> ``X <noun>_of Y``."""

ROLE_NOUNS = frozenset({
    "ceo", "cto", "cfo", "founder", "engineer", "developer", "manager", "director", "president",
    "professor", "teacher", "doctor", "nurse", "researcher", "designer", "lawyer", "employee",
    "intern", "scientist", "analyst", "consultant", "chef", "editor", "architect", "head",
})
"""``X is a <role> at/of/for ORG`` -> ``X works_at ORG`` (besides ``X is_a <role>``)."""

LOCATED_TYPES = frozenset({"organisation", "place"})
"""Kinds whose ``in PLACE`` says where they are (``Acme Corp in Lyon`` -> located_in)."""
