"""A labelled set of short notes on clearly separate subjects, for measuring sleep's topics.

Each note is what a person might ask an assistant to remember, written for this project. The
subjects do not overlap (cooking, a Kubernetes cluster at work, running, the garden, facts about
a friend called Ada), so a clustering that finds real topics puts each subject in one topic and
nothing else in it. The label is never a word the notes have to contain: most cooking notes do
not say "cooking", so a topic's name must come from what its notes actually say.

A second, smaller set (:data:`HELD_OUT`: piano lessons, taxes, a child's school, a trip) was
written afterwards and checks that the clustering was not fitted to the first.

``engram bench sleep`` and ``tests/e2e/test_sleep_topics.py`` share both; :func:`purity` and
:func:`split_labels` are the measures they report.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence

__all__ = ["HELD_OUT", "LABELS", "NOTES", "SETS", "purity", "split_labels", "topic_report"]

_BY_LABEL: dict[str, tuple[str, ...]] = {
    "cooking": (
        "Soak the chickpeas overnight before making hummus, otherwise they stay hard.",
        "The risotto needs the stock added one ladle at a time, stirring until the rice absorbs it.",
        "Grandma's pancake recipe: two eggs, a cup of flour, a cup of milk and a pinch of salt.",
        "Roast the garlic for forty minutes at 180 degrees before blending it into the soup.",
        "Sourdough starter gets fed every morning with equal weights of flour and water.",
        "Brown the onions slowly in butter for the French onion soup; it takes almost an hour.",
        "For the curry, toast cumin and coriander seeds in a dry pan before grinding them.",
        "Salt the pasta water generously and keep a cup of it to loosen the sauce.",
        "The lemon tart needs the pastry blind-baked with ceramic beans for fifteen minutes.",
        "Marinate the chicken thighs in yoghurt, garlic and paprika at least four hours before grilling.",
    ),
    "kubernetes": (
        "The payments deployment in the Kubernetes cluster runs three replicas behind the ingress.",
        "kubectl rollout undo reverted the broken release of the checkout service yesterday.",
        "Pods in the staging namespace were evicted because the node ran out of memory.",
        "The Helm chart for the API sets CPU requests to 250m and limits to one core.",
        "Our cluster autoscaler adds worker nodes when pending pods wait longer than a minute.",
        "Liveness probes on the search pods hit /healthz every ten seconds.",
        "Secrets for the database are mounted into the pods from a sealed secret, never baked into the image.",
        "The nightly CronJob backs up etcd to object storage at two in the morning.",
        "Upgrading the control plane to version 1.29 needs the deprecated beta APIs removed from the manifests.",
        "A horizontal pod autoscaler scales the worker deployment on queue length.",
    ),
    "running": (
        "Ran ten kilometres along the river this morning in 52 minutes.",
        "The marathon training plan has a long run every Sunday, building up to 32 km.",
        "My new trail shoes need another 50 km before they feel broken in.",
        "Interval session on the track: six times 800 metres with two minutes of jogging between.",
        "Resting heart rate is down to 54 since I started running five days a week.",
        "The half marathon in October starts at 9:30 from the old harbour.",
        "Easy runs should stay in heart rate zone two, slow enough to hold a conversation.",
        "Hill repeats on Tuesday left my calves sore for two days.",
        "Take an energy gel every 40 minutes during races longer than ninety minutes.",
        "Personal best for five kilometres is 23:41, set at the parkrun in March.",
    ),
    "gardening": (
        "The tomato seedlings go out into the greenhouse after the last frost in May.",
        "Prune the apple tree in late winter while it is still dormant.",
        "The roses by the fence need feeding with potash once they start to bud.",
        "Slugs ate half the lettuce again; try copper tape around the raised beds.",
        "Compost heap needs turning every two weeks and more dry leaves to balance the grass clippings.",
        "Sow the carrots thinly in sandy soil and keep the bed moist until they germinate.",
        "The lavender along the path wants full sun and almost no watering.",
        "Plant the tulip bulbs in October, about three times as deep as the bulb is tall.",
        "The hydrangea flowers turn blue in acidic soil and pink in chalky soil.",
        "Water the courgettes at the base in the evening so the leaves do not get mildew.",
    ),
    "ada": (
        "Ada lives in Paris, in a flat near the Canal Saint-Martin.",
        "Ada's birthday is on the 14th of June; she likes dark chocolate and old maps.",
        "Ada works as a structural engineer at a firm that designs bridges.",
        "Ada's sister Margot is a nurse in Lyon and has two young sons.",
        "Ada is allergic to penicillin, so remember it if she is ever ill while visiting.",
        "Ada and her husband Tomas met at university in Edinburgh.",
        "Ada speaks French, English and some Portuguese from her mother's side.",
        "Ada's phone number changed last spring; the new one ends in 4471.",
        "Ada prefers tea to coffee and never takes sugar.",
        "Ada is godmother to my daughter and always sends her a book at Christmas.",
    ),
}

# Written after sleep.clustering.merge_similarity was chosen on the notes above, and never used to
# choose a setting: a check that the clustering was not fitted to them. (Its topic names did show
# that generic verbs and units of time were naming topics; they joined the stopwords.)
_HELD_OUT: dict[str, tuple[str, ...]] = {
    "piano": (
        "Practise the Chopin nocturne slowly with the metronome at 60.",
        "My piano teacher wants the left hand softer in the second movement.",
        "The upright piano needs tuning before the recital in April.",
        "Scales in B flat major, hands together, four octaves.",
        "Recital pieces: a Bach prelude, a Satie gymnopedie and the nocturne.",
        "Use less pedal in the Bach; it blurs the counterpoint.",
        "Sight-reading for ten minutes every evening helps more than I expected.",
        "The recital hall has a Steinway grand with a heavy action.",
    ),
    "taxes": (
        "The tax return is due on the 31st of January; gather the bank interest statements.",
        "Self-assessment: claim the home office expenses this year.",
        "The accountant charges 300 pounds to file the return.",
        "Pension contributions reduce the taxable income, keep the receipts.",
        "Pay the second payment on account in July.",
        "The council tax band was reviewed and lowered to band C.",
        "Capital gains on the shares sold in May must be declared.",
        "Keep invoices for seven years in case of an audit.",
    ),
    "school": (
        "Leo's school trip to the science museum is on Thursday; he needs a packed lunch.",
        "Parents' evening with Leo's teacher, Mrs Okafor, at 5:40.",
        "Leo has a spelling test every Friday; this week words ending in -tion.",
        "The school uniform needs new trousers, size 9-10.",
        "Leo's reading book is due back on Monday in his book bag.",
        "Swimming lessons for Leo's class start after half term.",
        "Leo's homework project is a model volcano, due next week.",
        "The school closes early on the last day of term at 1:30.",
    ),
    "travel": (
        "The flight to Lisbon leaves Gatwick at 7:05; check in online 24 hours before.",
        "Book the hotel in Porto near the river for three nights.",
        "The train from Lisbon to Porto takes about three hours.",
        "Passport expires next year; renew it before the summer trip.",
        "Travel insurance covers cancellation up to 5,000 euros.",
        "Rent a car in Faro for the drive along the Algarve coast.",
        "Pack the adapter plugs and the small rucksack for day trips.",
        "The museum pass in Lisbon includes the tram and the funicular.",
    ),
}

LABELS: tuple[str, ...] = tuple(_BY_LABEL)
NOTES: tuple[tuple[str, str], ...] = tuple((label, text) for label, texts in _BY_LABEL.items() for text in texts)
HELD_OUT: tuple[tuple[str, str], ...] = tuple((label, text) for label, texts in _HELD_OUT.items() for text in texts)
SETS: dict[str, tuple[tuple[str, str], ...]] = {"notes": NOTES, "held-out": HELD_OUT}


def purity(topics: Iterable[Sequence[str]]) -> float:
    """Weighted purity of found topics, each given as the labels of its notes: for each topic the
    share of its notes that carry its most common label, weighted by the topic's size (1.0: no
    topic mixes subjects). No topic at all: 0."""
    sizes = majorities = 0
    for labels in topics:
        if labels:
            sizes += len(labels)
            majorities += Counter(labels).most_common(1)[0][1]
    return majorities / sizes if sizes else 0.0


def split_labels(topics: Iterable[Sequence[str]]) -> list[str]:
    """Labels whose notes ended up in more than one topic."""
    seen: Counter[str] = Counter()
    for labels in topics:
        seen.update(set(labels))
    return sorted(label for label, n in seen.items() if n > 1)


def topic_report(found: Mapping[str, Sequence[str]], label_of: Mapping[str, str], total: int) -> dict[str, object]:
    """Purity, unclustered notes and split labels of ``found`` (topic name -> the texts linked
    to it) against ``label_of`` (text -> label), out of ``total`` notes; per topic its name, size
    and majority label."""
    labelled = {name: [label_of[t] for t in texts if t in label_of] for name, texts in found.items()}
    clustered = {t for texts in found.values() for t in texts if t in label_of}
    return {
        "purity": round(purity(labelled.values()), 4),
        "topics": len(found),
        "unclustered": total - len(clustered),
        "split_labels": split_labels(labelled.values()),
        "by_topic": [
            {"name": name, "size": len(labels), "label": Counter(labels).most_common(1)[0][0] if labels else None}
            for name, labels in sorted(labelled.items(), key=lambda kv: -len(kv[1]))
        ],
    }
