"""redact_pii: emails and IP addresses go, version numbers, dates and code stay."""

from __future__ import annotations

import pytest

from pretrain.data.pii import PIIConfig, redact_pii


def test_emails_are_replaced_and_counted():
    text, counts = redact_pii("Write to john.doe+news@mail.example.co.uk or a_b@x.org.")
    assert text == "Write to <EMAIL> or <EMAIL>."
    assert counts == {"email": 2, "ip": 0}


def test_ipv4_addresses_are_replaced_with_ports_and_prefixes_kept():
    text, counts = redact_pii("hosts 192.168.0.1:8080, 10.0.0.255/24 and 8.8.8.8.")
    assert text == "hosts <IP>:8080, <IP>/24 and <IP>."
    assert counts == {"email": 0, "ip": 3}


@pytest.mark.parametrize(
    "address", ["fe80::1", "2001:db8::8a2e:370:7334", "::ffff:192.0.2.128",
                "2001:0db8:85a3:0000:0000:8a2e:0370:7334"],
)  # fmt: skip
def test_ipv6_addresses_are_replaced(address):
    assert redact_pii(f"from {address} today") == ("from <IP> today", {"email": 0, "ip": 1})


@pytest.mark.parametrize(
    "text",
    [
        "Python 3.11.2 and 3.11.7",
        "perl 5.36.0-7+deb12u4",
        "1.2.3.4.5 and v1.2.3.4",
        "dates 15.01.2024, 2024.01.15, 2024-01-15, 12/03/2024",
        "pi is 3.14159 and 256.1.1.1 is no address, nor is 1.2.3.04",
        "x = a[1::2]; std::vector<int>; Foo::Bar->new; at 12:30:45",
        "MAC 00:1A:2B:3C:4D:5E and reST literal::",
        "@property and user@localhost",
    ],
)
def test_versions_dates_and_code_are_left_alone(text):
    assert redact_pii(text) == (text, {"email": 0, "ip": 0})


def test_replacement_tokens_are_configurable():
    text, counts = redact_pii("a@b.com 1.2.3.4", email_token="[email]", ip_token="[ip]")
    assert text == "[email] [ip]" and counts == {"email": 1, "ip": 1}
    assert PIIConfig().email_token == "<EMAIL>" and PIIConfig().ip_token == "<IP>"
