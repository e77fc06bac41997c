"""The ``regex`` redactor: built-in rules for common secrets and personal data, plus user rules.

Every free-text field of every record passes through here on the request path, so each
pattern is compiled once at start-up, and a rule is skipped outright when a cheap substring
test shows it cannot match (no ``@``: no e-mail address). Rules rewrite the text one after
another; each replacement token is ``[REDACTED_<RULE NAME>]``, which no rule matches, so
redacting redacted text changes nothing.

The built-in rules run in this order, most specific first, because an earlier rule's token
hides its match from the later, broader rules:

1. ``pem_private_key``: the key's base64 body could contain anything (``AKIA...``, digits,
   ``eyJ``); taking the whole block first stops its fragments from counting as other secrets.
2. ``jwt``: before ``bearer_token``, so ``Bearer eyJ...`` is counted as the more specific JWT.
3. ``bearer_token``: ``Bearer <token>`` and ``Authorization: Basic <credentials>``; the scheme
   word stays so the text still reads as an auth header.
4. ``url_password``: before ``email``, which would otherwise take ``password@host.com`` out of
   ``scheme://user:password@host.com`` and leave the rest of the password behind.
5. ``aws_access_key``, 6. ``aws_secret_key``: fixed shapes with a label, independent of the rest.
7. ``email``.
8. ``credit_card``: only digit runs that pass the Luhn check, so order numbers survive.
9. ``us_ssn``.
10. ``ipv6``: before ``ipv4``, so ``::ffff:1.2.3.4`` is one IPv6 address rather than an IPv4
    address with a ``::ffff:`` stub left in front of it.
11. ``ipv4``.

User rules (``plugins.regex.rules``) run after the built-ins, in the order given. A user rule
may take a built-in rule's name only when that built-in is listed in ``disable_builtin``:
two active rules with one name would merge their counts in the metrics.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from lightspeed_collector import hookimpl
from lightspeed_collector.types import (
    Config,
    ConfigError,
    ConfigSchema,
    RedactionResult,
    Redactor,
)

NAME = "regex"
SETTINGS_PATH = f"plugins.{NAME}"


class Probe:
    """The text being redacted, with a ``shape`` prechecks can search at C speed.

    The shape is the text as UTF-8 with ASCII letters lower-cased and every digit turned
    into ``0``, so one substring test answers "is there a 4-digit run" or "is there
    'bearer' in any case" without a regex pass over the whole text. It is computed on first
    use only, and a new probe is made whenever a rule changes the text.
    """

    __slots__ = ("_shape", "text")

    def __init__(self, text: str) -> None:
        self.text = text
        self._shape: bytes | None = None

    @property
    def shape(self) -> bytes:
        if self._shape is None:
            # bytes.translate stays fast on non-ASCII text, where str.translate is ~50x slower.
            self._shape = self.text.encode("utf-8", "replace").translate(_SHAPE_TABLE)
        return self._shape


_SHAPE_TABLE = bytes.maketrans(
    b"123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ", b"000000000abcdefghijklmnopqrstuvwxyz"
)

Precheck = Callable[[Probe], bool]
Decide = Callable[[re.Match[str], str], str | None]


@dataclass(frozen=True)
class Rule:
    """One pattern and what replaces it.

    ``replacement`` is an ``re.sub`` template. ``precheck`` returning False proves the pattern
    cannot match, which saves a regex scan. ``decide``, when set, sees each match with the
    expanded replacement and returns the text to put in its place, or None to keep the match:
    for checks a regex cannot express, such as Luhn.
    """

    name: str
    pattern: re.Pattern[str]
    replacement: str
    precheck: Precheck | None = None
    decide: Decide | None = None

    def apply(self, text: str) -> tuple[str, int]:
        if self.decide is None:
            return self.pattern.subn(self.replacement, text)
        decide = self.decide
        template = self.replacement
        hits = 0

        def substitute(match: re.Match[str]) -> str:
            nonlocal hits
            replaced = decide(match, match.expand(template))
            if replaced is None:
                return match.group(0)
            hits += 1
            return replaced

        return self.pattern.sub(substitute, text), hits


def token(name: str) -> str:
    return f"[REDACTED_{name.upper()}]"


_TOKEN_OPENING = "[REDACTED_"
_TOKEN = re.compile(r"\[REDACTED_[A-Z0-9_-]+\]")
"""Any rule's token, as :func:`token` makes it from a rule name."""


# Rules that could start almost anywhere (at any digit, any letter) begin with the class of
# their first character and only then look at what precedes it, ``[0-9](?<![\w.].)`` rather
# than ``(?<![\w.])[0-9]``: a pattern must begin with a character class for ``re`` to skip
# to the next candidate at C speed, which makes these rules three to four times faster.
#
# What counts as "inside a word" leaves out the letter of an escape sequence: JSON and C
# strings (tool call arguments, pasted logs) write a line break or a tab as ``\n``, ``\r``,
# ``\t``, and the address in ``"hosts:\n10.0.0.1"`` follows a line break, not a word.
# ``[\w.]{_UNESCAPED}`` is a word character or dot that is not such a letter; nested in the
# one lookbehind a rule already has, it costs nothing until that lookbehind sees a letter.
_UNESCAPED = r"(?<!\\[nrt])"
_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])"
_IPV4 = rf"(?:{_OCTET}\.){{3}}{_OCTET}"
# An octet whose first digit was already consumed: the lookbehinds read that digit back.
_OCTET_REST = r"(?:(?<=1)[0-9]{0,2}|(?<=2)(?:[0-4][0-9]?|5[0-5]?|[6-9])?|(?<=[3-9])[0-9]?|(?<=0))"
_IPV4_PATTERN = (
    # Not part of a longer dotted number such as the version 1.2.3.4.5.
    rf"[0-9](?<![\w.]{_UNESCAPED}.){_OCTET_REST}\.(?:{_OCTET}\.){{2}}{_OCTET}(?!\w|\.[0-9])"
)

_H = r"[0-9A-Fa-f]{1,4}"
# The IPv6 forms (full, "::"-compressed, with an embedded IPv4 address), each without its
# first character, which the pattern consumes before the forms: a hex digit or a colon. The
# boundary checks around them make any match span the whole address, so their order only
# matters for speed.
_IPV6_AFTER_HEX = (
    rf"(?:{_H}:){{6}}{_H}",
    rf"(?:{_H}:){{5}}{_IPV4}",
    rf"(?:{_H}:){{0,6}}:",
    rf"(?:{_H}:){{0,5}}:{_H}",
    rf"(?:{_H}:){{0,4}}(?::{_H}){{1,2}}",
    rf"(?:{_H}:){{0,3}}(?::{_H}){{1,3}}",
    rf"(?:{_H}:){{0,2}}(?::{_H}){{1,4}}",
    rf"(?:{_H}:)?(?::{_H}){{1,5}}",
    rf"(?::{_H}){{1,6}}",
    # "::" among the six groups in front of an embedded IPv4 address, which counts as two.
    *(rf"(?:{_H}:){{0,{4 - after}}}:(?:{_H}:){{{after}}}{_IPV4}" for after in range(5)),
)
_IPV6_AFTER_COLON = (
    rf":(?:{_H}:){{0,5}}{_IPV4}",
    # A bare "::" is left alone: it is far more often code (Python slices, C++ scopes).
    rf"(?::{_H}){{1,7}}",
)
_IPV6_PATTERN = (
    # Not inside a word, and not after "name[" (slices such as a[1::2] and a[::2]).
    rf"[0-9A-Fa-f:](?<![\w:]{_UNESCAPED}.)(?<![\w)\]]\[.)"
    r"(?:(?<=:)"
    rf"(?:{'|'.join(_IPV6_AFTER_COLON)})"
    r"|(?<=[0-9A-Fa-f])"
    # Fails fast where neither "::" nor six groups follow, before trying ten forms.
    r"(?=[0-9A-Fa-f:]*::|[0-9A-Fa-f]{0,3}:(?:[0-9A-Fa-f]{1,4}:){5})"
    rf"[0-9A-Fa-f]{{0,3}}:(?:{'|'.join(_IPV6_AFTER_HEX)}))"
    r"(?![\w:]|\.[0-9])"
)

# A literal prefix lets this search skip along at C speed, unlike the ipv4 pattern itself.
_IPV4_SHAPE = re.compile(rb"0\.0{1,3}\.0{1,3}\.0")
_CARD_SHAPES = (b"0" * 13, b"0000 0000", b"0000-0000")
# Bytes from 0x80 up are parts of non-ASCII letters, which addresses may hold.
_EMAIL_LOCAL_END = frozenset(b"abcdefghijklmnopqrstuvwxyz0_._%+-") | frozenset(range(0x80, 0x100))
_EMAIL_DOMAIN_START = frozenset(b"abcdefghijklmnopqrstuvwxyz0") | frozenset(range(0x80, 0x100))
_HEX_SHAPE = b"0abcdef"


def _may_hold_email(probe: Probe) -> bool:
    """Only an ``@`` between an address character and a domain character can start one;
    prose mentions (``@team``, ``x @ y``) fail that without a regex pass."""
    if "@" not in probe.text:
        return False
    shape = probe.shape
    at = shape.find(b"@", 1)
    while at != -1:
        if (
            shape[at - 1] in _EMAIL_LOCAL_END
            and shape[at + 1 : at + 2]
            and (shape[at + 1] in _EMAIL_DOMAIN_START)
        ):
            return True
        at = shape.find(b"@", at + 1)
    return False


def _may_hold_ipv6(probe: Probe) -> bool:
    """Every IPv6 form has ``::`` or six colons in a row with at most four hex digits between
    them; times (``12:30:45``), ports and MAC addresses have neither."""
    if "::" in probe.text:
        return True
    if probe.text.count(":") < 6:
        return False
    shape = probe.shape
    chain = 0
    previous = shape.find(b":")
    while previous != -1:
        current = shape.find(b":", previous + 1)
        if current == -1:
            return False
        if current - previous <= 5 and not shape[previous + 1 : current].strip(_HEX_SHAPE):
            chain += 1
            if chain >= 5:
                return True
        else:
            chain = 0
        previous = current
    return False


def _luhn_valid(digits: str) -> bool:
    total = 0
    for index, char in enumerate(reversed(digits)):
        value = ord(char) - 48
        if index % 2:
            value *= 2
            if value > 9:
                value -= 9
        total += value
    return total % 10 == 0


def _decide_email(match: re.Match[str], replacement: str) -> str | None:
    """An address right after ``\\n`` matches from the ``n`` on; that letter stays, or the
    text would be left with a broken escape. Checked per match rather than in the pattern,
    which runs its lookbehind at nearly every character of the text."""
    start = match.start()
    if start and match.string[start - 1] == "\\" and match.group(0)[0] in "nrt":
        return match.group(0)[0] + replacement
    return replacement


def _decide_card(match: re.Match[str], replacement: str) -> str | None:
    """A grouped number followed by a short group (``4111 1111 1111 1111 123``) may be a
    16-digit card followed by something else, so the number without that group gets a
    second chance rather than leaking because the 19 digits together fail Luhn."""
    digits = match.group(0).replace(" ", "").replace("-", "")
    if _luhn_valid(digits):
        return replacement
    tail = match.group("tail")
    if tail and _luhn_valid(digits[: -(len(tail) - 1)]):
        return replacement + tail
    return None


_PEM_LABEL = r"(?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----"
# A body line of a key, or a header line such as "Proc-Type: 4,ENCRYPTED" and "DEK-Info: ..."
# (legacy encrypted keys) or "Version: ..." (PGP), which come before the base64 lines.
_PEM_LINE = r"(?:[A-Za-z0-9+/=]{16,}|[A-Za-z][A-Za-z0-9-]*: [^\r\n\\]*)"
_PEM_PATTERN = (
    rf"-----BEGIN {_PEM_LABEL}"
    # The body cannot contain "-----", so a BEGIN without its END costs a scan to the next
    # dashes, never to the end of the text.
    rf"(?:[^-]*(?:-(?!----)[^-]*)*-----END {_PEM_LABEL}"
    # No END line (the text was cut off): take the base64 lines that follow, the first one
    # perhaps on the BEGIN line itself, and header lines among them.
    rf"|(?:[ \t]*{_PEM_LINE})?(?:(?:\s|\\[rn])+{_PEM_LINE})*)"
)

_CARD_PATTERN = (
    rf"[0-9](?<![\w.+-]{_UNESCAPED}.)"
    r"(?:[0-9]{12,18}"
    r"|[0-9]{3}(?P<sep>[ -])[0-9]{4}(?P=sep)[0-9]{4}(?P=sep)[0-9]{1,4}"
    r"(?P<tail>(?P=sep)[0-9]{1,3})?"
    r"|[0-9]{3}(?P<sep2>[ -])[0-9]{6}(?P=sep2)[0-9]{4,5})"
    r"(?![\w-]|\.[0-9])"
)

_BEARER_PATTERN = (
    # "Bearer <token>" in a header, also "Bearer: <token>" and "bearer=<token>" in settings.
    rf"(?P<scheme>Bearer(?<!\w{_UNESCAPED}.{{6}})(?:[ \t]*[:=][ \t]*|[ \t]+))"
    # Prose ("the bearer of bad news", "Bearer tokens expire") has no digit or symbol.
    r"(?=[A-Za-z0-9._~+/=-]*[0-9_~+/=-])[A-Za-z0-9._~+/-]{7,}[A-Za-z0-9_~+/-]=*"
    rf"|(?P<basic>Authorization(?<!\w{_UNESCAPED}.{{13}})"
    r"\\?[\"']?[ \t]*[:=][ \t]*\\?[\"']?Basic[ \t]+)[A-Za-z0-9+/]+={0,2}"
)

_AWS_SECRET_PATTERN = (
    # "aws..." or "secret...", the "a" or "s" taken first so that ``re`` skips ahead at C speed.
    rf"(?P<label>[as](?<![A-Za-z0-9]{_UNESCAPED}.)(?:(?<=a)ws[ _-]?s|(?<=s))ecret"
    # Quotes may be escaped (JSON inside a JSON string); ">" ends an XML tag, as in an STS
    # response's <SecretAccessKey>.
    r"[ _-]?(?:access[ _-]?)?key\\?[\"']?"
    r"(?:[ \t]*[:=]>?[ \t]*|[ \t]+|>)\\?[\"']?)"
    r"[A-Za-z0-9/+]{40}(?![A-Za-z0-9/+=])"
)

# Unicode-aware, unlike the other rules: "jürgen@example.com" must not leave "jü" behind.
_EMAIL_PATTERN = (
    rf"[\w.%+-](?<![\w.%+-]{_UNESCAPED}.)[\w.%+-]*@"
    r"(?:[^\W_](?:[\w-]{0,61}[^\W_])?\.)+[^\W\d_]{2,63}(?![\w-])"
)


def _builtin(
    name: str,
    pattern: str,
    precheck: Precheck,
    *,
    flags: int = 0,
    keep: Sequence[str] = (),
    decide: Decide | None = None,
) -> Rule:
    """``keep`` names groups that stay in front of the token (``Bearer ``, ``user:``).

    Patterns are ASCII-only unless ``flags`` asks for ``re.UNICODE``: a digit or word
    character in a secret's shape means an ASCII one.
    """
    if not flags & re.UNICODE:
        flags |= re.ASCII
    template = "".join(rf"\g<{group}>" for group in keep) + token(name)
    return Rule(name, re.compile(pattern, flags), template, precheck, decide)


BUILTIN_RULES: tuple[Rule, ...] = (
    _builtin(
        "pem_private_key",
        _PEM_PATTERN,
        lambda probe: "-----BEGIN" in probe.text and "PRIVATE KEY" in probe.text,
    ),
    _builtin(
        "jwt",
        # Some encoders keep base64's "=" padding at the end of each part.
        rf"eyJ(?<![A-Za-z0-9_-]{_UNESCAPED}eyJ)[A-Za-z0-9_-]+=*\.eyJ[A-Za-z0-9_-]+=*"
        r"\.[A-Za-z0-9_-]*=*",
        lambda probe: "eyJ" in probe.text,
    ),
    _builtin(
        "bearer_token",
        _BEARER_PATTERN,
        lambda probe: b"bearer" in probe.shape or b"authorization" in probe.shape,
        flags=re.IGNORECASE,
        keep=("scheme", "basic"),
    ),
    _builtin(
        "url_password",
        # The password runs to the last "@" of the authority, so an unencoded "@" in it does
        # not leave its tail behind.
        r"(?P<userinfo>://[^\s:/?#@\[\]]*:)[^\s/?#\[\]]+(?=@)",
        lambda probe: "://" in probe.text and "@" in probe.text,
        keep=("userinfo",),
    ),
    _builtin(
        "aws_access_key",
        rf"A[KS]IA(?<!\w{_UNESCAPED}.{{4}})[A-Z0-9]{{16}}\b",
        lambda probe: "AKIA" in probe.text or "ASIA" in probe.text,
    ),
    _builtin(
        "aws_secret_key",
        _AWS_SECRET_PATTERN,
        lambda probe: b"secret" in probe.shape and b"key" in probe.shape,
        flags=re.IGNORECASE,
        keep=("label",),
    ),
    _builtin("email", _EMAIL_PATTERN, _may_hold_email, flags=re.UNICODE, decide=_decide_email),
    _builtin(
        "credit_card",
        _CARD_PATTERN,
        lambda probe: any(shape in probe.shape for shape in _CARD_SHAPES),
        decide=_decide_card,
    ),
    _builtin(
        "us_ssn",
        # The area number is neither 000, 666 nor 9xx.
        rf"[0-8](?<![\w-]{_UNESCAPED}.)[0-9]{{2}}(?<!000)(?<!666)"
        r"-(?!00)[0-9]{2}-(?!0000)[0-9]{4}(?![\w-])",
        lambda probe: b"000-00-0000" in probe.shape,
    ),
    _builtin("ipv6", _IPV6_PATTERN, _may_hold_ipv6),
    _builtin(
        "ipv4",
        _IPV4_PATTERN,
        lambda probe: b"0.0" in probe.shape and _IPV4_SHAPE.search(probe.shape) is not None,
    ),
)

BUILTIN_NAMES: tuple[str, ...] = tuple(rule.name for rule in BUILTIN_RULES)

SETTINGS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "rules": {
            "type": "array",
            "description": "Extra rules, applied in this order after the built-in ones.",
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["name", "pattern"],
                "properties": {
                    "name": {
                        "type": "string",
                        "pattern": "^[A-Za-z0-9_-]+$",
                        "description": "Rule name, unique among active rules; the metrics "
                        "count replacements under it.",
                    },
                    "pattern": {
                        "type": "string",
                        "minLength": 1,
                        "description": "Python regular expression; use (?i) for case-insensitive.",
                    },
                    "replacement": {
                        "type": "string",
                        "description": "What replaces each match, as in Python's re.sub "
                        "(\\1 or \\g<name> insert a group); default [REDACTED_<NAME>].",
                    },
                },
            },
        },
        "disable_builtin": {
            "type": "array",
            "items": {"enum": list(BUILTIN_NAMES)},
            "uniqueItems": True,
            "description": "Built-in rules to switch off.",
        },
    },
}


class RegexRedactor:
    def __init__(self, rules: Sequence[Rule], name: str = NAME) -> None:
        self.name = name
        self.rules = tuple(rules)

    def redact(self, text: str) -> RedactionResult:
        counts: dict[str, int] = {}
        if not text:
            return RedactionResult(text=text, count=0, counts=counts)
        probe = Probe(text)
        for rule in self.rules:
            if rule.precheck is not None and not rule.precheck(probe):
                continue
            text, hits = rule.apply(probe.text)
            if hits:
                counts[rule.name] = hits
                probe = Probe(text)
        return RedactionResult(text=probe.text, count=sum(counts.values()), counts=counts)


def build_rules(settings: Mapping[str, Any]) -> list[Rule]:
    """The active rules for ``plugins.regex`` settings; a problem is a ``ConfigError``.

    The settings were checked against ``SETTINGS_SCHEMA`` already; what a schema cannot see
    (a pattern that does not compile, a repeated name) is checked here.
    """
    disabled = list(settings.get("disable_builtin", []))
    for index, name in enumerate(disabled):
        if name not in BUILTIN_NAMES:
            raise ConfigError(
                f"{SETTINGS_PATH}.disable_builtin[{index}]",
                f"unknown built-in rule '{name}' (known: {', '.join(BUILTIN_NAMES)})",
            )
    rules = [rule for rule in BUILTIN_RULES if rule.name not in disabled]
    owners = {rule.name: "a built-in rule" for rule in rules}
    for index, entry in enumerate(settings.get("rules", [])):
        path = f"{SETTINGS_PATH}.rules[{index}]"
        name = entry["name"]
        if name in owners:
            hint = "; list it in disable_builtin to replace it" if name in BUILTIN_NAMES else ""
            raise ConfigError(
                f"{path}.name", f"'{name}' is already the name of {owners[name]}{hint}"
            )
        owners[name] = f"{SETTINGS_PATH}.rules[{index}]"
        rules.append(_user_rule(path, name, entry["pattern"], entry.get("replacement")))
    return rules


def _user_rule(path: str, name: str, pattern: str, replacement: str | None) -> Rule:
    shown = _shown(pattern)
    try:
        compiled = re.compile(pattern)
    except re.error as exc:
        raise ConfigError(
            f"{path}.pattern", f"invalid regular expression '{shown}': {exc}"
        ) from None
    except RecursionError:
        raise ConfigError(
            f"{path}.pattern", f"invalid regular expression '{shown}': it nests too deeply"
        ) from None
    except Exception as exc:  # OverflowError, MemoryError, ...: still a bad setting
        # Whatever the compiler trips over is the pattern's fault, and must name its key
        # rather than surface as a failure of the plugin.
        raise ConfigError(
            f"{path}.pattern", f"invalid regular expression '{shown}': {exc or type(exc).__name__}"
        ) from None
    if compiled.match("") is not None:
        # It would insert a token between every two characters, and again on every pass.
        raise ConfigError(f"{path}.pattern", f"regular expression '{shown}' matches empty text")
    template = token(name) if replacement is None else replacement
    try:
        compiled.sub(template, "")
    except (re.error, IndexError, OverflowError, RecursionError) as exc:
        raise ConfigError(
            f"{path}.replacement", f"invalid replacement '{_shown(template)}': {exc}"
        ) from None
    return Rule(name, compiled, template, decide=_decide_user_match)


def _decide_user_match(match: re.Match[str], replacement: str) -> str | None:
    """Keep what a user rule matched in two cases.

    A user pattern may match empty text in some places only (``\\b``, ``(?=x)``), which the
    check at start-up cannot see; such a match hides nothing, and replacing it would insert
    tokens into the text and count hits that redacted nothing. And a match that lies inside
    an earlier rule's token without being all of it (``[A-Z]{4,}`` finding ``EMAIL`` in
    ``[REDACTED_EMAIL]``) would break the token, and redacting twice would change the text
    again; a pattern for a whole token still takes it.
    """
    start, end = match.span()
    if end == start:
        return None
    text = match.string
    # The last token opening at or before the match's start.
    opening = text.rfind(_TOKEN_OPENING, 0, start + len(_TOKEN_OPENING))
    if opening != -1:
        closing = text.find("]", opening) + 1
        if (
            closing
            and start >= opening
            and end <= closing
            and (start, end) != (opening, closing)
            and _TOKEN.fullmatch(text, opening, closing)
        ):
            return None
    return replacement


def _shown(text: str, limit: int = 80) -> str:
    """``text`` for an error message: a page-long pattern is cut, not printed whole."""
    return text if len(text) <= limit else f"{text[:limit]}..."


@hookimpl
def register_plugin_config_schema() -> list[ConfigSchema]:
    return [ConfigSchema(section="plugin", name=NAME, schema=SETTINGS_SCHEMA)]


@hookimpl
def register_redactors(config: Config) -> list[Redactor]:
    return [RegexRedactor(build_rules(config.plugin_settings(NAME)))]
