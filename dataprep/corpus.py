"""The embedded default corpus: seeded, synthetic English-like documents with learnable structure.

A small probabilistic grammar (Zipf-weighted lexicon, subject-verb and determiner agreement, tense
kept per paragraph) plus document-level structure a longer context can exploit: a topic entity and
topic nouns repeated through the document, question/answer dialogue that copies nouns, numbered lists
and steps, arithmetic that is always correct, invented names, and some non-ASCII text (accents, ×/÷,
CJK glosses, emoji) so that byte accounting is exercised. Only `random.Random.random` is used, so the
text depends on the seed alone (not on the Python version).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from functools import lru_cache
from typing import Generic, TypeVar

T = TypeVar("T")

# --- lexicon (ordered roughly by frequency: rank drives the Zipf weights) ---------------------------

_NOUN_DOMAINS: dict[str, str] = {
    "animals": "cat dog horse bird fox wolf bear mouse:mice sheep:sheep goose:geese fish:fish owl rabbit "
    "deer:deer frog whale bee ant goat duck",
    "home": "table chair lamp window door kettle cup plate spoon knife:knives bread soup garden roof bed "
    "book clock key box:boxes candle",
    "city": "street market bridge train bus:buses station shop library:libraries tower car bicycle square "
    "museum café hotel park road harbor factory:factories school",
    "nature": "river mountain forest lake valley island storm cloud stone leaf:leaves flower tree hill "
    "field sea wind rain star moon beach:beaches",
    "science": "machine engine number map letter report experiment theory:theories signal computer robot "
    "battery:batteries sample planet rocket telescope formula engineer code model",
    "people": "child:children woman:women man:men teacher farmer doctor sailor baker student king queen "
    "soldier painter friend neighbor writer pilot captain merchant scientist",
}

_TRANSITIVE = (
    "see find carry follow build paint watch open close lift push pull buy sell bring take need like love "
    "visit clean break fix cook read write draw count hold catch chase help call remember forget describe "
    "measure repair move hide share study lose keep test check wash feed protect"
)
_INTRANSITIVE = (
    "sleep run walk sing laugh wait rest shine fall grow arrive leave swim fly dance work listen smile"
)
_IRREGULAR_PAST = {
    "see": "saw", "find": "found", "build": "built", "buy": "bought", "sell": "sold", "bring": "brought",
    "take": "took", "read": "read", "write": "wrote", "draw": "drew", "hold": "held", "catch": "caught",
    "forget": "forgot", "hide": "hid", "lose": "lost", "keep": "kept", "feed": "fed", "sleep": "slept",
    "run": "ran", "sing": "sang", "fall": "fell", "grow": "grew", "leave": "left", "swim": "swam",
    "fly": "flew", "break": "broke", "shine": "shone", "stop": "stopped",
}

_ADJECTIVES = (
    "old small big quiet bright dark warm cold happy young strange gentle clever tired busy empty heavy "
    "red blue green golden ancient modern tiny enormous curious brave careful lazy hungry famous secret "
    "broken shiny narrow wide wet dry sweet bitter simple rare ordinary soft quick slow early late round "
    "elegant noisy honest proud calm wild distant hidden frozen crowded peaceful lonely yellow silver "
    "wooden naïve"
)
_ADVERBS = (
    "slowly quickly carefully quietly suddenly often again never always rarely happily finally almost "
    "together badly"
)
_PREPOSITIONS = "in near under behind across beside inside above along outside past through"
_NAMES = (
    "Anna Marco Zoë José Björn Amara Kenji Léa Omar Priya Chloé Mateo Ingrid Yusuf Hana Tomás Nadia "
    "Felix Grace Ravi Søren Émile Ana Luca Mei Olu Sven Iris Dmitri Fatima"
)
_PLACES = (
    "Lisbon Oslo Kraków Dublin São_Paulo Zürich Nairobi Kyoto Lima Cairo Montréal Reykjavík Hanoi Quito "
    "Málaga Perth Tromsø Seoul 東京 北京"
)
_SYLLABLES = (
    "ka lo mir ven tor sa bel qui dra nor el an is or thu ra zen phi mo gar lin ost ur bra cel dun fey hal "
    "jor kri lum nax pel rin sol tam vor wyn xa yel ob est ith ander"
)
_GLOSSES = (
    ("cat", "猫"), ("dog", "犬"), ("mountain", "山"), ("river", "川"), ("water", "水"), ("fire", "火"),
    ("tree", "木"), ("moon", "月"), ("sun", "日"), ("person", "人"), ("book", "本"), ("rain", "雨"),
)
_EMOJI = ("🙂", "😀", "🚀", "☕", "🌧", "🐟", "🎉", "🌙")
_FOODS = "soup bread pie cake stew salad tea porridge jalapeño_salsa crème_brûlée"
_NUMBER_WORDS = "zero one two three four five six seven eight nine ten eleven twelve".split()
_PRONOUNS = (("she", "her", "her", False), ("he", "him", "his", False), ("they", "them", "their", True))


def _third_person(verb: str) -> str:
    if verb.endswith(("s", "sh", "ch", "x", "z", "o")):
        return verb + "es"
    if verb.endswith("y") and verb[-2] not in "aeiou":
        return verb[:-1] + "ies"
    return verb + "s"


def _past(verb: str) -> str:
    if verb in _IRREGULAR_PAST:
        return _IRREGULAR_PAST[verb]
    if verb.endswith("e"):
        return verb + "d"
    if verb.endswith("y") and verb[-2] not in "aeiou":
        return verb[:-1] + "ied"
    return verb + "ed"


def _plural(noun: str) -> str:
    if noun.endswith(("s", "sh", "ch", "x")):
        return noun + "es"
    if noun.endswith("y") and noun[-2] not in "aeiou":
        return noun[:-1] + "ies"
    return noun + "s"


class _Zipf(Generic[T]):
    """Samples items with weight 1/(rank+1)^s through a lookup table (one `random()` per draw)."""

    __slots__ = ("items", "table", "n")

    def __init__(self, items: Sequence[T], s: float = 1.0, size: int = 4096) -> None:
        weights = [1.0 / (i + 1) ** s for i in range(len(items))]
        total = sum(weights)
        table: list[T] = []
        cum = 0.0
        for item, w in zip(items, weights, strict=True):
            cum += w / total * size
            table.extend([item] * max(1, round(cum) - len(table)))
        self.items = tuple(items)
        self.table = tuple(table)
        self.n = len(table)


class _Lexicon:
    def __init__(self) -> None:
        nouns: list[tuple[str, str]] = []
        self.domains: list[tuple[tuple[str, str], ...]] = []
        for words in _NOUN_DOMAINS.values():
            entries = []
            for w in words.split():
                sing, _, plur = w.partition(":")
                entries.append((sing, plur or _plural(sing)))
            self.domains.append(tuple(entries))
        # interleave domains so that every domain has common and rare words
        for i in range(max(len(d) for d in self.domains)):
            nouns.extend(d[i] for d in self.domains if i < len(d))
        self.nouns = _Zipf(nouns, s=0.9)
        self.transitive = _Zipf([(v, _third_person(v), _past(v)) for v in _TRANSITIVE.split()], s=0.9)
        self.intransitive = _Zipf([(v, _third_person(v), _past(v)) for v in _INTRANSITIVE.split()], s=0.8)
        self.adjectives = _Zipf(_ADJECTIVES.split(), s=1.0)
        self.adverbs = _Zipf(_ADVERBS.split(), s=1.0)
        self.prepositions = _Zipf(_PREPOSITIONS.split(), s=0.9)
        self.names = _Zipf(_NAMES.split(), s=0.7)
        self.places = _Zipf([p.replace("_", " ") for p in _PLACES.split()], s=0.8)
        self.syllables = _Zipf(_SYLLABLES.split(), s=0.6)
        self.foods = _Zipf([f.replace("_", " ") for f in _FOODS.split()], s=0.8)


@lru_cache(maxsize=1)
def _lexicon() -> _Lexicon:
    return _Lexicon()


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


def _article(word: str) -> str:
    return "an" if word[:1] in "aeiou" else "a"


class _DocWriter:
    """Writes one document; holds the document's topic (protagonist, place, entity, topic nouns)."""

    def __init__(self, rng: random.Random, lex: _Lexicon) -> None:
        self.rnd: Callable[[], float] = rng.random
        self.lex = lex
        self.name = self.z(lex.names) if self.rnd() < 0.7 else self.invented(2)
        self.surname = self.invented(2 + (self.rnd() < 0.4))
        self.friend = self.z(lex.names)
        if self.friend == self.name:
            self.friend = self.invented(2)
        self.pron = _PRONOUNS[self.pick_index(3)]
        self.place = self.z(lex.places)
        self.entity = self.invented(2 + (self.rnd() < 0.5))
        domain = lex.domains[self.pick_index(len(lex.domains))]
        self.topic = [domain[self.pick_index(len(domain))] for _ in range(5)]
        self.topic_adj = self.z(lex.adjectives)
        self.past = self.rnd() < 0.6

    # -- primitive draws --
    def z(self, zipf: _Zipf[T]) -> T:
        return zipf.table[int(self.rnd() * zipf.n)]

    def pick_index(self, n: int) -> int:
        return int(self.rnd() * n)

    def pick(self, seq: Sequence[str]) -> str:
        return seq[int(self.rnd() * len(seq))]

    def invented(self, syllables: int) -> str:
        return _cap("".join(self.z(self.lex.syllables) for _ in range(syllables)))

    def noun(self) -> tuple[str, str]:
        if self.rnd() < 0.35:
            return self.topic[int(self.rnd() * 5)]
        return self.z(self.lex.nouns)

    def adj(self) -> str:
        return self.topic_adj if self.rnd() < 0.15 else self.z(self.lex.adjectives)

    # -- phrases --
    def np(self, plural: bool | None = None) -> tuple[str, bool]:
        """A noun phrase and whether it is plural."""
        rnd = self.rnd
        if plural is None:
            plural = rnd() < 0.3
        sing, plur = self.noun()
        noun = plur if plural else sing
        if rnd() < 0.35:
            noun = f"{self.adj()} {noun}"
        r = rnd()
        if plural:
            if r < 0.5:
                det = "the"
            elif r < 0.65:
                det = "some"
            else:
                det = "these" if r < 0.75 else self.small_number()
        elif r < 0.55:
            det = "the"
        elif r < 0.8:
            det = _article(noun)
        elif r < 0.9:
            det = "this"
        else:
            det = self.pron[2]
        return f"{det} {noun}", plural

    def small_number(self) -> str:
        return _NUMBER_WORDS[2 + int(self.rnd() * 8)]

    def subject(self) -> tuple[str, bool]:
        r = self.rnd()
        if r < 0.25:
            return self.name, False
        if r < 0.4:
            return self.pron[0], self.pron[3]
        if r < 0.45:
            return f"the {self.entity}", False
        return self.np()

    def pp(self) -> str:
        obj = self.place if self.rnd() < 0.2 else self.np()[0]
        return f"{self.z(self.lex.prepositions)} {obj}"

    def verb(self, forms: tuple[str, str, str], plural: bool) -> str:
        if self.past:
            return forms[2]
        return forms[0] if plural else forms[1]

    def be(self, plural: bool) -> str:
        if self.past:
            return "were" if plural else "was"
        return "are" if plural else "is"

    def clause(self) -> str:
        rnd = self.rnd
        subj, plural = self.subject()
        r = rnd()
        if r < 0.55:
            out = f"{subj} {self.verb(self.z(self.lex.transitive), plural)} {self.np()[0]}"
        elif r < 0.75:
            out = f"{subj} {self.verb(self.z(self.lex.intransitive), plural)}"
        else:
            out = f"{subj} {self.be(plural)} {self.adj()}"
            return f"{out} {self.pp()}" if rnd() < 0.3 else out
        r = rnd()
        if r < 0.35:
            out = f"{out} {self.pp()}"
        elif r < 0.5:
            out = f"{out} {self.z(self.lex.adverbs)}"
        return out

    def sentence(self) -> str:
        r = self.rnd()
        if r < 0.55:
            s = self.clause()
        elif r < 0.7:
            s = f"{self.clause()}, and {self.clause()}"
        elif r < 0.8:
            s = f"when {self.clause()}, {self.clause()}"
        elif r < 0.88:
            s = f"{self.clause()} because {self.clause()}"
        else:
            noun, plural = self.np()
            verb = self.verb(self.z(self.lex.transitive), plural)
            s = f"{noun} that {verb} {self.np()[0]} {self.be(plural)} {self.adj()}"
        return _cap(s) + ("!" if self.rnd() < 0.04 else ".")

    # -- blocks (paragraphs, dialogue, lists, arithmetic, reports, glossaries) --
    def paragraph(self) -> str:
        self.past = self.rnd() < 0.6
        n = 2 + int(self.rnd() * 5)
        sents = [self.sentence() for _ in range(n)]
        if self.rnd() < 0.3:
            sents.insert(0, f"{self.name} {self.surname} {self.be(False)} from {self.place}.")
        if self.rnd() < 0.05:
            sents[-1] += " " + self.pick(_EMOJI)
        return " ".join(sents)

    def dialogue(self) -> str:
        rnd = self.rnd
        lines = []
        a, b = self.name, self.friend
        for _ in range(1 + int(rnd() * 3)):
            sing, plur = self.noun()
            adj = self.adj()
            r = rnd()
            if r < 0.35:
                q = f"Where is the {adj} {sing}?"
                ans = f"The {adj} {sing} is {self.pp()},"
            elif r < 0.65:
                n = 2 + int(rnd() * 18)
                q = f"How many {plur} are there?"
                ans = f"There are {n} {plur},"
            else:
                q = f"Have you seen the {sing}?"
                ans = f"Yes, I saw the {sing} {self.pp()}," if rnd() < 0.6 else "No, I have not seen it,"
            open_q, close_q = ("“", "”") if rnd() < 0.15 else ('"', '"')
            tail = " " + self.pick(_EMOJI) if rnd() < 0.05 else ""
            lines.append(f"{open_q}{q}{close_q} asked {a}.")
            lines.append(f"{open_q}{ans}{close_q} said {b}.{tail}")
            a, b = b, a
        return "\n".join(lines)

    def numbered_list(self) -> str:
        rnd = self.rnd
        r = rnd()
        n = 3 + int(rnd() * 5)
        if r < 0.5:
            head = f"Things {self.name} packed for {self.place}:"
            items = []
            for i in range(n):
                sing, plur = self.noun()
                if rnd() < 0.4:
                    sing, plur = f"{self.adj()} {sing}", f"{self.adj()} {plur}"
                item = f"{self.small_number()} {plur}" if rnd() < 0.3 else f"{_article(sing)} {sing}"
                items.append(f"{i + 1}. {_cap(item)}")
            return head + "\n" + "\n".join(items)
        food = self.z(self.lex.foods)
        head = f"How to make {self.adj()} {food}"
        steps = []
        for i in range(n):
            obj = self.np(plural=rnd() < 0.3)[0]
            verb = self.z(self.lex.transitive)[0]
            steps.append(f"Step {i + 1}: {_cap(verb)} {obj} {self.z(self.lex.adverbs)}.")
        return head + "\n" + "\n".join(steps)

    def arithmetic(self) -> str:
        rnd = self.rnd
        lines = [f"Exercise {1 + int(rnd() * 20)}"] if rnd() < 0.5 else []
        for _ in range(2 + int(rnd() * 5)):
            a = int(rnd() * 50)
            b = int(rnd() * 50)
            r = rnd()
            if r < 0.4:
                lines.append(f"{a} + {b} = {a + b}")
            elif r < 0.65:
                a, b = max(a, b), min(a, b)
                lines.append(f"{a} - {b} = {a - b}")
            elif r < 0.85:
                a, b = a % 13, b % 13
                lines.append(f"{a} × {b} = {a * b}")
            else:
                b = 1 + b % 9
                lines.append(f"{a * b} ÷ {b} = {a}")
        if rnd() < 0.6:
            sing, plur = self.noun()
            a = 2 + int(rnd() * 20)
            b = 1 + int(rnd() * 9)
            p, _, _, pl = self.pron
            has = "have" if pl else "has"
            lines.append(
                f"{self.name} had {a} {plur}. Then {p} found {b} more. Now {p} {has} {a + b} {plur}."
            )
        return "\n".join(lines)

    def report(self) -> str:
        rnd = self.rnd
        sing, plur = self.noun()
        year = 1800 + int(rnd() * 220)
        count = 10 + int(rnd() * 990)
        s = [
            f"The {self.entity} is {_article(self.topic_adj)} {self.topic_adj} {sing} "
            f"found near {self.place}.",
            f"It was first described in {year} by {self.name} {self.surname}.",
            f"Today about {count} {plur} live there, and the {self.entity} is {self.adj()}.",
        ]
        if rnd() < 0.4:
            s.append(f"In winter the temperature near {self.place} falls to {int(rnd() * 15)} °C.")
        if rnd() < 0.3:
            s.append(f"Many visitors call it a naïve {sing}, but the {self.entity} has a long résumé.")
        return " ".join(s)

    def glossary(self) -> str:
        rnd = self.rnd
        items = [_GLOSSES[int(rnd() * len(_GLOSSES))] for _ in range(3 + int(rnd() * 4))]
        return "Words: " + ", ".join(f"{en} ({zh})" for en, zh in items) + "."

    def document(self) -> str:
        rnd = self.rnd
        target = int(50 * 8 ** rnd())  # 50..400 words, log-uniform
        blocks: list[str] = []
        if rnd() < 0.4:
            if rnd() < 0.5:
                blocks.append(f"The {self.entity} of {self.place}")
            else:
                blocks.append(f"{self.name} and the {self.entity}")
        words = 0
        while words < target:
            r = rnd()
            if r < 0.5:
                b = self.paragraph()
            elif r < 0.62:
                b = self.dialogue()
            elif r < 0.74:
                b = self.numbered_list()
            elif r < 0.84:
                b = self.arithmetic()
            elif r < 0.97:
                b = self.report()
            else:
                b = self.glossary()
            blocks.append(b)
            words += b.count(" ") + 1
        if rnd() < 0.5:
            blocks.append(f"In the end, {self.name} returned to {self.place} and the {self.entity}.")
        return "\n\n".join(blocks)


def generate_documents(num_docs: int, seed: int) -> list[str]:
    """`num_docs` documents (about 50–400 words each), a deterministic function of `seed`.

    Document `i` does not depend on `num_docs`: a shorter request returns a prefix of a longer one.
    """
    if num_docs < 0:
        raise ValueError(f"num_docs must be >= 0, got {num_docs}")
    rng = random.Random(seed)
    lex = _lexicon()
    return [_DocWriter(rng, lex).document() for _ in range(num_docs)]
