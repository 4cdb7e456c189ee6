"""PII scrubbing for training text: replace personal data with typed placeholders.

Fine-tuning data comes from real support tickets, and a model trained on them can memorise and
later regurgitate whatever personal data they contain. `scrub_pii` replaces the kinds of PII that
can be recognised reliably from their shape plus a check (a checksum, a numbering plan, a valid
address range) with a placeholder naming the kind, so the model still learns "the customer gave a
card number here" without learning the number.

Matching runs on a normalised *view* of the text, replacement on the text itself. The view is the
NFKC form with invisible characters removed (zero-width space/non-joiner/joiner U+200B-U+200D, word
joiner U+2060, BOM U+FEFF, plus soft hyphen, LRM/RLM and U+2061-U+2064), so ``jane\u200b.doe@...``,
``jane.doe＠example.com``, full-width digits ``４１１１ …`` and NBSP-separated groups (NBSP is a
space under NFKC) look to the detectors exactly like their plain forms. `_matching_view` keeps, for
every character of the view, the span of the original text it came from, and each match is
replaced over that original span. Why not output the normalised text: NFKC is lossy for text that
holds no PII at all (full-width CJK punctuation, ligatures, superscripts, compatibility characters
become something the customer did not write), which would change training rows for no privacy
gain and break "text without PII comes back unchanged", on which `scrub_examples` relies to leave
untouched rows alone. Plain ASCII (and already-normalised text without invisible characters) skips
the mapping, so the common case costs nothing extra.

What is detected, and how each candidate is validated (in the order the passes run):

* ``[EMAIL]`` -- ``local@domain.tld``: a dotted domain whose last label is 2+ letters. No
  further validation: the shape alone is specific enough. Runs first, so the digits of an address
  such as ``jane.4111111111111111@example.com`` are never looked at by the number passes.
* ``[IBAN]`` -- two letters, two check digits and 11-30 letters/digits, compact or printed in
  groups of four (separated by 1-3 spaces or by one ``-``, ``.`` or ``_``), either case. Accepted only if `stdnum.iban` validates it: the ISO 13616 mod-97
  checksum plus the country's registered length and BBAN structure (python-stdnum's extra
  per-country checks are skipped: some look bank codes up in a registry frozen at release time and
  reject real IBANs). Runs before the card pass because the digit groups of an IBAN can themselves
  pass Luhn.
* ``[CARD]`` -- 13-19 digits, first digit not 0, contiguous or printed as a 4-digit group followed
  by groups of 3-6 digits separated by 1-3 spaces or by one ``-``, ``.`` or ``_``
  (``4111 1111 1111 1111``, ``3782-822463-10005``, ``4111.1111.1111.1111``; NBSP is a space in the
  view), accepted ONLY if the Luhn checksum passes. A 16-digit order number that
  fails Luhn is left alone.
* ``[IP]`` -- IPv6 (``2001:db8::1``, ``::1``, ``::ffff:192.0.2.1``) and IPv4 (``192.168.1.10``),
  each validated by the stdlib `ipaddress` module, so ``999.999.1.1`` (octets > 255) and IPv4
  with leading zeros are not addresses. A dotted quad glued to a letter or to a fifth part
  (``v1.2.3.4``, ``1.2.3.4.5``) is read as a version string, but a bare ``1.2.3.4`` IS a valid
  IPv4 address and is scrubbed.
* ``[PHONE]`` -- found by Google's libphonenumber (the `phonenumbers` package, metadata bundled,
  works offline) with `PhoneNumberMatcher`, which already refuses dates, times and
  slash-separated numbers. A match is accepted when any of these holds:

  - it is a *valid* number (real numbering-plan ranges) read with one of `PHONE_REGIONS` as the
    default region -- international (``+44 20 7946 0958``, ``0049 30 1234567``) and national
    formats of those regions (``030 1234567``, ``07911 123456``, ``(212) 555-0123``);
  - it is written with an explicit ``+country code`` and has a possible length for that country
    (``+1 555-0100``: the 555-01xx fiction range is not "valid", but nobody types ``+1`` before a
    non-phone number);
  - it is a possible North-American number *formatted* like one: ``(555) 010-0199``,
    ``555.010.0123``, ``555-010-0123``. The formatting is what makes it a phone number; the same
    ten digits run together are only taken if they are a valid number.

  Only digit clusters with at least 7 digits that are not dates are handed to the matcher (see
  `_phone_windows`), which is what keeps ~10k tickets at about 1.5 s on one core.

  Phones run last: by then cards, IBANs and IPs are placeholders, so a card number cannot be
  half-eaten as a phone and an IP cannot be read as a dotted phone number.

Card and phone candidates glued to an identifier prefix (``#4111111111111111``,
``INV-0301234567``) are treated as reference numbers and kept.

What is deliberately left alone: order/ticket numbers (``#A12345``, ``order 1234567890123456``
when it fails Luhn), dates (``2026-01-05``, ``05/01/2026``), times, prices (``$1,299.99``),
version numbers (``5.0.1``, ``v2.3.4``), quantities and durations (``3 items``, ``24h``), and
PII that has no checkable shape: names, postal addresses, obfuscated e-mails (``jane at example
dot com``), national ID numbers.

Limitations: Luhn and numbering plans are statistical filters, not proof. A bare 13-19 digit
reference number passes Luhn by chance about one time in ten and becomes ``[CARD]``. Bare digit
runs that fit a default region's plan become ``[PHONE]``: measured on random reference numbers,
about 45 % of ten-digit numbers not starting with 0 are valid US numbers and about 70 % of 7-12
digit numbers starting with 0 are valid German ones. That is the price of catching
``my number is 07911123456``; for training text, losing a reference number costs little, leaking
a phone number does not. A zero-width character used *as* a group separator joins the groups
(``4111\u200b1111 1111 1111`` reads as ``41111111 1111 1111``, not a card shape) and is missed;
digits of other scripts (Arabic-Indic, Devanagari), which NFKC keeps, are not read as digits by
the checksum passes. National-format numbers of countries outside `PHONE_REGIONS` written
without ``+``/``00`` are missed, as are card numbers printed in unusual groupings and two phone
numbers separated only by a space (libphonenumber reads them as one over-long number).

Placeholders contain no digits, ``@`` or ``:``, so scrubbing is idempotent: a second pass finds
nothing. Plain Python; deliberately no Dagster import so it can run anywhere (curation, notebooks,
tests). All regexes are compiled once at import.
"""

from __future__ import annotations

import ipaddress
import json
import re
import unicodedata
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace

from phonenumbers import Leniency, PhoneMetadata, PhoneNumberMatcher
from stdnum import iban as _stdnum_iban
from stdnum import luhn as _stdnum_luhn

from finetune_loop.core.common.examples import Example
from finetune_loop.core.common.kinds import kind_of
from finetune_loop.core.common.spec import TaskSpec

PII_KINDS = ("email", "phone", "card", "iban", "ip")

PLACEHOLDERS = {
    "email": "[EMAIL]",
    "phone": "[PHONE]",
    "card": "[CARD]",
    "iban": "[IBAN]",
    "ip": "[IP]",
}

# Default regions for numbers written without a country code. Each region is one extra matcher
# pass (cost) and one extra national numbering plan that a reference number could accidentally
# fit (false positives), so the list is kept to the markets the tickets mostly come from.
# Numbers written with "+CC" are found whatever this list says, "00CC" ones through any region
# here that dials 00 (GB, DE, FR).
PHONE_REGIONS = ("US", "GB", "DE", "FR")


@dataclass(frozen=True)
class ScrubResult:
    text: str
    counts: dict[str, int]  # kind -> replacements made; only kinds that were found


# --- e-mail ------------------------------------------------------------------------------------
# Local part: word chars and . % + - (\w is Unicode-aware, so internationalised local parts work).
# The lookbehind stops the match from starting in the middle of a token. Domain labels cannot
# contain dots, so `(?:[\w-]+\.)+` cannot backtrack catastrophically; the TLD is letters only,
# which keeps a sentence-final "." out of the match.
_EMAIL_RE = re.compile(r"(?<![\w.%+-])[\w.%+-]+@(?:[\w-]+\.)+[^\W\d_]{2,63}(?![\w-])")

# --- digit-group separators (cards, IBANs) -------------------------------------------------------
# Matched on the normalised view, where NBSP and the other Unicode spaces are already " ": one to
# three spaces, or one dash, dot or underscore ("4111.1111.1111.1111", "DE89-3704-...").
_GROUP_SEP = r"(?: {1,3}|[-._])"

# --- IBAN --------------------------------------------------------------------------------------
# Country code + check digits, then either the compact form or the printed form (groups of four
# separated by `_GROUP_SEP`, the last group 1-4). The printed form is greedy and can run into a
# following four-letter word ("BE68 5390 0754 7034 from"), so `_find_ibans` tries the candidate's
# group boundaries from longest to shortest and keeps the longest prefix that validates. Letters
# are matched in either case because customers type IBANs in lowercase too; `stdnum` upper-cases.
_IBAN_RE = re.compile(
    r"(?<![A-Za-z0-9])[A-Za-z]{2}\d{2}"
    r"(?:[A-Za-z0-9]{11,30}|(?:" + _GROUP_SEP + r"[A-Za-z0-9]{4}){2,7}(?:" + _GROUP_SEP + r"[A-Za-z0-9]{1,4})?)"
    r"(?![A-Za-z0-9])"
)
_IBAN_GROUP_END_RE = re.compile(r"[A-Za-z0-9](?=[ ._-]|$)")
_IBAN_SEPARATORS_RE = re.compile(r"[ ._-]")

# --- payment cards -----------------------------------------------------------------------------
# Maximal runs of digit groups joined by `_GROUP_SEP`, not glued to letters, digits or a leading
# "+" (a "+" means a phone number). Which consecutive groups form the card is decided in
# `_find_cards`, because a run can contain a card plus a neighbouring number ("... 1111 2 items").
_DIGIT_RUN_RE = re.compile(r"(?<![\w+])\d+(?:" + _GROUP_SEP + r"\d+)*(?!\w)")
_DIGIT_GROUP_RE = re.compile(r"\d+")

# --- IP addresses ------------------------------------------------------------------------------
# IPv4: four dotted parts of 1-3 digits, not glued to a word (v1.2.3.4) and not part of a longer
# dotted number (1.2.3.4.5); the ranges are checked by `ipaddress`, not by the regex.
_IPV4_RE = re.compile(r"(?<!\w)(?<!\d\.)\d{1,3}(?:\.\d{1,3}){3}(?!\.?\d)(?!\w)")
# IPv6: hex groups with at least two colons, optionally ending in an embedded IPv4. The shape is
# loose on purpose (it admits "::" compression); `ipaddress.IPv6Address` does the real check,
# which rejects times (10:30:00) and MAC addresses (00:1a:2b:3c:4d:5e).
_IPV6_RE = re.compile(
    r"(?<![\w:.])(?:[0-9A-Fa-f]{0,4}:){2,7}(?:(?:\d{1,3}\.){3}\d{1,3}|[0-9A-Fa-f]{1,4})?"
    r"(?:%[\w-]+)?"  # zone id (fe80::1%eth0) is part of the address
    r"(?![\w:%]|\.\w)"
)

# --- phones ------------------------------------------------------------------------------------
# PhoneNumberMatcher costs ~0.3 ms per region per 100 characters, and almost every ticket has a
# date or a reference number in it, so running it over whole texts made phones 95 % of the
# scrubbing time. Instead, find digit clusters that could be a phone number (7+ digits joined by
# the separators phone numbers are written with), drop the ones that are plainly dates, and run
# the matcher only on a small window around each remaining cluster.
_PHONE_CLUSTER_RE = re.compile(r"[+(]?\d(?:[ \t().\-/\[\]~]{0,4}\d)*")
_DATE_RE = re.compile(r"\d{4}([-/.])\d{1,2}\1\d{1,2}|\d{1,2}([-/.])\d{1,2}\2\d{2,4}")
_MIN_PHONE_DIGITS = 7  # shortest number any of the default plans (or a "+CC" number) can have
# Context kept on each side of a cluster: the matcher looks at the neighbouring characters
# (a letter or currency sign glued to the digits means "not a phone") and at a trailing
# extension ("ext. 1234"). The window is widened to whole tokens so no number is cut in two.
_WINDOW_CONTEXT = 12
_WINDOW_TOKEN_LIMIT = 64
_NANP_SHAPE_RE = re.compile(r"(?:\+?1[ .-]?)?(?:\(\d{3}\) ?|\d{3}[ .-])\d{3}[ .-]\d{4}")
# Trunk prefix of each default region, from libphonenumber's own metadata: national-format numbers
# of a "0" region start with 0, NANP ("1") numbers never do. Used to skip matcher passes that
# cannot find anything (see `_phone_windows`).
_TRUNK_PREFIX = {region: PhoneMetadata.metadata_for_region(region).national_prefix for region in PHONE_REGIONS}

# --- the matching view ---------------------------------------------------------------------------
# Invisible characters removed from the view before matching: zero-width space / non-joiner /
# joiner, word joiner, BOM (the ones named in issue 14), plus the soft hyphen, the LRM/RLM marks and
# the invisible operators U+2061-U+2064, which render as nothing just the same.
_INVISIBLE = frozenset("\u200b\u200c\u200d\u2060\ufeff\u00ad\u200e\u200f\u2061\u2062\u2063\u2064")
_INVISIBLE_RE = re.compile("[" + "".join(sorted(_INVISIBLE)) + "]")


@dataclass(frozen=True)
class _View:
    """The text the detectors match on, and for each of its characters the span of the original
    text it came from (`starts[j]`, `ends[j]`). `starts is None` means the view IS the text."""

    text: str
    starts: list[int] | None = None
    ends: list[int] | None = None

    def original(self, start: int, end: int) -> tuple[int, int]:
        if self.starts is None:
            return start, end
        return self.starts[start], self.ends[end - 1]


def _matching_view(text: str) -> _View:
    """NFKC of `text` with invisible characters removed, mapped back to `text`'s offsets.

    Normalised piecewise: a base character plus the combining marks after it is one piece (NFKC
    composes within such a piece, never across pieces), and every character NFKC makes of a piece
    maps back to the whole piece. A match therefore always covers whole original characters, and an
    invisible character inside a match is replaced with it."""
    if text.isascii() or (unicodedata.is_normalized("NFKC", text) and not _INVISIBLE_RE.search(text)):
        return _View(text)
    pieces: list[tuple[int, int]] = []  # original (start, end) of each piece
    for index, char in enumerate(text):
        if char in _INVISIBLE:
            continue
        if pieces and unicodedata.combining(char) and pieces[-1][1] == index:
            pieces[-1] = (pieces[-1][0], index + 1)
        else:
            pieces.append((index, index + 1))
    out: list[str] = []
    starts: list[int] = []
    ends: list[int] = []
    for start, end in pieces:
        piece = text[start:end]
        if end - start > 1:
            piece = "".join(c for c in piece if c not in _INVISIBLE)
        normalised = unicodedata.normalize("NFKC", piece)
        out.append(normalised)
        starts.extend([start] * len(normalised))
        ends.extend([end] * len(normalised))
    return _View("".join(out), starts, ends)


# --- shared ------------------------------------------------------------------------------------
# A number glued to "#" or to a word plus dash/underscore ("INV-", "order_") is somebody's
# identifier, not a card or phone number, even when it passes Luhn or fits a numbering plan.
_IDENTIFIER_PREFIX_RE = re.compile(r"(?:#|[^\W\d_]+[-_])$")
_IDENTIFIER_LOOKBACK = 24


def _after_identifier_prefix(text: str, start: int) -> bool:
    return _IDENTIFIER_PREFIX_RE.search(text, max(0, start - _IDENTIFIER_LOOKBACK), start) is not None


def _find_emails(text: str) -> list[tuple[int, int]]:
    if "@" not in text:
        return []
    return [m.span() for m in _EMAIL_RE.finditer(text)]


def _valid_iban(candidate: str) -> bool:
    # check_country=False: skip python-stdnum's national checks, some of which look the bank code
    # up in a registry frozen at release time (the textbook Belgian IBAN BE68 5390 0754 7034 fails
    # it). Mod-97 + the country's length and BBAN structure are already a strong filter, and a
    # missed IBAN leaks PII while a rare false positive only hides a reference number.
    try:
        _stdnum_iban.validate(_IBAN_SEPARATORS_RE.sub("", candidate), check_country=False)
    except ValueError:  # stdnum.exceptions.ValidationError subclasses ValueError
        return False
    return True


def _find_ibans(text: str) -> list[tuple[int, int]]:
    spans = []
    for m in _IBAN_RE.finditer(text):
        candidate = m.group()
        # Every end of an alphanumeric group is a possible end of the IBAN; try longest first.
        ends = [g.end() for g in _IBAN_GROUP_END_RE.finditer(candidate)]
        for end in reversed(ends):
            if end < 15:  # shortest IBAN (Norway) is 15 characters
                break
            if _valid_iban(candidate[:end]):
                spans.append((m.start(), m.start() + end))
                break
    return spans


def _is_card(digits: str) -> bool:
    return 13 <= len(digits) <= 19 and digits[0] != "0" and _stdnum_luhn.is_valid(digits)


def _find_cards(text: str) -> list[tuple[int, int]]:
    spans = []
    for run in _DIGIT_RUN_RE.finditer(text):
        if len(run.group()) < 13:
            continue
        groups = [(g.start() + run.start(), g.end() + run.start(), g.group()) for g in _DIGIT_GROUP_RE.finditer(run.group())]
        i = 0
        while i < len(groups):
            # Candidate ends j: consecutive groups i..j-1 holding at most 19 digits (the longest
            # card), so the work per run stays linear however long the run of numbers is.
            ends = []
            digits = 0
            for j in range(i, len(groups)):
                digits += len(groups[j][2])
                if digits > 19:
                    break
                ends.append(j + 1)
            found = None
            # Longest candidate first. Printed cards start with a 4-digit group followed by groups
            # of 3-6 digits (4-4-4-4, 4-6-5, 4-6-4, 4-4-4-4-3); a single group must be the whole
            # number. That refuses phone-shaped runs ("555 010 0123 4567") and anything with 1-2
            # digit groups (dates, the "30" of "0049 30 1234567") even when Luhn passes by chance.
            for j in reversed(ends):
                parts = [g[2] for g in groups[i:j]]
                if len(parts) > 1 and (len(parts[0]) != 4 or not all(3 <= len(p) <= 6 for p in parts)):
                    continue
                if _is_card("".join(parts)):
                    found = j
                    break
            if found is None:
                i += 1
            else:
                if not _after_identifier_prefix(text, groups[i][0]):
                    spans.append((groups[i][0], groups[found - 1][1]))
                i = found
    return spans


def _find_ips(text: str) -> list[tuple[int, int]]:
    spans = []
    if ":" in text:
        for m in _IPV6_RE.finditer(text):
            candidate = m.group()
            # Require a digit: hex-only words joined by "::" are far more often code
            # ("abc::def") than an address.
            if not any(c.isdigit() for c in candidate):
                continue
            try:
                ipaddress.IPv6Address(candidate)
            except ValueError:
                continue
            spans.append(m.span())
    if "." in text:
        for m in _IPV4_RE.finditer(text):
            if any(s <= m.start() < e for s, e in spans):
                continue  # already inside an IPv6 such as ::ffff:192.0.2.1
            try:
                ipaddress.IPv4Address(m.group())  # rejects octets > 255 and leading zeros
            except ValueError:
                continue
            spans.append(m.span())
    return spans


def _phone_windows(text: str) -> list[tuple[int, int, tuple[str, ...]]]:
    """(start, end, regions) windows around the digit clusters that may be phone numbers.

    `regions` are the default regions worth a VALID matcher pass in that window. Clusters that
    start with "+" carry their country code and need none (the POSSIBLE pass covers them). In the
    national format of trunk-prefix-0 regions (GB, DE, FR) -- and in their "00" international
    prefix -- a number starts with 0, so those passes only run when some digit group of the
    cluster starts with 0; NANP numbers never start with 0, so the US pass runs when some group
    does not. This keeps the expensive matcher to about one pass per cluster in typical text
    (and drops matches like DE reading "49..." as a country code without any prefix)."""
    windows: list[tuple[int, int, set[str]]] = []
    for m in _PHONE_CLUSTER_RE.finditer(text):
        cluster = m.group()
        if sum(c.isdigit() for c in cluster) < _MIN_PHONE_DIGITS or _DATE_RE.fullmatch(cluster):
            continue
        regions: set[str] = set()
        if not cluster.startswith("+"):
            group_leads = {g.group()[0] for g in _DIGIT_GROUP_RE.finditer(cluster)}
            for region in PHONE_REGIONS:
                trunk = _TRUNK_PREFIX[region]
                if trunk == "0":
                    needed = "0" in group_leads
                elif trunk == "1":
                    needed = bool(group_leads - {"0"})
                else:  # no trunk prefix (e.g. IT, ES): no cheap rule, always try
                    needed = True
                if needed:
                    regions.add(region)
        lo = max(0, m.start() - _WINDOW_CONTEXT)
        floor = max(0, lo - _WINDOW_TOKEN_LIMIT)
        while lo > floor and not text[lo - 1].isspace():
            lo -= 1
        hi = min(len(text), m.end() + _WINDOW_CONTEXT)
        ceiling = min(len(text), hi + _WINDOW_TOKEN_LIMIT)
        while hi < ceiling and not text[hi].isspace():
            hi += 1
        if windows and lo <= windows[-1][1]:
            prev_lo, prev_hi, prev_regions = windows[-1]
            windows[-1] = (prev_lo, max(prev_hi, hi), prev_regions | regions)
        else:
            windows.append((lo, hi, regions))
    # Keep the configured region order so results do not depend on set iteration order.
    return [(lo, hi, tuple(r for r in PHONE_REGIONS if r in regions)) for lo, hi, regions in windows]


def _find_phones(text: str) -> list[tuple[int, int]]:
    spans = _find_phone_candidates(text)
    return [(start, end) for start, end in spans if not _after_identifier_prefix(text, start)]


def _find_phone_candidates(text: str) -> list[tuple[int, int]]:
    spans = []
    for lo, hi, regions in _phone_windows(text):
        window = text[lo:hi]
        for region in regions:
            for m in PhoneNumberMatcher(window, region, leniency=Leniency.VALID):
                spans.append((lo + m.start, lo + m.end))
        # Numbers that are not in a real allocated range but are unmistakably written as phone
        # numbers (fiction ranges like 555-01xx, ranges newer than the bundled metadata). POSSIBLE
        # only checks the length, so the written shape has to carry the evidence: an explicit
        # "+" country code, or the NANP layout. One pass is enough: "+" numbers ignore the default
        # region, and the NANP layout only means something with US as the default region. (A
        # valid "+" number is always possible, so this pass alone covers "+" clusters.)
        if "+" in window or _NANP_SHAPE_RE.search(window):
            for m in PhoneNumberMatcher(window, "US", leniency=Leniency.POSSIBLE):
                raw = m.raw_string
                if raw.startswith("+") or _NANP_SHAPE_RE.fullmatch(raw):
                    spans.append((lo + m.start, lo + m.end))
    return spans


def _non_overlapping(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Leftmost-longest selection: different regions or passes can find overlapping readings of
    the same digits (e.g. "0049 30 1234567" as a whole vs its tail "1234567")."""
    chosen: list[tuple[int, int]] = []
    last_end = -1
    for start, end in sorted(set(spans), key=lambda s: (s[0], -s[1])):
        if start >= last_end:
            chosen.append((start, end))
            last_end = end
    return chosen


# Order matters (see the module docstring): e-mails first, then the checksum-validated numbers,
# then IPs, and phones -- the loosest detector -- last.
_PASSES: tuple[tuple[str, Callable[[str], list[tuple[int, int]]]], ...] = (
    ("email", _find_emails),
    ("iban", _find_ibans),
    ("card", _find_cards),
    ("ip", _find_ips),
    ("phone", _find_phones),
)


def scrub_pii(text: str) -> ScrubResult:
    """Replace e-mails, IBANs, payment cards, IP addresses and phone numbers in `text` with
    ``[EMAIL]``, ``[IBAN]``, ``[CARD]``, ``[IP]`` and ``[PHONE]``. Deterministic; idempotent."""
    found: dict[str, int] = {}
    view = _matching_view(text)
    for kind, finder in _PASSES:
        spans = _non_overlapping(finder(view.text))
        if not spans:
            continue
        placeholder = PLACEHOLDERS[kind]
        pieces = []
        previous = 0
        # The view maps monotonically onto the text, so non-overlapping view spans stay so.
        for start, end in (view.original(s, e) for s, e in spans):
            pieces.append(text[previous:start])
            pieces.append(placeholder)
            previous = end
        pieces.append(text[previous:])
        text = "".join(pieces)
        found[kind] = len(spans)
        view = _matching_view(text)
    counts = {kind: found[kind] for kind in PII_KINDS if kind in found}
    return ScrubResult(text=text, counts=counts)


def scrub_examples(examples: list[Example], spec: TaskSpec) -> tuple[list[Example], Counter]:
    """PII placeholders replace e-mails, phones, cards, IBANs and IPs before anything is compared
    or written, so no later file (suite, split, quarantine of duplicates) holds them. Generation
    targets are scrubbed too (a label from a fixed set cannot hold PII)."""
    counts: Counter = Counter()
    if not spec.curation.scrub_pii:
        return examples, counts
    scrubbed = []
    for example in examples:
        text = scrub_pii(example.text)
        counts.update(text.counts)
        label = ANSWER_SCRUBBERS[kind_of(spec).name](spec, example.label, counts)
        changed = text.counts or label != example.label
        scrubbed.append(replace(example, text=text.text, label=label) if changed else example)
    return scrubbed, counts


def scrub_answer(value: object) -> object:
    """A label or target of unknown format, scrubbed: a string holding a JSON object or array has
    its string values scrubbed (the JSON stays valid), any other string is scrubbed as text, and a
    non-string comes back as it is (validation quarantines it)."""
    if not isinstance(value, str):
        return value
    try:
        parsed = json.loads(value)
    except (ValueError, RecursionError):
        parsed = None
    return scrub_target(value, "json" if isinstance(parsed, (dict, list)) else "text", Counter())


def scrub_target(target: str, target_format: str, counts: Counter) -> str:
    """A generation target with PII replaced: the text, or a JSON target's string values."""
    if target_format == "text":
        result = scrub_pii(target)
        counts.update(result.counts)
        return result.text

    # JSON: scrub the string values, never the serialised text, so a placeholder can never break
    # the JSON (a phone number written as a JSON number is left alone: it is not text).
    def walk(value):
        if isinstance(value, str):
            result = scrub_pii(value)
            counts.update(result.counts)
            return result.text
        if isinstance(value, list):
            return [walk(v) for v in value]
        if isinstance(value, dict):
            return {k: walk(v) for k, v in value.items()}
        return value

    return json.dumps(walk(json.loads(target)), ensure_ascii=False, separators=(",", ":"))


def _label_unscrubbed(spec: TaskSpec, label: str, counts: Counter) -> str:
    # A label from a fixed set cannot hold PII.
    return label


def _scrub_target_of(spec: TaskSpec, target: str, counts: Counter) -> str:
    return scrub_target(target, spec.target_format, counts)


# How an answer is scrubbed, per task kind (core/common/kinds.py).
ANSWER_SCRUBBERS: dict[str, Callable[[TaskSpec, str, Counter], str]] = {
    "classification": _label_unscrubbed, "generation": _scrub_target_of,
}


# What evidence files (quarantine, duplicates, the production log's rejected lines) keep of a row.
EXCERPT_CHARS = 200


def scrubbed_excerpt(value) -> str | None:
    """`value` as text, PII scrubbed, cut to EXCERPT_CHARS (scrubbed first, so a cut can never leave
    half of a card number that the scrubber would no longer recognise)."""
    if value is None:
        return None
    if not isinstance(value, str):
        value = json.dumps(value, ensure_ascii=False, sort_keys=True, default=str)
    text = scrub_pii(value).text
    return text if len(text) <= EXCERPT_CHARS else text[: EXCERPT_CHARS - 1] + "…"
