"""Optional redaction of email addresses and IPv4/IPv6 addresses.

FineWeb anonymizes both before release (datatrove ``PIIFormatter``, last block of the recipe,
``reference/data.md`` §1.4); here a match becomes a fixed token (``<EMAIL>``, ``<IP>`` by
default) so a model learns the shape of the text, not the address.

What matches:

* **email**: ``local@domain.tld``: a local part of letters, digits and ``._%+-``, a domain of
  dot-separated labels and a final label of two or more letters. ``user@localhost`` (no
  dot) and Perl/Python decorators (``@property``) do not match.
* **IPv4**: four decimal octets 0-255 without leading zeros, not touching another digit,
  dot or letter, so versions ``3.11.2`` and ``1.2.3.4.5``, ``v1.2.3.4``, dates
  (``15.01.2024``, ``2024.01.15``) and decimals stay. A bare four-part version number
  (``1.2.3.4``) cannot be told from an address and is redacted.
* **IPv6**: hex groups joined by ``:`` that ``ipaddress.IPv6Address`` accepts, with at least
  three groups or a group of three or more hex digits (``fe80::1``, ``2001:db8::7334``), so
  Python slices (``a[1::2]``), C++/Perl names (``std::vector``), clock times (``12:30:45``)
  and MAC addresses stay.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

__all__ = ["PIIConfig", "redact_pii"]

_EMAIL = re.compile(
    r"(?<![\w.%+-])[A-Za-z0-9][A-Za-z0-9._%+-]*@"
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?\.)+[A-Za-z]{2,}(?![\w-])"
)
_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
_IPV4 = re.compile(rf"(?<![\w.]){_OCTET}(?:\.{_OCTET}){{3}}(?!\.?\d|\w)")
_IPV6_CANDIDATE = re.compile(
    r"(?<![\w:.])(?:[0-9A-Fa-f]{0,4}:){2,7}"
    r"(?:\d{1,3}(?:\.\d{1,3}){3}|[0-9A-Fa-f]{1,4})?(?![\w:]|\.\d)"
)


@dataclass
class PIIConfig:
    """Switches and replacement tokens for :func:`redact_pii`."""

    enabled: bool = False
    email_token: str = "<EMAIL>"
    ip_token: str = "<IP>"


def _is_ipv6(candidate: str) -> bool:
    groups = [g for g in re.split(r"[:.]", candidate) if g]
    if len(groups) < 3 and not any(len(g) >= 3 for g in groups):
        return False
    try:
        ipaddress.IPv6Address(candidate)
    except ValueError:
        return False
    return True


def redact_pii(
    text: str, email_token: str = "<EMAIL>", ip_token: str = "<IP>"
) -> tuple[str, dict[str, int]]:
    """``text`` with emails and IP addresses replaced, and how many of each were replaced."""
    counts = {"email": 0, "ip": 0}
    if "@" in text:
        text, counts["email"] = _EMAIL.subn(email_token, text)
    if "::" in text or text.count(":") >= 7:  # before IPv4: "::ffff:192.0.2.1" is one address

        def ipv6(match: re.Match[str]) -> str:
            if _is_ipv6(match.group()):
                counts["ip"] += 1
                return ip_token
            return match.group()

        text = _IPV6_CANDIDATE.sub(ipv6, text)
    if "." in text:
        text, n = _IPV4.subn(ip_token, text)
        counts["ip"] += n
    return text, counts
