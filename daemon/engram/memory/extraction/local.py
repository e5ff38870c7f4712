"""The local extractor: entities and (subject, relation, object) triples from spaCy's parse.

No model but spaCy's small English pipeline (:mod:`engram.memory.extraction.model`), no network.
Entities are the named entities whose label is a kind of thing (:data:`ENTITY_KINDS`) and proper
nouns the recogniser missed. Relations come from the dependency parse around each verb:

- the verb's subjects (with their conjuncts; a clause without one borrows its head's: ``Ada
  lives in Paris and works at Acme``, ``Ada decided to move to Rome``; a relative clause's is the
  noun it describes) and its objects (direct, prepositional, a passive's agent), named by the
  ``(verb lemma, preposition)`` table of :mod:`engram.memory.extraction.vocabulary`;
- the copula: ``X is a doctor`` (is_a), ``X is Y's sister`` (sister_of), ``X is the CTO of Y``
  (works_at), ``X is married to Y`` (adjective and preposition), ``X is from Y`` (comes_from);
- an organisation followed by ``in PLACE`` is located_in it (``Carol works at Acme Corp in Lyon``:
  Acme Corp located_in Lyon); a place that ``work`` takes with no organisation: based_in;
- ``he``/``she`` as a subject or object stand for the last person named earlier in the same text.

Names are the entity's words as written (a leading ``the`` and a trailing ``'s`` dropped); common
nouns (``likes jazz``, ``is a nurse``) are lower-cased, with their compound words (``table tennis``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from engram.memory.extraction.vocabulary import (
    AGENT_ACTS,
    COPULA_ADJECTIVES,
    ENTITY_KINDS,
    KINSHIP,
    LOCATED_TYPES,
    NAMED_OBJECT,
    PASSIVE_ONLY,
    PLACE_KINDS,
    ROLE_NOUNS,
    VERB_PATTERNS,
)

__all__ = ["Entity", "Extraction", "LocalExtractor", "Triple"]

_SUBJECTS = frozenset({"nsubj", "nsubjpass"})
_INHERITS_SUBJECT = frozenset({"xcomp", "conj", "advcl"})
_PERSONAL = frozenset({"he", "she", "him", "her"})
_NAMING_VERBS = frozenset({"call", "name"})
_ROLE_PREPOSITIONS = frozenset({"at", "of", "for"})


@dataclass(frozen=True, slots=True)
class Entity:
    name: str
    kind: str | None  # None: a common noun or an unrecognised proper noun (kind left as it is)


@dataclass(frozen=True, slots=True)
class Triple:
    subject: str
    relation: str
    object: str


@dataclass(slots=True)
class Extraction:
    entities: list[Entity] = field(default_factory=list)
    triples: list[Triple] = field(default_factory=list)

    def add_entity(self, entity: Entity) -> None:
        if all(e.name.casefold() != entity.name.casefold() for e in self.entities):
            self.entities.append(entity)

    def add(self, subject: Entity, relation: str, obj: Entity) -> None:
        if subject.name.casefold() == obj.name.casefold():
            return
        triple = Triple(subject.name, relation, obj.name)
        if triple not in self.triples:
            self.triples.append(triple)
        self.add_entity(subject)
        self.add_entity(obj)


def _clean(text: str) -> str:
    words = text.split()
    if words and words[0].casefold() in ("the", "a", "an"):
        words = words[1:]
    name = " ".join(words)
    for suffix in ("'s", "’s"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    return name.strip(" ,.;:")


class _Doc:
    """One parsed text: who each token names, and the person a pronoun stands for."""

    def __init__(self, doc: Any, resolve_pronouns: bool) -> None:
        self.doc = doc
        self.resolve_pronouns = resolve_pronouns
        self.ent_of: dict[int, Any] = {}
        for ent in doc.ents:
            for i in range(ent.start, ent.end):
                self.ent_of[i] = ent
        self.out = Extraction()
        for ent in doc.ents:
            kind = ENTITY_KINDS.get(ent.label_)
            if kind is not None and _clean(ent.text):
                self.out.add_entity(Entity(_clean(ent.text), kind))

    def _last_person_before(self, index: int) -> Entity | None:
        for ent in reversed(self.doc.ents):
            if ent.end <= index and ent.label_ == "PERSON":
                return Entity(_clean(ent.text), "person")
        return None

    def mention(self, token: Any) -> Entity | None:
        """The entity a subject or object token names, or None."""
        if token.pos_ == "PRON":
            if self.resolve_pronouns and token.lower_ in _PERSONAL and token.sent.start > 0:
                return self._last_person_before(token.sent.start)
            return None
        ent = self.ent_of.get(token.i)
        if ent is not None:
            kind = ENTITY_KINDS.get(ent.label_)
            name = _clean(ent.text)
            return Entity(name, kind) if kind is not None and name else None
        if token.pos_ == "NOUN":
            for child in token.children:  # "my sister Jane": the name, not the noun
                if child.dep_ == "appos" and child.pos_ == "PROPN":
                    return self.mention(child)
                if child.dep_ == "acl" and child.lemma_ in _NAMING_VERBS:  # "a startup called Nimbus"
                    named = [g for g in child.children if g.dep_ in ("oprd", "attr", "dobj") and g.pos_ == "PROPN"]
                    if named:
                        return self.mention(named[0])
            if any(c.dep_ == "poss" and c.pos_ == "PRON" for c in token.children):
                return None  # "my cousin", "his parents": someone relative to a speaker, not a concept
            return Entity(self._compound(token, lower=True), None)
        if token.pos_ == "VERB" and token.tag_ == "VBG" and token.dep_ == "xcomp":  # "loves hiking"
            return Entity(token.lower_, None)
        if token.pos_ == "PROPN":
            return Entity(_clean(self._compound(token, lower=False)), None)
        return None

    @staticmethod
    def _compound(token: Any, lower: bool) -> str:
        words = [c for c in token.lefts if c.dep_ == "compound"]
        text = " ".join([*(w.text for w in words), token.text])
        return text.lower() if lower else text

    @staticmethod
    def _with_conjuncts(tokens: Iterable[Any]) -> list[Any]:
        out: list[Any] = []
        stack = list(tokens)
        while stack:
            t = stack.pop(0)
            out.append(t)
            stack.extend(c for c in t.children if c.dep_ == "conj" and (c.pos_ == "VERB") == (t.pos_ == "VERB"))
        return out

    def subjects(self, verb: Any, depth: int = 0) -> list[Any]:
        found = [c for c in verb.children if c.dep_ in _SUBJECTS]
        if found and not (verb.dep_ == "relcl" and found[0].tag_ in ("WP", "WDT")):
            return self._with_conjuncts(found)
        if verb.dep_ == "relcl":
            return [verb.head]
        if verb.dep_ in _INHERITS_SUBJECT and verb.head.pos_ in ("VERB", "AUX") and depth < 4:
            return self.subjects(verb.head, depth + 1)
        return []

    def objects(self, verb: Any) -> list[tuple[str | None, Any]]:
        """(preposition or None, object token) pairs of a verb: direct objects, prepositional
        objects (through a particle: "grew up in"), and a passive's agent as ("by", ...)."""
        out: list[tuple[str | None, Any]] = []
        for child in verb.children:
            if child.dep_ in ("dobj", "obj") or (child.dep_ == "xcomp" and child.tag_ == "VBG"):
                out += [(None, t) for t in self._with_conjuncts([child])]
            elif child.dep_ in ("prep", "dative", "agent"):
                prep = child.lower_
                for pobj in (c for c in child.children if c.dep_ == "pobj"):
                    out += [(prep, t) for t in self._with_conjuncts([pobj])]
        return out

    def named(self, token: Any) -> bool:
        """Whether a token is (in) a named entity or a proper noun, rather than a common noun."""
        return token.i in self.ent_of or token.pos_ == "PROPN"

    @staticmethod
    def is_passive(verb: Any) -> bool:
        return any(c.dep_ in ("nsubjpass", "auxpass") for c in verb.children)

    # --- the patterns ---------------------------------------------------------------------------

    def verb(self, verb: Any) -> None:
        subjects = [m for m in map(self.mention, self.subjects(verb)) if m is not None]
        if verb.lemma_ == "be":
            for subject in subjects:
                self.copula(verb, subject)
            return
        passive = self.is_passive(verb)
        objects = self.objects(verb)
        organisation_objects = [m for _, t in objects if (m := self.mention(t)) is not None and m.kind == "organisation"]
        for prep, token in objects:
            obj = self.mention(token)
            if obj is None:
                continue
            if passive and (verb.lemma_, prep) in AGENT_ACTS:
                for subject in subjects:
                    self.out.add(obj, VERB_PATTERNS[(verb.lemma_, prep)], subject)  # the agent did it
                continue
            if verb.lemma_ == "work" and prep == "in":
                if obj.kind in PLACE_KINDS:
                    for org in organisation_objects:
                        self.out.add(org, "located_in", obj)
                    if not organisation_objects:
                        for subject in subjects:
                            self.out.add(subject, "based_in", obj)
                continue
            relation = VERB_PATTERNS.get((verb.lemma_, prep))
            if relation is None or (not passive and (verb.lemma_, prep) in PASSIVE_ONLY):
                continue
            if relation in NAMED_OBJECT and not self.named(token):
                continue
            for subject in subjects:
                self.out.add(subject, relation, obj)
            self._named_kind(token, obj)

    def _named_kind(self, token: Any, obj: Entity) -> None:
        """``founded a startup called Nimbus``: Nimbus is_a startup too."""
        if token.pos_ == "NOUN" and obj.name != self._compound(token, lower=True):
            self.out.add(obj, "is_a", Entity(self._compound(token, lower=True), None))

    def copula(self, verb: Any, subject: Entity) -> None:
        for child in verb.children:
            if child.dep_ == "attr" and (child.pos_ == "NOUN" or child.lower_ in ROLE_NOUNS or child.lower_ in KINSHIP):
                self._attribute(subject, child)
            elif child.dep_ == "acomp":
                for prep in (c for c in child.children if c.dep_ == "prep"):
                    relation = COPULA_ADJECTIVES.get((child.lower_, prep.lower_))
                    if relation is None:
                        continue
                    for pobj in self._with_conjuncts(c for c in prep.children if c.dep_ == "pobj"):
                        obj = self.mention(pobj)
                        if obj is not None:
                            self.out.add(subject, relation, obj)
            elif child.dep_ == "prep" and child.lower_ in ("from", "in"):
                for pobj in self._with_conjuncts(c for c in child.children if c.dep_ == "pobj"):
                    obj = self.mention(pobj)
                    if obj is None or obj.kind not in PLACE_KINDS:
                        continue
                    if child.lower_ == "from":
                        self.out.add(subject, "comes_from", obj)
                    elif subject.kind in LOCATED_TYPES:
                        self.out.add(subject, "located_in", obj)

    def _attribute(self, subject: Entity, noun: Any) -> None:
        lemma = noun.lemma_.lower()
        owner = [c for c in noun.children if c.dep_ == "poss"]
        linked = [
            (prep.lower_, pobj)
            for prep in noun.children if prep.dep_ == "prep" and prep.lower_ in _ROLE_PREPOSITIONS
            for pobj in prep.children if pobj.dep_ == "pobj"
        ]
        others = [m for t in owner + [p for _, p in linked] if self.named(t) and (m := self.mention(t)) is not None]
        if any(c.dep_ == "poss" and c.pos_ == "PRON" for c in noun.children):
            return  # "David is my cousin": relative to a speaker engram does not name
        if lemma in KINSHIP and others:
            for other in others:
                self.out.add(subject, f"{lemma}_of", other)
            return
        if lemma in ROLE_NOUNS:
            for other in others:
                if other.kind != "person":  # the recogniser often calls a small company a place
                    self.out.add(subject, "works_at", other)
        if not any(c.dep_ == "det" and c.lower_ == "the" for c in noun.children) or lemma in ROLE_NOUNS:
            self.out.add(subject, "is_a", Entity(self._compound(noun, lower=True), None))

    def located(self, token: Any) -> None:
        """An organisation (or place) followed by ``in PLACE``."""
        holder = self.mention(token)
        if holder is None or holder.kind not in LOCATED_TYPES:
            return
        for prep in (c for c in token.children if c.dep_ == "prep" and c.lower_ in ("in", "at")):
            for pobj in (c for c in prep.children if c.dep_ == "pobj"):
                place = self.mention(pobj)
                if place is not None and place.kind in PLACE_KINDS:
                    self.out.add(holder, "located_in", place)

    def run(self) -> Extraction:
        for token in self.doc:
            if token.pos_ in ("VERB", "AUX") and token.dep_ != "aux" and token.dep_ != "auxpass":
                self.verb(token)
            elif token.pos_ == "PROPN" and token.dep_ != "compound":
                self.located(token)
        return self.out


class LocalExtractor:
    """Triples from spaCy's parse; ``nlp`` is the loaded pipeline (``model.load_pipeline()``)."""

    name = "local"

    def __init__(self, nlp: Any, resolve_pronouns: bool = True, batch_size: int = 64) -> None:
        self.nlp = nlp
        self.resolve_pronouns = resolve_pronouns
        self.batch_size = batch_size

    def extract(self, text: str) -> Extraction:
        return self.extract_many([text])[0]

    def extract_many(self, texts: Sequence[str]) -> list[Extraction]:
        """Blocking: run it in a worker thread."""
        return [_Doc(doc, self.resolve_pronouns).run() for doc in self.nlp.pipe(texts, batch_size=self.batch_size)]
