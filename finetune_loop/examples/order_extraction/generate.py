"""Generate the bundled order-extraction example data (synthetic, written for this project).

Writes, into the directory given (default: the directory of this file):

* ``tickets.jsonl``            labelled e-commerce support tickets with their extraction targets
* ``traffic_pool.jsonl``       fresh labelled tickets set aside for ``simulate-traffic`` (never
  curated; no text equals, or is a near duplicate of, a ticket)
* ``production_traffic.jsonl`` 8 weeks of later, unlabelled production traffic (request_id,
  timestamp, text), in a terser phone-keyboard style, with a growing share of late deliveries

Each target is a JSON object with exactly three keys, always in this order::

    {"order_id": "A-48213" | null, "product": "<catalogue name>" | null, "issue": "<one of ISSUES>"}

Everything is written by hand below (templates per issue, a catalogue of fictional products with
their surface forms, openers, sign-offs, fictional names / e-mails on example.com and example.org /
555-01xx and 020 7946 0xxx phone numbers) and combined by seeded ``random.Random`` instances (one
per file), so the files are reproducible byte for byte. Standard library only. From the
repository root::

    python finetune_loop/examples/order_extraction/generate.py            # rewrite the files here
    python finetune_loop/examples/order_extraction/generate.py OUT_DIR    # write them into OUT_DIR
    python finetune_loop/examples/order_extraction/generate.py --check    # compare, print counts

Both modes print the counts that DATA_CARD.md quotes.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from collections import Counter
from datetime import date, datetime, timedelta
from pathlib import Path
from random import Random

SEED = 20261201
# One generator per file: changing how one file is drawn never changes another.
POOL_SEED = SEED + 1
PROD_SEED = SEED + 2
HERE = Path(__file__).resolve().parent
TICKETS_NAME, POOL_NAME, TRAFFIC_NAME = "tickets.jsonl", "traffic_pool.jsonl", "production_traffic.jsonl"
SOURCE = "synthetic-v1"

ISSUES = ("damaged", "late", "wrong_item", "missing_part", "refund_request", "cancel_order")
# Rows per issue. Mildly imbalanced, as a real queue is.
TICKET_COUNTS = {"damaged": 118, "late": 112, "wrong_item": 92, "missing_part": 86, "refund_request": 104, "cancel_order": 88}
POOL_COUNTS = {"damaged": 59, "late": 56, "wrong_item": 46, "missing_part": 43, "refund_request": 52, "cancel_order": 44}
TICKET_START, TICKET_END = date(2026, 1, 5), date(2026, 8, 30)
POOL_START, POOL_END = date(2026, 9, 1), date(2026, 10, 26)
PROD_START, WEEKS, PROD_ROWS_PER_WEEK = date(2026, 9, 1), 8, 25

MIN_WORDS, MAX_WORDS = 8, 60
# Two texts drawn from the same template are redrawn when the Jaccard similarity of their character
# 5-gram shingles (curation's near-duplicate measure) reaches this; curation's own threshold is 0.8.
MAX_SIMILARITY = 0.7

# --------------------------------------------------------------------------------------------
# 1. The catalogue: one canonical name (the target) and the ways customers write it (the text).
#    The first surface form is the canonical name. No surface form is part of another product's,
#    and none is a word the templates use ("item", "order", "parcel", the missing parts ...).
# --------------------------------------------------------------------------------------------

CATALOGUE: dict[str, tuple[str, ...]] = {
    "Nimbus Wireless Earbuds": ("Nimbus Wireless Earbuds", "Nimbus earbuds", "nimbus buds", "wireless earbuds", "Nimbus earbds"),
    "Aurora Desk Lamp": ("Aurora Desk Lamp", "Aurora lamp", "desk lamp", "aurora dsk lamp"),
    "Summit Hiking Backpack": ("Summit Hiking Backpack", "Summit backpack", "hiking backpack", "summit bakpack"),
    "Breeze Tower Fan": ("Breeze Tower Fan", "Breeze fan", "tower fan", "breeze towr fan"),
    "Pixel Kids Tablet": ("Pixel Kids Tablet", "Pixel tablet", "kids tablet", "pixle kids tablet"),
    "Harbor Cast Iron Skillet": ("Harbor Cast Iron Skillet", "Harbor skillet", "cast iron skillet", "cast iron pan", "harbour skillet"),
    "Vega Electric Kettle": ("Vega Electric Kettle", "Vega kettle", "electric kettle", "vega kettel"),
    "Orbit Smart Watch": ("Orbit Smart Watch", "Orbit watch", "smartwatch", "orbit smart wach"),
    "Cedar Bookshelf": ("Cedar Bookshelf", "bookshelf", "cedar book shelf", "cedar bookshelve"),
    "Lumen Ring Light": ("Lumen Ring Light", "ring light", "lumen ringlight", "lumen ring ligth"),
    "Atlas Yoga Mat": ("Atlas Yoga Mat", "Atlas mat", "yoga mat", "atlas yoga matt"),
    "Nova Bluetooth Speaker": ("Nova Bluetooth Speaker", "Nova speaker", "bluetooth speaker", "nova bluetooth speakr"),
    "Terra Plant Pot Set": ("Terra Plant Pot Set", "Terra pots", "plant pots", "terra plnt pots"),
    "Glide Office Chair": ("Glide Office Chair", "Glide chair", "office chair", "glide ofice chair"),
    "Frost Water Bottle": ("Frost Water Bottle", "Frost bottle", "water bottle", "frost watter bottle"),
    "Echo Mechanical Keyboard": ("Echo Mechanical Keyboard", "Echo keyboard", "mechanical keyboard", "echo mechanical keybaord"),
    "Drift Memory Foam Pillow": ("Drift Memory Foam Pillow", "Drift pillow", "memory foam pillow", "drift pilow"),
    "Solace Weighted Blanket": ("Solace Weighted Blanket", "Solace blanket", "weighted blanket", "solace wieghted blanket"),
    "Ridge Trail Running Shoes": ("Ridge Trail Running Shoes", "Ridge shoes", "trail running shoes", "ridge runing shoes"),
    "Quill Fountain Pen": ("Quill Fountain Pen", "Quill pen", "fountain pen", "quill fountian pen"),
    "Zephyr Hair Dryer": ("Zephyr Hair Dryer", "Zephyr dryer", "hair dryer", "hairdryer", "zephir hair dryer"),
    "Mosaic Jigsaw Puzzle": ("Mosaic Jigsaw Puzzle", "Mosaic puzzle", "jigsaw puzzle", "mosaic jigsaw puzle"),
    "Pulse Fitness Tracker": ("Pulse Fitness Tracker", "Pulse tracker", "fitness tracker", "pulse fitnes tracker"),
    "Ember Scented Candle Set": ("Ember Scented Candle Set", "Ember candles", "candle set", "ember scented candels"),
    "Bolt Cordless Drill": ("Bolt Cordless Drill", "Bolt drill", "cordless drill", "bolt cordles drill"),
    "Halo Baby Monitor": ("Halo Baby Monitor", "Halo monitor", "baby monitor", "halo baby moniter"),
}
PRODUCTS = tuple(CATALOGUE)
ORDER_LETTERS = "ABCKMRT"

# Surface forms are matched as whole words, case-insensitively, longest first.
_SURFACES = sorted(((s.casefold(), p) for p, forms in CATALOGUE.items() for s in forms), key=lambda sp: -len(sp[0]))
_SURFACE_RE = re.compile(r"(?<!\w)(" + "|".join(re.escape(s) for s, _ in _SURFACES) + r")(?!\w)", re.IGNORECASE)
_SURFACE_PRODUCT = dict(_SURFACES)
# An order id as customers write it: A-48213, #A48213, a-48213, A48213, #A-48213, A 48213.
ORDER_ID_IN_TEXT = re.compile(r"(?<![\w-])#?([A-Za-z])[- ]?(\d{5})(?![\w-])")
ORDER_ID_FORMAT = re.compile(r"^[A-Z]-\d{5}$")


def products_named(text: str) -> list[str]:
    """Canonical names of the catalogue products a text names (any surface form, whole words), in order."""
    named: list[str] = []
    for m in _SURFACE_RE.finditer(text):
        product = _SURFACE_PRODUCT[m.group(1).casefold()]
        if product not in named:
            named.append(product)
    return named


def order_ids_named(text: str) -> list[str]:
    """Canonical ids ("A-48213") of the order ids a text names, however they are written."""
    return list(dict.fromkeys(f"{m.group(1).upper()}-{m.group(2)}" for m in ORDER_ID_IN_TEXT.finditer(text)))


# --------------------------------------------------------------------------------------------
# 2. Templates per issue. Slots: {order}/{Order} the order (with its id inline, or not),
#    {item}/{Item} the product complained about (or a generic noun when the ticket names none),
#    {other}/{Other} a second product the complaint is NOT about, {part}, {dmg}, {days}, {date},
#    {amount}. A template is (text, needs_product): a template that names two products must name
#    the one complained about, so it never takes a generic noun for {item}.
# --------------------------------------------------------------------------------------------

TEMPLATES: dict[str, list[tuple[str, bool]]] = {
    "damaged": [
        ("{Item} from {order} arrived {dmg}.", False),
        ("{Order} was delivered today but {item} is {dmg}. The box looked fine from the outside.", False),
        ("I just opened {order} and {item} is {dmg}. What can you do about it?", False),
        ("Unfortunately {item} arrived {dmg}. Could you send a replacement?", False),
        ("The courier must have dropped it, {item} in {order} came {dmg}.", False),
        ("{Item} was {dmg} when I took it out of the packaging. I'd like a replacement please.", False),
        ("Received {order} yesterday. Sadly {item} is {dmg} and can't be used.", False),
        ("The packaging was torn open and {item} inside is {dmg}.", False),
        ("Not happy at all: {item} arrived {dmg}. I have photos if you need them.", False),
        ("{Order} came in a crushed box and {item} is {dmg}. How do I get a replacement?", False),
        ("There's a crack down the side of {item}, it must have happened in transit.", False),
        ("{Item} arrived with a big dent and scratches all over it.", False),
        ("I ordered {other} and {item} in {order}. {Other} is fine but {item} arrived {dmg}.", True),
    ],
    "late": [
        ("{Order} still hasn't arrived and it's been {days} days.", False),
        ("Where is {order}? Tracking hasn't moved since {date}.", False),
        ("I was told {item} would be delivered by {date} but nothing has come yet.", False),
        ("{Order} is late. The estimated delivery was last week.", False),
        ("It's been {days} days since I ordered {item} and there is still no sign of it.", False),
        ("Tracking for {order} has said 'in transit' for over a week now, is it lost?", False),
        ("Still waiting on {item}. Can you check what's going on with {order}?", False),
        ("My delivery is overdue. {Order} should have been here by {date}.", False),
        ("The delivery date for {item} keeps getting pushed back. When will it actually arrive?", False),
        ("Nothing has arrived yet for {order}, the courier says they have no record of it.", False),
        ("I paid for express shipping on {order} and it's now {days} days late.", False),
        ("Any update on {item}? I ordered it on {date} and it still hasn't shipped.", False),
        ("{Other} turned up last week but {item} from the same order is still missing in the post.", True),
    ],
    "wrong_item": [
        ("I ordered {item} but received {other} instead.", True),
        ("{Order} came with the wrong item. I ordered {item} and got {other}.", True),
        ("Wrong product in {order}: there's {other} in the box, not {item}.", True),
        ("You sent me {other}. I never ordered that, I ordered {item}.", True),
        ("I think I received someone else's order, the box has {other} in it. Where is {item}?", True),
        ("Got the wrong model: the label says {other} but my order was for {item}.", True),
        ("I paid for {item} and what turned up is {other}. Please swap it.", True),
        ("{Item} I received is the wrong colour, I ordered black and got white.", False),
        ("The size is wrong. I ordered {item} in medium and you sent a large.", False),
        ("{Order} contained the wrong thing entirely, this is not what I ordered.", False),
        ("Mix-up with {order}, I got a different item than the one I paid for.", False),
        ("This isn't what I ordered. {Item} on your website looks nothing like what arrived.", False),
    ],
    "missing_part": [
        ("{Item} arrived without {part}.", False),
        ("{Order} arrived but {part} for {item} isn't in the box.", False),
        ("There was no {part} in the box with {item}.", False),
        ("I can't use {item} because {part} is missing.", False),
        ("{Item} came with everything except {part}. Can you send it separately?", False),
        ("Opened {order} today, {part} is not included even though the listing says it should be.", False),
        ("Part of my order is missing: {part} for {item}.", False),
        ("{Item} is incomplete, {part} wasn't packed.", False),
        ("Can you send {part}? It was missing from {order}.", False),
        ("Only half of {item} arrived, {part} is nowhere to be found.", False),
        ("{Order}: {part} missing from the package, please send it.", False),
        ("{Other} in {order} is complete, but {item} came without {part}.", True),
    ],
    "refund_request": [
        ("I'd like a refund for {item}, it's not what I expected.", False),
        ("I returned {item} on {date}, when will I get my money back?", False),
        ("Please refund {order}. I changed my mind and sent it back.", False),
        ("Can I get my money back for {order}? I don't need it anymore.", False),
        ("I sent back {item} two weeks ago and still haven't been refunded the {amount}.", False),
        ("Refund please for {item}. It doesn't fit and I don't want an exchange.", False),
        ("I want a full refund for {order}, the quality is really poor.", False),
        ("Your website says returns are refunded within 5 days. It's been {days} days and no refund for {item}.", False),
        ("How do I get a refund for {item}? I've only used it once.", False),
        ("I was charged {amount} for {order} but I returned it. Please refund me.", False),
        ("Requesting a refund of {amount} for {item}, the return reached your warehouse on {date}.", False),
        ("I'd prefer my money back rather than store credit for {order}.", False),
        ("Please refund {item} from {order}. I'm keeping {other}, that one is great.", True),
    ],
    "cancel_order": [
        ("Please cancel {order}, I ordered it by mistake.", False),
        ("I need to cancel {order} before it ships.", False),
        ("Can you cancel {item}? I found it cheaper elsewhere.", False),
        ("Cancel {order} please, I no longer need it.", False),
        ("I placed {order} an hour ago and want to cancel it.", False),
        ("Please stop {order} from shipping, I want to cancel.", False),
        ("I'd like to cancel the order for {item}, I picked the wrong size.", False),
        ("Is it too late to cancel {order}? It hasn't shipped yet according to my account.", False),
        ("I accidentally bought {item} twice, please cancel {order}.", False),
        ("Cancel my order for {item} please, I changed my mind.", False),
        ("Do not send {order}. I want to cancel it.", False),
        ("Please cancel {item} from {order} but still send {other}.", True),
    ],
}
# A sentence naming a second product the complaint is not about, added to some single-product
# tickets (the target stays the product complained about).
DISTRACTORS = {
    "damaged": ["{Other} from the same order is fine though.", "I also ordered {other}, that one arrived OK."],
    "late": ["{Other} from the same order already came.", "I got {other} separately, only this one is missing."],
    "missing_part": ["{Other} in the same box was complete.", "No problem with {other}, just this one."],
    "refund_request": ["I'm keeping {other} from the same order.", "{Other} is fine, I only want to return this."],
}
# Share of tickets without an order id, and (templates that allow it) without a product, per issue.
NO_ORDER_ID = {"damaged": 0.22, "late": 0.2, "wrong_item": 0.25, "missing_part": 0.25, "refund_request": 0.2, "cancel_order": 0.18}
NO_PRODUCT = {"damaged": 0.2, "late": 0.4, "wrong_item": 0.35, "missing_part": 0.2, "refund_request": 0.3, "cancel_order": 0.35}
DISTRACTOR_SHARE = 0.15

GENERIC_ITEMS = ["the item", "my purchase", "the product", "what I ordered", "the thing I bought"]
WRONG_THINGS = ["something I didn't order", "a completely different product", "someone else's stuff"]
DAMAGE = ["damaged", "broken", "cracked", "smashed", "dented", "badly scratched", "in pieces", "bent out of shape"]
PARTS = ["the charging cable", "the power adapter", "the lid", "the screws", "the instruction manual", "the remote",
         "the strap", "the batteries", "the stand", "the carry bag", "one of the legs", "the cover"]
ORDER_WITHOUT_ID = ["my order", "the order", "my recent order", "the order I placed"]
# How an order id is written in the text (the target is always "A-48213").
ID_FORMS = [("{L}-{D}", 30), ("#{L}{D}", 20), ("{l}-{D}", 12), ("{L}{D}", 12), ("#{L}-{D}", 8), ("{l}{D}", 10), ("{L} {D}", 4), ("#{l}{D}", 4)]
ORDER_INLINE = ["order {id}", "my order {id}", "order number {id}", "order no. {id}", "my order ({id})", "order ref {id}"]
ID_BEFORE = ["Order {id}:", "Re: order {id}.", "Order number: {id}.", "Ref {id} -", "About order {id}."]
ID_AFTER = ["My order number is {id}.", "Order no. {id}.", "(order {id})", "The order number is {id}, in case you need it.",
            "Order ref: {id}", "order {id}"]

OPENERS = ["Hi,", "Hello,", "Hi there,", "Dear Support,", "Good morning,", "Good afternoon,", "Hey,", "Hello team,",
           "To whom it may concern,", "Hi support team,", "Evening,"]
CLOSERS = ["Thanks.", "Thank you!", "Thanks, {name}", "Regards, {name}", "Cheers, {name}", "Kind regards,\n{name}",
           "Thanks in advance.", "Best, {name}", "Many thanks, {name}", "Please help.", "Hope you can sort this out."]
CONTEXT = ["I ordered it on {date}.", "I paid {amount} for it.", "This is the second time this has happened.",
           "I've been a customer for years.", "It was meant to be a birthday present.", "I need this sorted quickly please.",
           "I already tried the chat but got no answer.", "Your delivery partner was no help at all."]
PII_SENTENCES = ["You can reach me at {email}.", "My number is {phone} if you need to call.", "Please reply to {email}.",
                 "Call me on {phone}.", "My account email is {email}.", "Contact: {email}, {phone}."]
FIRST = ["Jane", "Ahmed", "Priya", "Chen", "Lucas", "Sofia", "Tom", "Aisha", "Mateo", "Olga", "Kwame", "Yuki",
         "Fatima", "Liam", "Ines", "Ravi", "Hannah", "Diego", "Mei", "Oskar"]
LAST = ["Doe", "Smith", "Garcia", "Khan", "Patel", "Wang", "Rossi", "Nguyen", "Kowalski", "Okafor", "Tanaka", "Silva"]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October", "November", "December"]

# Noise applied to the template words only, never to a slot's value: the product and order id in
# the text stay one of the known surface forms / id formats.
MISSPELL = {"received": "recieved", "receive": "recieve", "arrived": "arived", "damaged": "damagd", "cancel": "cancle",
            "because": "becuase", "package": "pakage", "delivery": "delivary", "refund": "refnud", "separately": "seperately",
            "tracking": "trackng", "missing": "mising", "definitely": "definately", "yesterday": "yesturday",
            "replacement": "replacment", "shipping": "shiping", "address": "adress", "website": "webiste"}
ABBREV = {"please": "pls", "you": "u", "thanks": "thx", "because": "cuz", "your": "ur", "today": "2day"}
KEYBOARD = {"a": "qs", "e": "wr", "i": "uo", "o": "ip", "n": "bm", "r": "et", "t": "ry", "s": "ad", "l": "k", "d": "sf"}
SLOT_RE = re.compile(r"(\{[A-Za-z]+\})")


class Deck:
    """Draws from `items` in shuffled rounds, so every item is used about equally often."""

    def __init__(self, rng: Random, items):
        self.rng, self.items, self.queue = rng, list(items), []

    def draw(self):
        if not self.queue:
            self.queue = self.items[:]
            self.rng.shuffle(self.queue)
        return self.queue.pop()


def on_words(text: str, fn) -> str:
    """`fn` applied to every word of the template text outside the {slots}."""
    return "".join(p if SLOT_RE.fullmatch(p) else re.sub(r"[A-Za-z']+", lambda m: fn(m.group()), p) for p in SLOT_RE.split(text))


def on_text(text: str, fn) -> str:
    return "".join(p if SLOT_RE.fullmatch(p) else fn(p) for p in SLOT_RE.split(text))


def keep_case(original: str, new: str) -> str:
    return new[:1].upper() + new[1:] if original[:1].isupper() else new


def typo(rng: Random, word: str) -> str:
    if len(word) < 4 or "'" in word:
        return word
    i = rng.randrange(1, len(word) - 1)
    kind = rng.randrange(4)
    if kind == 0:  # swap two letters
        return word[:i] + word[i + 1] + word[i] + word[i + 2:]
    if kind == 1:  # drop one
        return word[:i] + word[i + 1:]
    if kind == 2:  # double one
        return word[:i] + word[i] + word[i:]
    near = KEYBOARD.get(word[i].lower())
    return word[:i] + rng.choice(near) + word[i + 1:] if near else word


def add_noise(rng: Random, text: str, style: dict) -> str:
    def word(w: str) -> str:
        low = w.lower()
        if style["misspell"] and low in MISSPELL and rng.random() < 0.7:
            w = keep_case(w, MISSPELL[low])
        elif style["abbrev"] and low in ABBREV and rng.random() < 0.7:
            w = keep_case(w, ABBREV[low])
        elif style["typo_rate"] and rng.random() < style["typo_rate"]:
            w = typo(rng, w)
        return w

    text = on_words(text, word)
    if style["no_apostrophes"]:
        text = on_text(text, lambda p: p.replace("'", ""))
    if style["no_punct"]:
        text = on_text(text, lambda p: re.sub(r"[.,!?;:()]", "", p))
    return text


def ticket_style(rng: Random, production: float = 0.0) -> dict:
    """How one ticket is written; `production` (0 .. 1) moves it toward terse phone-keyboard text."""
    return {
        "misspell": rng.random() < 0.15 + 0.25 * production,
        "abbrev": rng.random() < 0.1 + 0.35 * production,
        "typo_rate": rng.choice([0.0, 0.0, 0.0, 0.03, 0.06]) if rng.random() > production else rng.choice([0.03, 0.06, 0.1]),
        "no_apostrophes": rng.random() < 0.15 + 0.4 * production,
        "no_punct": rng.random() < 0.08 + 0.45 * production,
        "lower": rng.random() < 0.15 + 0.5 * production,
    }


def fill_date(rng: Random, before: date) -> str:
    d = before - timedelta(days=rng.randrange(2, 25))
    return rng.choice([f"{MONTHS[d.month - 1]} {d.day}", f"{d.day} {MONTHS[d.month - 1]}", f"{d.day}/{d.month}",
                       d.isoformat(), f"the {d.day}{'th' if 10 <= d.day % 100 <= 20 else {1: 'st', 2: 'nd', 3: 'rd'}.get(d.day % 10, 'th')}"])


def fill_amount(rng: Random) -> str:
    value = rng.choice([19, 24, 35, 49, 59, 79, 89, 120, 149, 199]) + rng.choice([0, 0.5, 0.99])
    return rng.choice([f"${value:.2f}", f"£{value:.2f}", f"€{value:.2f}".replace(".", ","), f"{value:.2f} EUR", f"${value:.0f}"])


def fill_phone(rng: Random) -> str:
    """Fictional numbers only: NANP 555-0100 .. 555-0199 and the UK's 020 7946 0xxx drama range."""
    n, m = rng.randrange(100), rng.randrange(1000)
    area = rng.choice(["212", "312", "415", "617"])
    return rng.choice([f"({area}) 555-01{n:02d}", f"{area}-555-01{n:02d}", f"+1 {area} 555 01{n:02d}",
                       f"020 7946 0{m:03d}", f"+44 20 7946 0{m:03d}"])


def fill_email(rng: Random, first: str, last: str) -> str:
    domain = rng.choice(["example.com", "example.org"])
    return rng.choice([f"{first}.{last}@{domain}", f"{first[0]}{last}@{domain}", f"{first}{rng.randrange(10, 99)}@{domain}"]).lower()


def written_id(rng: Random, order_id: str) -> str:
    letter, digits = order_id[0], order_id[2:]
    form = rng.choices([f for f, _ in ID_FORMS], [w for _, w in ID_FORMS])[0]
    return form.format(L=letter, l=letter.lower(), D=digits)


def product_phrase(rng: Random, product: str) -> str:
    surface = rng.choice(CATALOGUE[product])
    return rng.choice(["the ", "the ", "my ", ""]) + surface


def cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def norm_key(text: str) -> str:
    """Case, spacing and punctuation do not make a new text."""
    return " ".join(re.sub(r"[^\w\s]", " ", text.casefold()).split())


def shingle_set(text: str) -> frozenset[str]:
    """Character 5-grams as finetune_loop.core.data.dedup takes them (casefold, apostrophes dropped,
    other punctuation a space), restated here so this script needs the standard library only."""
    text = " ".join(text.casefold().split())
    text = " ".join(re.sub(r"[^\w\s]", " ", re.sub(r"['\u2019\u2018`]", "", text)).split()) or text
    return frozenset({text} if len(text) <= 5 else {text[i: i + 5] for i in range(len(text) - 4)})


def similarity(a: frozenset, b: frozenset) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


# --------------------------------------------------------------------------------------------
# 3. Composing one ticket
# --------------------------------------------------------------------------------------------


def compose(rng: Random, issue: str, template: tuple[str, bool], written: date, production: float,
            with_id: bool, with_product: bool) -> dict:
    """One ticket of `issue` from `template`: its text, its target and what the card counts."""
    body, needs_product = template
    style = ticket_style(rng, production)
    order_id = f"{rng.choice(ORDER_LETTERS)}-{rng.randrange(10000, 100000)}" if with_id else None
    has_other = "{other}" in body.lower()
    product = rng.choice(PRODUCTS) if needs_product or with_product else None
    other = None
    if has_other:
        if issue == "wrong_item" and rng.random() < 0.3:
            other = None  # the wrong delivery is no catalogue product
        else:
            other = rng.choice([p for p in PRODUCTS if p != product])
    parts = [body]
    if product is not None and not has_other and issue in DISTRACTORS and rng.random() < DISTRACTOR_SHARE:
        other = rng.choice([p for p in PRODUCTS if p != product])
        parts.append(rng.choice(DISTRACTORS[issue]))
    if rng.random() < 0.3 - 0.2 * production:
        parts.append(rng.choice(CONTEXT))
    pii = rng.random() < 0.2
    if pii:
        parts.append(rng.choice(PII_SENTENCES))
    # Where the order id goes: inside the {order} phrase, or a sentence of its own before or after.
    has_order_slot = "{order}" in body.lower()
    id_place = None
    if order_id is not None:
        id_place = rng.choice(["inline", "inline", "before", "after"]) if has_order_slot else rng.choice(["before", "after", "after"])
        if id_place == "before":
            parts.insert(0, rng.choice(ID_BEFORE))
        elif id_place == "after":
            parts.append(rng.choice(ID_AFTER))
    if rng.random() < 0.5 - 0.3 * production:
        parts.insert(0, rng.choice(OPENERS))
    if rng.random() < 0.5 - 0.3 * production:
        parts.append(rng.choice(CLOSERS))
    skeleton = add_noise(rng, " ".join(parts), style)

    first, last = rng.choice(FIRST), rng.choice(LAST)
    item = product_phrase(rng, product) if product else rng.choice(GENERIC_ITEMS)
    other_text = product_phrase(rng, other) if other else rng.choice(WRONG_THINGS)
    if id_place == "inline":
        order_text = rng.choice(ORDER_INLINE).format(id=written_id(rng, order_id))
    else:
        order_text = rng.choice(ORDER_WITHOUT_ID)
    slots = {
        "order": order_text, "Order": cap(order_text), "item": item, "Item": cap(item), "other": other_text,
        "Other": cap(other_text), "part": rng.choice(PARTS), "dmg": rng.choice(DAMAGE), "days": str(rng.randrange(5, 30)),
        "date": fill_date(rng, written), "amount": fill_amount(rng), "email": fill_email(rng, first, last),
        "phone": fill_phone(rng), "name": first, "id": written_id(rng, order_id) if order_id else "",
    }
    text = SLOT_RE.sub(lambda m: slots[m.group()[1:-1]], skeleton)
    if style["lower"]:
        text = text.lower()
    text = "\n".join(" ".join(line.split()) for line in text.split("\n"))
    target = {"order_id": order_id, "product": product, "issue": issue}
    return {"text": text, "target": target, "two_products": other is not None, "pii": pii}


def random_time(rng: Random, start: date, end: date) -> datetime:
    day = start + timedelta(days=rng.randrange((end - start).days + 1))
    hour = rng.choices(range(24), [1, 1, 1, 1, 1, 2, 3, 5, 8, 10, 10, 9, 8, 9, 9, 8, 7, 6, 6, 6, 5, 4, 3, 2])[0]
    return datetime(day.year, day.month, day.day, hour, rng.randrange(60), rng.randrange(60))


def iso(ts: datetime) -> str:
    return ts.strftime("%Y-%m-%dT%H:%M:%SZ")


class Registry:
    """Every text written so far, over all files: no text may repeat (up to case, spacing and
    punctuation), and two texts from the same template stay below MAX_SIMILARITY."""

    def __init__(self) -> None:
        self.keys: set[str] = set()
        self.shingles: dict[tuple[str, int], list[frozenset]] = {}

    def admit(self, row: dict, template_key: tuple[str, int]) -> bool:
        text = row["text"]
        words = len(text.split())
        if not MIN_WORDS <= words <= MAX_WORDS:
            return False
        keys = {norm_key(text), norm_key(text.replace("'", ""))}
        if keys & self.keys:
            return False
        # The text names exactly what the target says: the complained-about product (and, on a
        # two-product ticket, one other), the order id and nothing that looks like another id.
        named = products_named(text)
        want = [row["target"]["product"]] if row["target"]["product"] else []
        if row["target"]["product"] not in (named or [None]) or len(named) > len(want) + row["two_products"]:
            return False
        if order_ids_named(text) != ([row["target"]["order_id"]] if row["target"]["order_id"] else []):
            return False
        mine = shingle_set(text)
        same_template = self.shingles.setdefault(template_key, [])
        if any(similarity(mine, other) >= MAX_SIMILARITY for other in same_template):
            return False
        self.keys |= keys
        same_template.append(mine)
        return True


def draw(rng: Random, registry: Registry, issue: str, decks: dict, written: date, production: float = 0.0) -> dict:
    # Decided once per row, not per attempt: a redraw (a repeated or too similar text) must not
    # favour the shapes that vary more, or the later files would have fewer null order ids.
    with_id = rng.random() >= NO_ORDER_ID[issue]
    with_product = rng.random() >= NO_PRODUCT[issue]
    while True:
        index = decks[issue].draw()
        for _ in range(20):  # then another template: a short one without id or product has few variants
            row = compose(rng, issue, TEMPLATES[issue][index], written, production, with_id, with_product)
            if registry.admit(row, (issue, index)):
                return row


def build_labelled(rng: Random, registry: Registry, counts: dict, start: date, end: date, prefix: str) -> list[dict]:
    decks = {issue: Deck(rng, range(len(TEMPLATES[issue]))) for issue in ISSUES}
    rows = []
    for issue in ISSUES:
        for _ in range(counts[issue]):
            ts = random_time(rng, start, end)
            rows.append({**draw(rng, registry, issue, decks, ts.date()), "ts": ts})
    rows.sort(key=lambda r: (r["ts"], r["text"]))
    for i, r in enumerate(rows, start=1):
        r["id"] = f"{prefix}-{i:05d}"
    return rows


# Production traffic: the share of late deliveries grows (a carrier backlog from week 3), the rest
# keep their proportions; the style moves toward phone-keyboard text week by week.
LATE_SHARE = [0.19, 0.19, 0.24, 0.3, 0.36, 0.4, 0.44, 0.48]


def week_counts(week: int) -> dict[str, int]:
    """Rows per issue in one production week (largest remainder)."""
    others = {i: n for i, n in TICKET_COUNTS.items() if i != "late"}
    scale = (1 - LATE_SHARE[week]) / sum(others.values())
    raw = {"late": LATE_SHARE[week] * PROD_ROWS_PER_WEEK, **{i: n * scale * PROD_ROWS_PER_WEEK for i, n in others.items()}}
    counts = {i: int(v) for i, v in raw.items()}
    for i in sorted(raw, key=lambda i: (-(raw[i] - counts[i]), i))[: PROD_ROWS_PER_WEEK - sum(counts.values())]:
        counts[i] += 1
    return {i: counts[i] for i in ISSUES}


def build_traffic(rng: Random, registry: Registry) -> list[dict]:
    decks = {issue: Deck(rng, range(len(TEMPLATES[issue]))) for issue in ISSUES}
    rows = []
    for week in range(WEEKS):
        for issue, n in week_counts(week).items():
            for _ in range(n):
                ts = random_time(rng, PROD_START + timedelta(days=7 * week), PROD_START + timedelta(days=7 * week + 6))
                rows.append({**draw(rng, registry, issue, decks, ts.date(), production=week / (WEEKS - 1)), "ts": ts, "week": week + 1})
    rows.sort(key=lambda r: (r["ts"], r["text"]))
    for i, r in enumerate(rows, start=1):
        r["request_id"] = f"r-{i:06d}"
    return rows


def render() -> dict:
    """The three files' text, plus the generator's own view of the rows (for the counts)."""
    registry = Registry()
    tickets = build_labelled(Random(SEED), registry, TICKET_COUNTS, TICKET_START, TICKET_END, "x")
    pool = build_labelled(Random(POOL_SEED), registry, POOL_COUNTS, POOL_START, POOL_END, "xp")
    traffic = build_traffic(Random(PROD_SEED), registry)

    def labelled(rows: list[dict]) -> str:
        return "".join(json.dumps({"id": r["id"], "text": r["text"], "target": r["target"], "source": SOURCE,
                                   "created_at": iso(r["ts"])}, ensure_ascii=False) + "\n" for r in rows)

    traffic_text = "".join(json.dumps({"request_id": r["request_id"], "timestamp": iso(r["ts"]), "text": r["text"]},
                                      ensure_ascii=False) + "\n" for r in traffic)
    return {"files": {TICKETS_NAME: labelled(tickets), POOL_NAME: labelled(pool), TRAFFIC_NAME: traffic_text},
            "rows": {TICKETS_NAME: tickets, POOL_NAME: pool, TRAFFIC_NAME: traffic}}


def print_stats(rows: dict) -> None:
    for name in (TICKETS_NAME, POOL_NAME):
        data = rows[name]
        n = len(data)
        issues = Counter(r["target"]["issue"] for r in data)
        print(f"{name}: {n} rows")
        for issue in ISSUES:
            print(f"  {issue:15s} {issues[issue]}")
        no_id = sum(r["target"]["order_id"] is None for r in data)
        no_product = sum(r["target"]["product"] is None for r in data)
        words = [len(r["text"].split()) for r in data]
        print(f"  order_id null  {no_id} ({no_id / n:.1%})")
        print(f"  product null   {no_product} ({no_product / n:.1%})")
        print(f"  both null      {sum(r['target']['order_id'] is None and r['target']['product'] is None for r in data)}")
        print(f"  two products named {sum(r['two_products'] and len(products_named(r['text'])) == 2 for r in data)}")
        print(f"  with e-mail {sum('@' in r['text'] for r in data)}, with a PII sentence {sum(r['pii'] for r in data)}")
        print(f"  all lowercase {sum(r['text'] == r['text'].lower() for r in data)}")
        print(f"  products used {len({r['target']['product'] for r in data} - {None})} of {len(PRODUCTS)}")
        print(f"  words min {min(words)} median {statistics.median(words):g} max {max(words)}")
    traffic = rows[TRAFFIC_NAME]
    print(f"{TRAFFIC_NAME}: {len(traffic)} rows (hidden issue per week, known to the generator only)")
    for week in range(1, WEEKS + 1):
        kinds = Counter(r["target"]["issue"] for r in traffic if r["week"] == week)
        print(f"  week {week}: rows={sum(kinds.values())} " + " ".join(f"{i}={kinds[i]}" for i in ISSUES))
    words = [len(r["text"].split()) for r in traffic]
    lower = sum(r["text"] == r["text"].lower() for r in traffic)
    print(f"  words min {min(words)} median {statistics.median(words):g} max {max(words)}; all lowercase {lower}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", nargs="?", type=Path, default=HERE, help="directory to write the three files into (default: here)")
    parser.add_argument("--check", action="store_true", help="do not write; compare the files in out_dir with a fresh run")
    parser.add_argument("--quiet", action="store_true", help="do not print the counts")
    args = parser.parse_args(argv)
    result = render()
    if args.check:
        ok = True
        for name, text in result["files"].items():
            path = args.out_dir / name
            same = path.is_file() and path.read_bytes() == text.encode("utf-8")
            ok &= same
            print(f"{name}: {'identical to a fresh run' if same else 'DIFFERS from a fresh run'}")
    else:
        args.out_dir.mkdir(parents=True, exist_ok=True)
        for name, text in result["files"].items():
            (args.out_dir / name).write_bytes(text.encode("utf-8"))
        ok = True
        if not args.quiet:
            print(f"wrote {', '.join(str(args.out_dir / name) for name in result['files'])}")
    if not args.quiet:
        print_stats(result["rows"])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
