"""PII scrubber: positives for every kind in ticket-like sentences, the look-alikes that must stay,
pass ordering, counts and idempotence. Values are the published test numbers (Visa/Mastercard/
Amex/Discover test cards, the IBAN registry's example IBANs, RFC 5737/3849 documentation
addresses, Ofcom/NANP fiction phone ranges)."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from finetune_loop.core.data.pii import EXCERPT_CHARS, PII_KINDS, ScrubResult, scrub_pii

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

# Bypasses of issue 14: Unicode look-alikes, invisible characters and other digit-group separators.
# Matching runs on a normalised view (NFKC, zero-width characters removed) and the span it matched
# is replaced in the original text, so the rest of each sentence comes back exactly as written.
POSITIVES += [
    ("email", "mail jane\u200b.doe@example.com about it", "jane\u200b.doe@example.com"),
    ("email", "mail jane.doe@exam\u200bple.com about it", "jane.doe@exam\u200bple.com"),
    ("email", "mail jane.doe\uff20example.com about it", "jane.doe\uff20example.com"),
    ("email", "mail ｊａｎｅ．ｄｏｅ＠ｅｘａｍｐｌｅ．ｃｏｍ about it", "ｊａｎｅ．ｄｏｅ＠ｅｘａｍｐｌｅ．ｃｏｍ"),
    ("email", "mail\u200d jane.doe@example.com\u2060 about it", "jane.doe@example.com"),
    ("card", "card ４１１１ １１１１ １１１１ １１１１ was charged", "４１１１ １１１１ １１１１ １１１１"),
    ("card", "card ４１１１１１１１１１１１１１１１ was charged", "４１１１１１１１１１１１１１１１"),
    ("card", "card 4111.1111.1111.1111 was charged", "4111.1111.1111.1111"),
    ("card", "card 4111  1111  1111  1111 was charged", "4111  1111  1111  1111"),
    ("card", "card 4111_1111_1111_1111 was charged", "4111_1111_1111_1111"),
    ("card", "card 4111\u00a01111\u00a01111\u00a01111 was charged", "4111\u00a01111\u00a01111\u00a01111"),
    ("card", "card 4111\u200b1111\u200b1111\u200b1111 was charged", "4111\u200b1111\u200b1111\u200b1111"),
    ("card", "card 3782.822463.10005 was charged", "3782.822463.10005"),
    ("iban", "IBAN DE89-3704-0044-0532-0130-00 please", "DE89-3704-0044-0532-0130-00"),
    ("iban", "IBAN GB82-WEST-1234-5698-7654-32 please", "GB82-WEST-1234-5698-7654-32"),
    ("iban", "IBAN DE89.3704.0044.0532.0130.00 please", "DE89.3704.0044.0532.0130.00"),
    ("iban", "IBAN DE89_3704_0044_0532_0130_00 please", "DE89_3704_0044_0532_0130_00"),
    ("iban", "IBAN DE89  3704  0044  0532  0130  00 please", "DE89  3704  0044  0532  0130  00"),
    ("iban", "IBAN DE89\u00a03704\u00a00044\u00a00532\u00a00130\u00a000 please", "DE89\u00a03704\u00a00044\u00a00532\u00a00130\u00a000"),
    ("iban", "IBAN ＤＥ８９ ３７０４ ００４４ ０５３２ ０１３０ ００ please", "ＤＥ８９ ３７０４ ００４４ ０５３２ ０１３０ ００"),
    ("phone", "call ＋４４ ２０ ７９４６ ０９５８ please", "＋４４ ２０ ７９４６ ０９５８"),
    ("ip", "from １９２．１６８．１．１０ today", "１９２．１６８．１．１０"),
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
    # the new separators do not turn look-alikes into cards or IBANs
    "order 4111.1111.1111.1112 was declined",  # dotted, fails Luhn
    "order 4111_1111_1111_1112 and 4111  1111  1111  1112",  # fails Luhn
    "refund to DE89-3704-0044-0532-0130-01 please",  # dashed, bad checksum
    "release 2026.01.05 build 1234.5678.90 and ﻿café ｖ２.３.４",  # dotted dates/versions, NFKC-only text
    "ref ４１１１１１１１１１１１１１１２ is wrong",  # full-width, fails Luhn
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


def test_text_outside_a_match_keeps_its_unicode():
    # The output is the original text with the matched spans replaced, not its NFKC form.
    text = "Ｒｅｆｕｎｄ ｐｌｅａｓｅ\u200b: ﬁle from café, jane.doe＠example.com"
    assert scrub_pii(text) == ScrubResult("Ｒｅｆｕｎｄ ｐｌｅａｓｅ\u200b: ﬁle from café, [EMAIL]", {"email": 1})
    # a base letter with a combining accent is one piece: the address is found and replaced whole
    assert scrub_pii("write to jose\u0301@example.com now").text == "write to [EMAIL] now"


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


# --- curation: no file written under the dataset directory holds raw PII (issue 14) --------------

EMAIL, PHONE, CARD, IBAN = "zelda.quokka@example.org", "+44 20 7946 0958", "5555 5555 5555 4444", "DE89 3704 0044 0532 0130 00"
PII_TEXT = f"mail {EMAIL} or call {PHONE}, card {CARD}, IBAN {IBAN}, also zelda\u200b.quokka\uff20example.org"
# The raw values in every form a leaking file could hold them (compact digits, JSON escapes).
RAW_PII = [
    EMAIL, PHONE, CARD, IBAN, "zelda\u200b.quokka", "quokka\uff20", "zelda\\u200b", "\\uff20example",
    "zelda.quokka", "5555555555554444", "5555 5555", "DE89370400440532013000", "DE89 3704", "7946 0958", "0532 0130",
]


def _pii_task(tmp_path):
    import json
    from dataclasses import replace

    from finetune_loop.core.common.spec import load_task_spec
    from finetune_loop_tests.conftest import tiny_rows, write_tiny_task

    spec = load_task_spec(write_tiny_task(tmp_path / "task", tmp_path / "unused-base"))
    rows = tiny_rows(count_per_label=12)
    for index, row in enumerate(rows):
        row["source"] = "vendor-a" if index % 6 == 0 else "in-house"
    good = [r for r in rows if r["source"] == "in-house"]
    revoked = [r for r in rows if r["source"] == "vendor-a"]
    good[0]["text"] = f"{PII_TEXT} -- {good[0]['text']}"  # a training row
    good[1]["text"] = f"{good[1]['text']} {PII_TEXT}"
    revoked[0]["text"] = f"{PII_TEXT} {revoked[0]['text']}"  # a revoked row
    lines = [json.dumps(r) for r in rows]
    lines += [
        json.dumps({**good[0], "id": "exact-copy"}),  # exact duplicate of a PII row
        json.dumps({"id": "q-label", "text": f"refund? {PII_TEXT}", "label": f"refunds {EMAIL}", "source": "in-house"}),  # unknown label
        json.dumps({**good[2], "text": f"taken id {PII_TEXT}"}),  # duplicate id
        json.dumps({"id": "q-source", "text": f"hello {PII_TEXT}", "label": "billing", "source": f"forum of {EMAIL}"}),  # unknown source
        '{"id": "q-json", "text": "' + PII_TEXT.replace("\u200b", "") + ' unterminated',  # malformed JSON
        json.dumps({"id": "q-long", "text": f"{PII_TEXT} " + "word " * 300, "label": "login", "source": "in-house"}),  # over-long
    ]
    spec.labeled_examples_path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    sources = tmp_path / "sources.yaml"
    sources.write_text("sources:\n  vendor-a: {licence: CC-BY-4.0, status: revoked}\n  in-house: {licence: proprietary, status: active}\n")
    return replace(spec, sources_path=sources)


def _files_with_raw_pii(directory) -> dict[str, list[str]]:
    leaks = {}
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        content = path.read_text(encoding="utf-8")
        found = [value for value in RAW_PII if value in content]
        if found:
            leaks[str(path.relative_to(directory))] = found
    return leaks


def test_curation_writes_no_raw_pii_in_any_file(tmp_path):
    import json

    from finetune_loop.core.data import curation, suites

    spec = _pii_task(tmp_path)
    holdout = suites.freeze_suite(spec, "holdout", tmp_path / "suites")
    dataset = curation.curate_dataset(spec, [holdout], tmp_path / "datasets", token_length=lambda e: len(e.text.split()))
    report = dataset.report
    # Every category is exercised, so the check below covers each evidence file with PII in it.
    assert report.quarantined == {"unknown label": 1, "duplicate id": 1, "unknown source": 1, "malformed JSON": 1, "over-long input": 1}
    assert report.revoked_removed == {"vendor-a": 6}
    assert report.duplicates_removed == 1
    assert report.pii_replacements["email"] >= 4 and {"phone", "card", "iban"} <= set(report.pii_replacements)

    assert {EMAIL, PHONE, CARD, IBAN, "zelda\\u200b"} <= set(_files_with_raw_pii(tmp_path / "task")["tickets.jsonl"])  # the check sees raw PII
    assert _files_with_raw_pii(tmp_path / "datasets") == {}
    assert _files_with_raw_pii(tmp_path / "suites") == {}  # frozen suites are scrubbed too (suites.py)

    # What a reviewer needs is still there: reason, file, line, id and a scrubbed excerpt.
    quarantine = [json.loads(line) for line in dataset.quarantine_path.read_text(encoding="utf-8").splitlines()]
    by_kind = {q["reason"].partition(":")[0]: q for q in quarantine}
    unknown_label = by_kind["unknown label"]
    assert unknown_label["file"] == spec.labeled_examples_path.name and unknown_label["id"] == "q-label"
    assert unknown_label["line"] == 38 and unknown_label["source"] == "in-house"
    assert unknown_label["input"].startswith("refund? mail [EMAIL] or call [PHONE], card [CARD], IBAN [IBAN], also [EMAIL]")
    assert unknown_label["label"] == "refunds [EMAIL]" and unknown_label["reason"].startswith("unknown label: 'refunds [EMAIL]'")
    assert by_kind["malformed JSON"]["line"] == 41 and "[EMAIL]" in by_kind["malformed JSON"]["input"]
    assert by_kind["over-long input"]["id"] == "q-long" and len(by_kind["over-long input"]["input"]) <= EXCERPT_CHARS
    assert by_kind["duplicate id"]["line"] == 39 and by_kind["duplicate id"]["id"] == json.loads(spec.labeled_examples_path.read_text().splitlines()[38])["id"]
    assert set(quarantine[0]) == {"file", "line", "id", "source", "input", "label", "reason"}
    revoked = [json.loads(line) for line in (dataset.directory / "revoked.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(revoked) == 6 and all(r["reason"] == "revoked source: 'vendor-a'" and r["id"] for r in revoked)
    assert sum("[CARD]" in r["input"] for r in revoked) == 1
    duplicates = [json.loads(line) for line in dataset.duplicates_path.read_text(encoding="utf-8").splitlines()]
    assert [(d["id"], "[IBAN]" in d["input"]) for d in duplicates] == [("exact-copy", True)]


def test_a_curation_rejected_for_too_many_bad_rows_writes_no_raw_pii(tmp_path):
    import json
    from dataclasses import replace

    from finetune_loop.core.data import curation, readers

    spec = _pii_task(tmp_path)
    spec = replace(spec, curation=replace(spec.curation, max_quarantine_share=0.01))
    with pytest.raises(readers.CurationError, match="above curation.max_quarantine_share"):
        curation.curate_dataset(spec, [], tmp_path / "datasets")
    rejected = tmp_path / "datasets" / "rejected" / "quarantine.jsonl"
    assert len(rejected.read_text(encoding="utf-8").splitlines()) == 4
    assert all("input" in json.loads(line) and "row" not in json.loads(line) for line in rejected.read_text().splitlines())
    assert _files_with_raw_pii(tmp_path / "datasets") == {}
