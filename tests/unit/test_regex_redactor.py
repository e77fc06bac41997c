"""The built-in ``regex`` redactor: every rule's hits and near misses, rule order, user rules,
configuration errors, and the plugin hooks through a real plugin manager."""

from __future__ import annotations

import ipaddress
import random
import time
from collections.abc import Callable, Mapping
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from lightspeed_collector.config import Config
from lightspeed_collector.plugin_manager import (
    collect_components,
    get_plugin_manager,
    validate_plugin_settings,
)
from lightspeed_collector.plugins import regex
from lightspeed_collector.plugins.regex import BUILTIN_NAMES, RegexRedactor, build_rules
from lightspeed_collector.types import ConfigError, RedactionResult, Redactor

DEFAULT = RegexRedactor(build_rules({}))

PEM_BODY = (
    "MIIEowIBAAKCAQEAwJ1nZ8sZQ3AKIAIOSFODNN7EXAMPLE4111111111111111\n"
    "eyJhbGciOiJIUzI1NiJ9x100001yLkqV0lpl2W0cKPzq3Ku4wQ8R2pD1sT7\n"
    "k3J9e1V8zq1Hk5bXQ=="
)
RSA_KEY = f"-----BEGIN RSA PRIVATE KEY-----\n{PEM_BODY}\n-----END RSA PRIVATE KEY-----"
JWT = (
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9"
    ".eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIn0"
    ".SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c"
)
AWS_SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"


def redact(text: str) -> RedactionResult:
    return DEFAULT.redact(text)


# (rule, text, expected text); each text holds exactly one hit of its rule.
TRUE_POSITIVES = [
    (
        "pem_private_key",
        f"my key:\n{RSA_KEY}\nthanks",
        "my key:\n[REDACTED_PEM_PRIVATE_KEY]\nthanks",
    ),
    (
        "pem_private_key",
        f"-----BEGIN OPENSSH PRIVATE KEY-----\n{PEM_BODY}\n-----END OPENSSH PRIVATE KEY-----",
        "[REDACTED_PEM_PRIVATE_KEY]",
    ),
    (
        "pem_private_key",
        '{"key": "-----BEGIN PRIVATE KEY-----\\nMIIEvQIBADANBg\\n-----END PRIVATE KEY-----\\n"}',
        '{"key": "[REDACTED_PEM_PRIVATE_KEY]\\n"}',
    ),
    (
        "pem_private_key",
        f"cut off: -----BEGIN EC PRIVATE KEY-----\n{PEM_BODY}\n(truncated) and more",
        "cut off: [REDACTED_PEM_PRIVATE_KEY]\n(truncated) and more",
    ),
    (
        "pem_private_key",
        "cut off: -----BEGIN RSA PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\n"
        f"DEK-Info: AES-128-CBC,3F17F5316E2BAC89\n\n{PEM_BODY}\n(truncated) and more",
        "cut off: [REDACTED_PEM_PRIVATE_KEY]\n(truncated) and more",
    ),
    (
        "pem_private_key",
        f"one line: -----BEGIN PRIVATE KEY-----{PEM_BODY.replace(chr(10), '')} (cut off)",
        "one line: [REDACTED_PEM_PRIVATE_KEY] (cut off)",
    ),
    ("jwt", f"token={JWT}; path=/", "token=[REDACTED_JWT]; path=/"),
    ("jwt", f"unsigned {JWT.rsplit('.', 1)[0]}.", "unsigned [REDACTED_JWT]"),
    (
        "jwt",
        "padded eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0=.c2lnbmF0dXJl== end",
        "padded [REDACTED_JWT] end",
    ),
    (
        "bearer_token",
        "Authorization: Bearer abc123def456ghi789",
        "Authorization: Bearer [REDACTED_BEARER_TOKEN]",
    ),
    (
        "bearer_token",
        "use bearer ghp_16C7e42F292c6912E7710c838347Ae178B4a",
        "use bearer [REDACTED_BEARER_TOKEN]",
    ),
    ("bearer_token", "bearer: abc123def456ghi", "bearer: [REDACTED_BEARER_TOKEN]"),
    ("bearer_token", "TOKEN_TYPE=BEARER=abc-123-def", "TOKEN_TYPE=BEARER=[REDACTED_BEARER_TOKEN]"),
    (
        "bearer_token",
        '"{\\"Authorization\\": \\"Basic dXNlcjpwYXNz\\"}"',
        '"{\\"Authorization\\": \\"Basic [REDACTED_BEARER_TOKEN]\\"}"',
    ),
    (
        "bearer_token",
        "curl -H 'Authorization: Basic dXNlcjpwYXNzd29yZA==' https://x",
        "curl -H 'Authorization: Basic [REDACTED_BEARER_TOKEN]' https://x",
    ),
    (
        "bearer_token",
        '{"authorization": "Basic YWxhZGRpbjpvcGVuc2VzYW1l"}',
        '{"authorization": "Basic [REDACTED_BEARER_TOKEN]"}',
    ),
    (
        "url_password",
        "DATABASE_URL=postgres://admin:s3cr3t@db.example.com:5432/app",
        "DATABASE_URL=postgres://admin:[REDACTED_URL_PASSWORD]@db.example.com:5432/app",
    ),
    (
        "url_password",
        "redis://:hunter2@localhost:6379/0",
        "redis://:[REDACTED_URL_PASSWORD]@localhost:6379/0",
    ),
    (
        "url_password",
        "https://bob:p@ss:w0rd@git.example.com/repo.git",
        "https://bob:[REDACTED_URL_PASSWORD]@git.example.com/repo.git",
    ),
    ("aws_access_key", "key id AKIAIOSFODNN7EXAMPLE.", "key id [REDACTED_AWS_ACCESS_KEY]."),
    ("aws_access_key", "ASIAY34FZKBOKMUTVV7A", "[REDACTED_AWS_ACCESS_KEY]"),
    (
        "aws_secret_key",
        f"aws_secret_access_key = {AWS_SECRET}",
        "aws_secret_access_key = [REDACTED_AWS_SECRET_KEY]",
    ),
    (
        "aws_secret_key",
        f'{{"SecretAccessKey": "{AWS_SECRET}"}}',
        '{"SecretAccessKey": "[REDACTED_AWS_SECRET_KEY]"}',
    ),
    (
        "aws_secret_key",
        f"export AWS_SECRET_ACCESS_KEY={AWS_SECRET}",
        "export AWS_SECRET_ACCESS_KEY=[REDACTED_AWS_SECRET_KEY]",
    ),
    ("aws_secret_key", f"secret key: {AWS_SECRET}", "secret key: [REDACTED_AWS_SECRET_KEY]"),
    (
        "aws_secret_key",
        f"<SecretAccessKey>{AWS_SECRET}</SecretAccessKey>",
        "<SecretAccessKey>[REDACTED_AWS_SECRET_KEY]</SecretAccessKey>",
    ),
    (
        "aws_secret_key",
        f'{{"arguments": "{{\\"secret_key\\": \\"{AWS_SECRET}\\"}}"}}',
        '{"arguments": "{\\"secret_key\\": \\"[REDACTED_AWS_SECRET_KEY]\\"}"}',
    ),
    ("email", "write to alice@example.com.", "write to [REDACTED_EMAIL]."),
    ("email", "<First.Last+tag@mail.sub.example.co.uk>", "<[REDACTED_EMAIL]>"),
    ("email", "Grüße an jürgen@müller.de!", "Grüße an [REDACTED_EMAIL]!"),
    ("email", "mailto:bob_smith@example.org?subject=hi", "mailto:[REDACTED_EMAIL]?subject=hi"),
    ("credit_card", "card 4111111111111111 exp 12/25", "card [REDACTED_CREDIT_CARD] exp 12/25"),
    ("credit_card", "card 4111 1111 1111 1111.", "card [REDACTED_CREDIT_CARD]."),
    ("credit_card", "card 5500-0000-0000-0004", "card [REDACTED_CREDIT_CARD]"),
    ("credit_card", "amex 3782 822463 10005", "amex [REDACTED_CREDIT_CARD]"),
    ("credit_card", "card 4111 1111 1111 1111 123", "card [REDACTED_CREDIT_CARD] 123"),
    ("us_ssn", "SSN: 123-45-6789.", "SSN: [REDACTED_US_SSN]."),
    ("us_ssn", "ssn=078-05-1120", "ssn=[REDACTED_US_SSN]"),
    ("ipv4", "host 192.168.1.10 is down", "host [REDACTED_IPV4] is down"),
    ("ipv4", "connect to 10.0.0.1:8080/api", "connect to [REDACTED_IPV4]:8080/api"),
    ("ipv4", "broadcast 255.255.255.255.", "broadcast [REDACTED_IPV4]."),
    ("ipv4", "route 172.16.0.0/12", "route [REDACTED_IPV4]/12"),
    ("ipv6", "ping ::1 now", "ping [REDACTED_IPV6] now"),
    ("ipv6", "mapped ::ffff:1.2.3.4", "mapped [REDACTED_IPV6]"),
    ("ipv6", "addr 2001:db8::8a2e:370:7334.", "addr [REDACTED_IPV6]."),
    (
        "ipv6",
        "full 2001:0DB8:85A3:0000:0000:8A2E:0370:7334 here",
        "full [REDACTED_IPV6] here",
    ),
    ("ipv6", "link fe80::1ff:fe23:4567:890a%eth0", "link [REDACTED_IPV6]%eth0"),
    ("ipv6", "open http://[::1]:8080/", "open http://[[REDACTED_IPV6]]:8080/"),
    ("ipv6", "prefix 2001:db8::", "prefix [REDACTED_IPV6]"),
]


@pytest.mark.parametrize(("rule", "text", "expected"), TRUE_POSITIVES)
def test_each_builtin_rule_redacts_what_it_is_for(rule: str, text: str, expected: str) -> None:
    result = redact(text)
    assert result.text == expected
    assert result.count == 1
    assert dict(result.counts) == {rule: 1}


def test_every_builtin_rule_has_a_true_positive() -> None:
    assert {rule for rule, _, _ in TRUE_POSITIVES} == set(BUILTIN_NAMES)


# Text that resembles something a rule looks for, and must stay as it is.
FALSE_POSITIVES = {
    "pem_private_key": [
        "-----BEGIN CERTIFICATE-----\nMIIDdzCCAl+gAwIBAgIE\n-----END CERTIFICATE-----",
        "-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYI\n-----END PUBLIC KEY-----",
        "never paste your PRIVATE KEY into a chat",
    ],
    "jwt": [
        "eyJhbGciOiJIUzI1NiJ9 is just a base64 header",
        "heyJoe.eyJane.x",
        "eyJ.eyJ.",
    ],
    "bearer_token": [
        "the bearer of bad news",
        "Bearer tokens expire after an hour.",
        "Use bearer authentication for the API.",
        "Bearer token",
        "Basic dXNlcjpwYXNzd29yZA== without a header name",
    ],
    "url_password": [
        "http://localhost:8080/api",
        "see https://example.com/@team/page",
        "https://example.com:8443/path?next=a:b",
    ],
    "aws_access_key": [
        "AKIA is a prefix",
        "AKIAIOSFODNN7EXAMPLEX",
        "akiaiosfodnn7example",
        "XAKIAIOSFODNN7EXAMPLE",
    ],
    "aws_secret_key": [
        "commit da39a3ee5e6b4b0d3255bfef95601890afd80709 is fine",
        f"value {AWS_SECRET} without a label",
        "rotate the secret key every 90 days",
        f"secret key: {AWS_SECRET}X",
    ],
    "email": [
        "ping @team and @alice on Slack",
        "user@localhost",
        "foo @ bar.com",
        "@hookimpl\ndef f(): ...",
        "npm install @types/node@20.1.0",
        "an @ sign alone",
    ],
    "credit_card": [
        "card 4111111111111112 fails Luhn",
        "card 4111 1111 1111 1112",
        "uuid 123e4567-e89b-12d3-a456-426614174000",
        "uuid 12345678-1234-1234-1234-123456789012",
        "order 1234567890123 shipped",
        "order ORD-2024-000123 shipped",
        "digits 41111111111111110000 too long",
        "amount 0.4111111111111111",
        "phone +4111111111111111",
        "dates 2024-01-01 and 2024 0101",
    ],
    "us_ssn": [
        "000-12-3456",
        "666-12-3456",
        "900-12-3456",
        "123-00-4567",
        "123-45-0000",
        "1123-45-6789",
        "123-45-67890",
        "call 555-123-4567",
        "ABC-123-45-6789",
    ],
    "ipv4": [
        "999.1.1.1",
        "version 1.2.3.4.5",
        "256.1.1.1",
        "1.2.3.256",
        "1.2.3",
        "v1.2.3.4",
        "01.02.03.04",
        "pi is 3.14159",
    ],
    "ipv6": [
        "meet at 12:30:45",
        "10:00 - 11:30, then 14:00:00",
        "MAC 00:1a:2b:3c:4d:5e",
        "dead:beef",
        "Note: see John 3:16",
        "a[::2] and b[1::2] and c[::-1]",
        "std::vector<int> and Foo::Bar",
        "the :: operator",
        "2001:db8:0:0:1:0:0",
    ],
}


@pytest.mark.parametrize("text", [text for texts in FALSE_POSITIVES.values() for text in texts])
def test_look_alikes_stay(text: str) -> None:
    result = redact(text)
    assert result.text == text
    assert result.count == 0
    assert dict(result.counts) == {}


def test_every_builtin_rule_has_false_positives() -> None:
    assert set(FALSE_POSITIVES) == set(BUILTIN_NAMES)


def test_luhn_decides_for_generated_numbers() -> None:
    rng = random.Random(20240501)
    for _ in range(200):
        body = [rng.randrange(10) for _ in range(15)]
        check = _luhn_check_digit(body)
        good = "".join(map(str, [*body, check]))
        bad = good[:-1] + str((check + 1) % 10)
        grouped = " ".join(good[i : i + 4] for i in range(0, 16, 4))
        for text in (good, grouped, grouped.replace(" ", "-")):
            assert redact(f"pay with {text} now").text == "pay with [REDACTED_CREDIT_CARD] now"
        assert redact(f"pay with {bad} now").count == 0


def _luhn_check_digit(body: list[int]) -> int:
    total = 0
    for index, digit in enumerate(reversed(body)):
        value = digit * 2 if index % 2 == 0 else digit
        total += value - 9 if value > 9 else value
    return (10 - total % 10) % 10


def test_generated_ip_addresses_are_redacted_whole() -> None:
    rng = random.Random(7)
    for _ in range(300):
        groups = [rng.choice([0, 0, 1, rng.randrange(65536)]) for _ in range(8)]
        v6 = ipaddress.IPv6Address(sum(g << (16 * (7 - i)) for i, g in enumerate(groups)))
        v4 = ipaddress.IPv4Address(rng.randrange(2**32))
        for address, rule in [
            (v6.compressed, "ipv6"),
            (v6.exploded, "ipv6"),
            (f"::ffff:{v4}", "ipv6"),
            (str(v4), "ipv4"),
        ]:
            if address == "::":
                continue
            result = redact(f"from {address}, again")
            assert result.text == f"from [REDACTED_{rule.upper()}], again", address
            assert dict(result.counts) == {rule: 1}


def _ipv6_forms(groups: list[int], ipv4_tail: bool) -> list[str]:
    """Every way to write the address: each run of zero groups may be the "::"."""
    count = 6 if ipv4_tail else 8
    hexes = [format(group, "x") for group in groups[:count]]
    tail = [str(ipaddress.IPv4Address(groups[6] << 16 | groups[7]))] if ipv4_tail else []
    forms = [":".join(hexes + tail)]
    for start in range(count):
        for end in range(start + 1, count + 1):
            if not any(groups[start:end]):
                forms.append(":".join(hexes[:start]) + "::" + ":".join(hexes[end:] + tail))
    return [form for form in forms if form != "::"]


def test_every_written_form_of_an_ipv6_address_is_redacted_whole() -> None:
    rng = random.Random(11)
    for _ in range(150):
        groups = [rng.choice([0, 0, 1, rng.randrange(65536)]) for _ in range(8)]
        for form in _ipv6_forms(groups, ipv4_tail=False) + _ipv6_forms(groups, ipv4_tail=True):
            for address in (form, form.upper()):
                ipaddress.IPv6Address(address)
                result = redact(f"from {address}, again")
                assert result.text == "from [REDACTED_IPV6], again", address
                assert dict(result.counts) == {"ipv6": 1}


# JSON (tool call arguments, pasted logs) and C-style strings write a line break as "\n": the
# "n" must not hide what follows it, nor be taken into the match and break the escape.
ESCAPED = [
    ("jwt", "{JWT}", "[REDACTED_JWT]"),
    ("bearer_token", "Bearer abc123def456ghi", "Bearer [REDACTED_BEARER_TOKEN]"),
    (
        "bearer_token",
        "Authorization: Basic dXNlcjpwYXNz",
        "Authorization: Basic [REDACTED_BEARER_TOKEN]",
    ),
    ("aws_access_key", "AKIAIOSFODNN7EXAMPLE", "[REDACTED_AWS_ACCESS_KEY]"),
    ("aws_secret_key", "secret_key={AWS_SECRET}", "secret_key=[REDACTED_AWS_SECRET_KEY]"),
    ("email", "alice@example.com", "[REDACTED_EMAIL]"),
    ("credit_card", "4111111111111111", "[REDACTED_CREDIT_CARD]"),
    ("us_ssn", "123-45-6789", "[REDACTED_US_SSN]"),
    ("ipv6", "fe80::1", "[REDACTED_IPV6]"),
    ("ipv4", "10.0.0.1", "[REDACTED_IPV4]"),
]


@pytest.mark.parametrize("escape", ["\\n", "\\t", "\\r\\n"])
@pytest.mark.parametrize(("rule", "secret", "expected"), ESCAPED, ids=[r for r, _, _ in ESCAPED])
def test_a_match_right_after_an_escape_sequence_is_redacted(
    rule: str, secret: str, expected: str, escape: str
) -> None:
    secret = secret.format(JWT=JWT, AWS_SECRET=AWS_SECRET)
    result = redact(f'{{"text": "first line{escape}{secret}{escape}last line"}}')
    assert result.text == f'{{"text": "first line{escape}{expected}{escape}last line"}}'
    assert dict(result.counts) == {rule: 1}


def test_every_builtin_rule_is_checked_after_an_escape_sequence() -> None:
    assert {rule for rule, _, _ in ESCAPED} == set(BUILTIN_NAMES) - {
        "pem_private_key",  # starts with dashes, never after a letter
        "url_password",  # starts after "://"
    }


@pytest.mark.parametrize(
    ("text", "expected", "counts"),
    [
        (
            "postgres://alice:pw@db.example.com/x",
            "postgres://alice:[REDACTED_URL_PASSWORD]@db.example.com/x",
            {"url_password": 1},
        ),
        (
            f"Authorization: Bearer {JWT}",
            "Authorization: Bearer [REDACTED_JWT]",
            {"jwt": 1},
        ),
        ("::ffff:10.0.0.1", "[REDACTED_IPV6]", {"ipv6": 1}),
        (RSA_KEY, "[REDACTED_PEM_PRIVATE_KEY]", {"pem_private_key": 1}),
    ],
    ids=["url_password-before-email", "jwt-before-bearer", "ipv6-before-ipv4", "pem-first"],
)
def test_more_specific_rules_win(text: str, expected: str, counts: dict[str, int]) -> None:
    result = redact(text)
    assert result.text == expected
    assert dict(result.counts) == counts


def test_counts_split_by_rule_and_add_up() -> None:
    text = (
        "Mail alice@example.com or bob@example.org from 10.0.0.1 or 10.0.0.2 or ::1; "
        "card 4111 1111 1111 1111, ssn 123-45-6789, key AKIAIOSFODNN7EXAMPLE."
    )
    result = redact(text)
    assert dict(result.counts) == {
        "email": 2,
        "ipv4": 2,
        "ipv6": 1,
        "credit_card": 1,
        "us_ssn": 1,
        "aws_access_key": 1,
    }
    assert result.count == 8
    assert result.text == (
        "Mail [REDACTED_EMAIL] or [REDACTED_EMAIL] from [REDACTED_IPV4] or [REDACTED_IPV4] or "
        "[REDACTED_IPV6]; card [REDACTED_CREDIT_CARD], ssn [REDACTED_US_SSN], "
        "key [REDACTED_AWS_ACCESS_KEY]."
    )


def test_redacting_twice_changes_nothing_more() -> None:
    everything = "\n".join(text for _, text, _ in TRUE_POSITIVES)
    once = redact(everything)
    assert once.count >= len(TRUE_POSITIVES)
    twice = redact(once.text)
    assert twice.text == once.text
    assert twice.count == 0
    assert dict(twice.counts) == {}
    for _, _, expected in TRUE_POSITIVES:
        assert redact(expected).text == expected


def test_redaction_is_deterministic() -> None:
    text = f"{RSA_KEY} alice@example.com 10.0.0.1 {JWT}"
    assert redact(text) == redact(text)
    assert RegexRedactor(build_rules({})).redact(text) == redact(text)


def test_empty_and_plain_text_pass_through() -> None:
    assert redact("") == RedactionResult(text="", count=0, counts={})
    assert redact("Nothing to see here.") == RedactionResult("Nothing to see here.", 0, {})


def test_adversarial_input_stays_linear() -> None:
    inputs = [
        "a" * 50_000 + "@" + "b" * 50_000,
        "a@" + "a." * 50_000,
        "a:" * 50_000,
        "1:" * 50_000 + "::",
        "1" * 100_000,
        "1 " * 50_000,
        "123-" * 25_000,
        "1." * 50_000,
        "Bearer " + "a" * 100_000,
        "-----BEGIN PRIVATE KEY-----\n" * 3_000,
        "-----BEGIN PRIVATE KEY-----" + ("\n" + "A" * 64) * 1_500,
        "http://" + "a:" * 50_000 + "@",
        "secret key " * 10_000,
        ("eyJ" + "a" * 10 + ".") * 10_000,
        "\\n1.1." * 20_000,
        "\\na@" * 30_000,
    ]
    for text in inputs:
        started = time.perf_counter()
        redact(text)
        assert time.perf_counter() - started < 1.0, text[:40]


def rules_from(settings: Mapping[str, Any]) -> RegexRedactor:
    return RegexRedactor(build_rules(settings))


def test_user_rules_run_after_the_builtins_with_their_replacement() -> None:
    redactor = rules_from(
        {
            "rules": [
                {"name": "employee_id", "pattern": r"\bEMP-\d{6}\b"},
                {"name": "ticket", "pattern": r"(TICKET-)\d+", "replacement": r"\1<hidden>"},
                {"name": "mail_marker", "pattern": r"\[REDACTED_EMAIL\]", "replacement": "<mail>"},
            ]
        }
    )
    result = redactor.redact("EMP-123456 filed TICKET-42 for alice@example.com")
    assert result.text == "[REDACTED_EMPLOYEE_ID] filed TICKET-<hidden> for <mail>"
    assert dict(result.counts) == {"employee_id": 1, "ticket": 1, "email": 1, "mail_marker": 1}
    assert result.count == 4


@pytest.mark.parametrize("pattern", [r"TKT-\d+|\b", r"TKT-\d+|(?=o)", r"(?<=e)|TKT-\d+"])
def test_a_user_rule_that_matches_empty_text_somewhere_inserts_nothing(pattern: str) -> None:
    redactor = rules_from({"rules": [{"name": "ticket", "pattern": pattern}]})
    result = redactor.redact("see TKT-12 now")
    assert result.text == "see [REDACTED_TICKET] now"
    assert dict(result.counts) == {"ticket": 1}


def test_a_user_rule_leaves_the_inside_of_tokens_alone_so_redacting_twice_changes_nothing() -> None:
    """A pattern for upper-case words would otherwise take ``REDACTED`` and ``EMAIL`` out of
    ``[REDACTED_EMAIL]``; a pattern for a whole token still takes it (see above)."""
    redactor = rules_from({"rules": [{"name": "shout", "pattern": r"[A-Z]{4,}"}]})
    once = redactor.redact("mail alice@example.com, STOP SHOUTING")
    assert once.text == "mail [REDACTED_EMAIL], [REDACTED_SHOUT] [REDACTED_SHOUT]"
    assert dict(once.counts) == {"email": 1, "shout": 2}
    twice = redactor.redact(once.text)
    assert twice.text == once.text and twice.count == 0


def test_disabled_builtins_do_not_run() -> None:
    redactor = rules_from({"disable_builtin": ["email", "ipv4"]})
    text = "alice@example.com at 10.0.0.1, ssn 123-45-6789"
    result = redactor.redact(text)
    assert result.text == "alice@example.com at 10.0.0.1, ssn [REDACTED_US_SSN]"
    assert dict(result.counts) == {"us_ssn": 1}
    assert [rule.name for rule in redactor.rules] == [
        name for name in BUILTIN_NAMES if name not in ("email", "ipv4")
    ]


def test_a_user_rule_may_replace_a_disabled_builtin() -> None:
    redactor = rules_from(
        {
            "disable_builtin": ["email"],
            "rules": [{"name": "email", "pattern": r"\S+@corp\.example", "replacement": "<corp>"}],
        }
    )
    result = redactor.redact("bob@corp.example and eve@elsewhere.org")
    assert result.text == "<corp> and eve@elsewhere.org"
    assert dict(result.counts) == {"email": 1}


@pytest.mark.parametrize(
    ("settings", "path", "fragment"),
    [
        (
            {"rules": [{"name": "bad", "pattern": "(unclosed"}]},
            "plugins.regex.rules[0].pattern",
            "invalid regular expression '(unclosed': missing ), unterminated subpattern",
        ),
        (
            {"rules": [{"name": "ok", "pattern": "x"}, {"name": "worse", "pattern": "[z-a]"}]},
            "plugins.regex.rules[1].pattern",
            "invalid regular expression '[z-a]': bad character range",
        ),
        (
            {"rules": [{"name": "empty", "pattern": "a*"}]},
            "plugins.regex.rules[0].pattern",
            "matches empty text",
        ),
        (
            {"rules": [{"name": "group", "pattern": "a", "replacement": r"\1"}]},
            "plugins.regex.rules[0].replacement",
            "invalid replacement",
        ),
        (
            {"rules": [{"name": "twice", "pattern": "a"}, {"name": "twice", "pattern": "b"}]},
            "plugins.regex.rules[1].name",
            "'twice' is already the name of plugins.regex.rules[0]",
        ),
        (
            {"rules": [{"name": "email", "pattern": "a"}]},
            "plugins.regex.rules[0].name",
            "list it in disable_builtin",
        ),
        (
            {"disable_builtin": ["emails"]},
            "plugins.regex.disable_builtin[0]",
            "unknown built-in rule 'emails'",
        ),
        (
            {
                "rules": [
                    {"name": "ok", "pattern": "x"},
                    {"name": "big", "pattern": "a{4294967296}"},
                ]
            },
            "plugins.regex.rules[1].pattern",
            "invalid regular expression 'a{4294967296}': the repetition number is too large",
        ),
        (
            {"rules": [{"name": "deep", "pattern": "(" * 2000 + "a" + ")" * 2000}]},
            "plugins.regex.rules[0].pattern",
            "invalid regular expression '((((",
        ),
    ],
    ids=[
        "bad-pattern",
        "bad-second-pattern",
        "empty-match",
        "bad-group",
        "dup-name",
        "builtin-name",
        "unknown-builtin",
        "huge-repeat",
        "deep-nesting",
    ],
)
def test_bad_settings_are_config_errors(settings: dict[str, Any], path: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as caught:
        build_rules(settings)
    assert caught.value.path == path
    assert str(caught.value).startswith(f"{path}: ")
    assert fragment in caught.value.problem


def test_settings_schema_is_valid_and_documents_every_key() -> None:
    Draft202012Validator.check_schema(regex.SETTINGS_SCHEMA)

    def walk(schema: Mapping[str, Any], where: str) -> None:
        assert schema.get("additionalProperties") is False, where
        for key, sub in schema.get("properties", {}).items():
            assert sub.get("description"), f"{where}.{key}"
            items = sub.get("items", {})
            if items.get("type") == "object":
                walk(items, f"{where}.{key}[]")

    walk(regex.SETTINGS_SCHEMA, "plugins.regex")
    assert regex.SETTINGS_SCHEMA["properties"]["disable_builtin"]["items"]["enum"] == list(
        BUILTIN_NAMES
    )


def test_hooks_called_directly(make_config: Callable[..., Config]) -> None:
    [schema] = regex.register_plugin_config_schema()
    assert (schema.section, schema.name) == ("plugin", "regex")
    config = make_config({"plugins": {"regex": {"disable_builtin": ["ipv4"]}}})
    [redactor] = regex.register_redactors(config)
    assert isinstance(redactor, Redactor)
    assert redactor.name == "regex"
    assert redactor.redact("10.0.0.1 a@example.com").text == "10.0.0.1 [REDACTED_EMAIL]"


def test_hooks_through_the_plugin_manager(make_config: Callable[..., Config]) -> None:

    config = make_config(
        {
            "plugins": {
                "regex": {
                    "rules": [{"name": "project", "pattern": r"\bPRJ-\d+", "replacement": "<p>"}],
                    "disable_builtin": ["ipv4"],
                }
            }
        }
    )
    pm = get_plugin_manager(config)
    validate_plugin_settings(config, pm)
    redactor = collect_components(config, pm).redactors["regex"]
    result = redactor.redact("PRJ-7 from 10.0.0.1 by a@example.com")
    assert result.text == "<p> from 10.0.0.1 by [REDACTED_EMAIL]"
    assert dict(result.counts) == {"email": 1, "project": 1}


@pytest.mark.parametrize(
    ("settings", "fragment"),
    [
        ({"rulez": []}, "plugins.regex.rulez: unknown key"),
        ({"disable_builtin": ["nope"]}, "plugins.regex.disable_builtin.0"),
        ({"rules": [{"pattern": "x"}]}, "plugins.regex.rules.0.name"),
        ({"rules": [{"name": "x", "pattern": "x", "flags": "i"}]}, "plugins.regex.rules.0.flags"),
    ],
)
def test_plugin_manager_rejects_invalid_settings(
    make_config: Callable[..., Config], settings: dict[str, Any], fragment: str
) -> None:

    config = make_config({"plugins": {"regex": settings}})
    with pytest.raises(ConfigError, match=fragment.replace(".", r"\.")):
        validate_plugin_settings(config, get_plugin_manager(config))


def test_plugin_manager_reports_a_bad_pattern_by_path(make_config: Callable[..., Config]) -> None:

    config = make_config({"plugins": {"regex": {"rules": [{"name": "x", "pattern": "a("}]}}})
    pm = get_plugin_manager(config)
    validate_plugin_settings(config, pm)
    with pytest.raises(ConfigError, match=r"^plugins\.regex\.rules\[0\]\.pattern: invalid"):
        collect_components(config, pm)


@pytest.mark.parametrize(
    "pattern", ["a{4294967296}", "(" * 2000 + "a" + ")" * 2000], ids=["huge-repeat", "deep"]
)
def test_plugin_manager_reports_a_pattern_the_compiler_chokes_on_by_path(
    make_config: Callable[..., Config], pattern: str
) -> None:
    config = make_config({"plugins": {"regex": {"rules": [{"name": "x", "pattern": pattern}]}}})
    pm = get_plugin_manager(config)
    validate_plugin_settings(config, pm)
    with pytest.raises(
        ConfigError, match=r"^plugins\.regex\.rules\[0\]\.pattern: invalid"
    ) as caught:
        collect_components(config, pm)
    assert len(str(caught.value)) < 300
