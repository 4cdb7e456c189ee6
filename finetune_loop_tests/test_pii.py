"""PII scrubber: positives for every kind in ticket-like sentences, the look-alikes that must stay,
pass ordering, counts and idempotence. Values are the published test numbers (Visa/Mastercard/
Amex/Discover test cards, the IBAN registry's example IBANs, RFC 5737/3849 documentation
addresses, Ofcom/NANP fiction phone ranges)."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from finetune_loop.core.data.pii import PII_KINDS, ScrubResult, scrub_pii

PLACEHOLDER = {"email": "[EMAIL]", "phone": "[PHONE]", "card": "[CARD]", "iban": "[IBAN]", "ip": "[IP]"}

# (kind, sentence with one PII value in it, the PII value)
POSITIVES = [
    # e-mail
    ("email", "Please send the invoice to jane.doe@example.com.", "jane.doe@example.com"),
    ("email", "My login is JOHN.SMITH+billing@mail.example.co.uk, can you reset it?", "JOHN.SMITH+billing@mail.example.co.uk"),
    ("email", "Contact <support-user_1@sub.example.org> about the refund", "support-user_1@sub.example.org"),
    ("email", "the receipt went to jane.4111111111111111@example.com instead", "jane.4111111111111111@example.com"),
    # phone: the formats seen in tickets
    ("phone", "call me back on +1 555-0100 please", "+1 555-0100"),
    ("phone", "My number is (555) 010-0199.", "(555) 010-0199"),
    ("phone", "Our London office is +44 20 7946 0958, ask for Sam", "+44 20 7946 0958"),
    ("phone", "Berlin office: 0049 30 1234567!", "0049 30 1234567"),
    ("phone", "text me at 555.010.0123 when it ships", "555.010.0123"),
    ("phone", "Tel. +49 (0)30 1234567 (mornings only)", "+49 (0)30 1234567"),
    ("phone", "ring my mobile 07911 123456?", "07911 123456"),
    ("phone", "Vous pouvez me joindre au +33 1 23 45 67 89.", "+33 1 23 45 67 89"),
    ("phone", "the store number (212) 555-0123 never answers", "(212) 555-0123"),
    ("phone", "landline 030 1234567 is fine too", "030 1234567"),
    ("phone", "fax +1 (212) 555-0123 ext. 45 thanks", "+1 (212) 555-0123 ext. 45"),
    # payment cards (Luhn-valid test numbers)
    ("card", "I paid with 4111 1111 1111 1111 and got charged twice", "4111 1111 1111 1111"),
    ("card", "card number is 4111-1111-1111-1111.", "4111-1111-1111-1111"),
    ("card", "Please stop charging 4111111111111111!", "4111111111111111"),
    ("card", "the Mastercard 5555 5555 5555 4444 was declined", "5555 5555 5555 4444"),
    ("card", "my Amex 3782 822463 10005 shows a pending charge", "3782 822463 10005"),
    ("card", "Discover card: 6011111111111117", "6011111111111117"),
    # IBANs (mod-97 valid)
    ("iban", "Refund to IBAN GB82 WEST 1234 5698 7654 32 please", "GB82 WEST 1234 5698 7654 32"),
    ("iban", "my account is DE89 3704 0044 0532 0130 00.", "DE89 3704 0044 0532 0130 00"),
    ("iban", "IBAN:DE89370400440532013000", "DE89370400440532013000"),
    ("iban", "send it to de89 3704 0044 0532 0130 00 thanks", "de89 3704 0044 0532 0130 00"),
    ("iban", "French account FR14 2004 1010 0505 0001 3M02 606, BIC to follow", "FR14 2004 1010 0505 0001 3M02 606"),
    ("iban", "NL91 ABNA 0417 1643 00 is my Dutch account", "NL91 ABNA 0417 1643 00"),
    ("iban", "Belgian account BE68 5390 0754 7034 from my employer", "BE68 5390 0754 7034"),
    # IP addresses
    ("ip", "I am connecting from 192.168.1.10 and it times out", "192.168.1.10"),
    ("ip", "the VPN gives me 10.0.0.1.", "10.0.0.1"),
    ("ip", "server 1.2.3.4 refuses the connection", "1.2.3.4"),
    ("ip", "blocked at 203.0.113.7:8080 since Monday", "203.0.113.7"),
    ("ip", "my IPv6 is 2001:db8::8a2e:370:7334, is it banned?", "2001:db8::8a2e:370:7334"),
    ("ip", "it only works on ::1!", "::1"),
    ("ip", "link-local fe80::1%eth0 shows up in the log", "fe80::1%eth0"),
    ("ip", "mapped address ::ffff:192.0.2.1 in the headers", "::ffff:192.0.2.1"),
]

# Look-alikes that are not PII and must come back untouched.
NEGATIVES = [
    "card 4111 1111 1111 1112 was declined",  # fails Luhn
    "where is order 1234567890123456?",  # 16-digit order number, fails Luhn
    "refund to GB82 WEST 1234 5698 7654 33 please",  # IBAN with a bad mod-97 checksum
    "my account is DE89 3704 0044 0532 0130 01.",  # bad checksum
    "order #A12345 has not arrived",
    "ticket #4155552671 is still open",  # glued to '#': an identifier, however phone-like
    "invoice INV-4111111111111111 is wrong",  # glued to 'INV-': an identifier, though Luhn-valid
    "it was delivered on 2026-01-05 at 10:30",
    "it was due 05/01/2026 and 05.01.2026 was the reminder",
    "charged $1,299.99 instead of €49,99",
    "the app crashes since 5.0.1, v2.3.4 and build 1.2.3.4.5",
    "firmware v1.2.3.4 is installed",  # a dotted quad glued to 'v' is a version
    "999.999.1.1 is not an address and neither is 256.1.1.1",
    "I ordered 3 items 24h ago, reference 123456",
    "the job ran at 10:30:00 on device 00:1a:2b:3c:4d:5e",  # time and MAC address, not IPv6
    "compile error in std::vector<int>",
    "tracking 1Z6108209044603325 has not moved",
    "",
]


@pytest.mark.parametrize(("kind", "sentence", "value"), POSITIVES, ids=[f"{k}:{v}" for k, _, v in POSITIVES])
def test_each_kind_is_replaced_by_its_placeholder(kind, sentence, value):
    result = scrub_pii(sentence)
    assert result.text == sentence.replace(value, PLACEHOLDER[kind])
    assert result.counts == {kind: 1}


@pytest.mark.parametrize("sentence", NEGATIVES)
def test_lookalikes_are_left_alone(sentence):
    result = scrub_pii(sentence)
    assert result.text == sentence
    assert result.counts == {}


def test_text_without_pii_comes_back_unchanged_with_empty_counts():
    text = "Hi team, my parcel is late and the tracking page has not moved since Monday. Thanks, Sam"
    assert scrub_pii(text) == ScrubResult(text=text, counts={})


def test_several_kinds_in_one_ticket_are_counted():
    text = (
        "Hi, I'm jane.doe@example.com (backup: jd@example.org). I was charged twice on "
        "4111 1111 1111 1111 and 5555-5555-5555-4444 for order #A12345 on 2026-01-05, total $1,299.99. "
        "Refund to GB82 WEST 1234 5698 7654 32. Call +44 20 7946 0958 or (555) 010-0199; "
        "I was on 192.168.1.10 with app 5.0.1."
    )
    result = scrub_pii(text)
    assert result.text == (
        "Hi, I'm [EMAIL] (backup: [EMAIL]). I was charged twice on "
        "[CARD] and [CARD] for order #A12345 on 2026-01-05, total $1,299.99. "
        "Refund to [IBAN]. Call [PHONE] or [PHONE]; "
        "I was on [IP] with app 5.0.1."
    )
    assert result.counts == {"email": 2, "phone": 2, "card": 2, "iban": 1, "ip": 1}
    assert list(result.counts) == [k for k in PII_KINDS if k in result.counts]


def test_cards_and_ibans_are_not_half_eaten_as_phone_numbers():
    # The digit groups of a card or an IBAN look like phone numbers to a phone matcher; the
    # checksum-validated kinds run first so they are replaced whole.
    assert scrub_pii("card 4111 1111 1111 1111 please").counts == {"card": 1}
    assert scrub_pii("iban DE89 3704 0044 0532 0130 00 please") == ScrubResult("iban [IBAN] please", {"iban": 1})
    assert scrub_pii("from 192.168.100.200 today").counts == {"ip": 1}


def test_card_followed_by_another_number_is_still_found():
    assert scrub_pii("charged 4111 1111 1111 1111 2 times") == ScrubResult("charged [CARD] 2 times", {"card": 1})


def test_adjacent_values_of_the_same_kind_are_each_counted():
    result = scrub_pii("ips: 10.0.0.1, 10.0.0.2 and 2001:db8::1")
    assert result == ScrubResult("ips: [IP], [IP] and [IP]", {"ip": 3})


def test_placeholders_are_not_detected_again():
    text = "[EMAIL] [PHONE] [CARD] [IBAN] [IP]"
    assert scrub_pii(text) == ScrubResult(text=text, counts={})


@pytest.mark.parametrize("sentence", [s for _, s, _ in POSITIVES] + NEGATIVES)
def test_scrubbing_is_idempotent(sentence):
    once = scrub_pii(sentence)
    twice = scrub_pii(once.text)
    assert twice.text == once.text
    assert twice.counts == {}


def test_scrubbing_is_deterministic():
    text = "mail a@example.com, call +1 555-0100, card 4111111111111111, ip ::1"
    assert scrub_pii(text) == scrub_pii(text)


def test_counts_only_name_known_kinds():
    result = scrub_pii(" ".join(s for _, s, _ in POSITIVES))
    assert set(result.counts) == set(PII_KINDS)
    assert all(n > 0 for n in result.counts.values())


def test_pathological_inputs_stay_fast():
    # Guards the regexes against catastrophic backtracking on long unbroken inputs.
    inputs = [
        "a" * 20_000 + "@",
        "a." * 10_000 + "@x",
        "ab12 " * 4_000,
        "1." * 10_000,
        "a:" * 5_000,
        "4111 " * 4_000,
        "(1) " * 3_000,
    ]
    start = time.perf_counter()
    for text in inputs:
        scrub_pii(text)
    assert time.perf_counter() - start < 10


def test_module_does_not_import_dagster():
    code = "import sys, finetune_loop.core.data.pii; sys.exit('dagster' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
