"""Which addresses a webhook destination may reach: a pure policy, no I/O.

A tenant chooses a webhook's URL, and the scheduler POSTs from inside the
operator's network; without a policy a tenant could make it reach the
broker's management API, the database, a cloud metadata service or anything
else on that network, and read the answers' status lines back from its task
records. So by default a webhook reaches public addresses only: loopback,
link-local, private (RFC 1918, fc00::/7), shared (100.64.0.0/10), unspecified,
multicast, documentation and other reserved ranges are refused, also when
spelled as an IPv4-mapped or NAT64 IPv6 address. An operator opens the
networks its receivers live on with FNHOST_WEBHOOK_ALLOWED_NETWORKS.

It is applied twice: to a URL when a function's configuration is written (a
literal address in any spelling, and credentials in the URL, are refused with
a 400; a name is not looked up), and to the socket address of every connection
the webhook client makes, after name resolution (runtime/webhooks.py), so
neither a name that resolves to a refused address nor one whose answer changes
between two lookups reaches it.
"""

from __future__ import annotations

import re
import socket
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address, ip_network
from typing import Any, Literal
from urllib.parse import urlsplit

from yarl import URL

Address = IPv4Address | IPv6Address
Network = IPv4Network | IPv6Network

# What a delivery to a refused address records: the same words whatever the
# address and whatever would have answered there, so that a task record tells
# nothing of the network behind the scheduler.
REFUSED = "address not allowed"

# Refused IPv4 ranges, most of IANA's special-purpose registry (RFC 6890 and later).
_REFUSED_V4: tuple[tuple[IPv4Network, str], ...] = tuple(
    (IPv4Network(net), kind) for net, kind in (
        ("0.0.0.0/8", "unspecified"),
        ("10.0.0.0/8", "private"),
        ("100.64.0.0/10", "shared"),
        ("127.0.0.0/8", "loopback"),
        ("169.254.0.0/16", "link-local"),
        ("172.16.0.0/12", "private"),
        ("192.0.0.0/24", "reserved"),
        ("192.0.2.0/24", "reserved"),
        ("192.88.99.0/24", "reserved"),
        ("192.168.0.0/16", "private"),
        ("198.18.0.0/15", "reserved"),
        ("198.51.100.0/24", "reserved"),
        ("203.0.113.0/24", "reserved"),
        ("224.0.0.0/4", "multicast"),
        ("240.0.0.0/4", "reserved"),  # with the broadcast address
    )
)
# IPv6 addresses that carry an IPv4 address in their last 32 bits and reach it:
# judged as that IPv4 address.
_IPV4_MAPPED = IPv6Network("::ffff:0:0/96")
_NAT64 = IPv6Network("64:ff9b::/96")
# Only global unicast (2000::/3) is reachable; within it, these are not.
_GLOBAL_V6 = IPv6Network("2000::/3")
_REFUSED_V6: tuple[tuple[IPv6Network, str], ...] = tuple(
    (IPv6Network(net), kind) for net, kind in (
        ("::/128", "unspecified"),
        ("::1/128", "loopback"),
        ("fc00::/7", "private"),
        ("fe80::/10", "link-local"),
        ("fec0::/10", "reserved"),  # site-local, deprecated
        ("ff00::/8", "multicast"),
        ("2001::/23", "reserved"),  # IETF protocol assignments, Teredo among them
        ("2001:db8::/32", "reserved"),
        ("2002::/16", "reserved"),  # 6to4: an IPv4 address inside, any of them
        ("3fff::/20", "reserved"),
    )
)

_HOST_NAME = re.compile(r"[A-Za-z0-9_.-]+")
_HEX = re.compile(r"0[xX][0-9A-Fa-f]*")


def parse_networks(text: str) -> tuple[Network, ...]:
    """FNHOST_WEBHOOK_ALLOWED_NETWORKS: comma-separated CIDRs (a bare address is a /32
    or /128); empty: none. A CIDR with host bits set is refused: it says one thing
    and would allow another."""
    networks: list[Network] = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        try:
            networks.append(ip_network(item, strict=True))
        except ValueError as exc:
            raise ValueError(f"{item!r} is not a network in CIDR form ({exc})") from None
    return tuple(networks)


def ipv4_number(host: str) -> IPv4Address | None:
    """`host` read as an IPv4 address the way URL parsers and inet_aton read one:
    decimal, octal (a leading 0) or hex (0x) parts, one to four of them, the last
    filling the bytes left (127.1, 0x7f000001, 017700000001, 2130706433), a final dot
    allowed. None when its last label is not a number (a name); ValueError when it
    is, but the whole is no address (URL parsers refuse such a host)."""
    labels = host.split(".")
    if labels[-1] == "" and len(labels) > 1:
        labels.pop()
    last = labels[-1]
    if not (last.isascii() and (last.isdigit() or _HEX.fullmatch(last))):
        return None
    if len(labels) > 4:
        raise ValueError(f"{host!r} ends in a number but is no IPv4 address")
    numbers = [_ipv4_part(label, host) for label in labels]
    *leading, final = numbers
    if any(n > 255 for n in leading) or final >= 256 ** (5 - len(numbers)):
        raise ValueError(f"{host!r} ends in a number but is no IPv4 address")
    value = final
    for i, n in enumerate(leading):
        value += n << (8 * (3 - i))
    return IPv4Address(value)


def _ipv4_part(label: str, host: str) -> int:
    try:
        if _HEX.fullmatch(label):
            return int(label[2:] or "0", 16)
        if len(label) > 1 and label.startswith("0"):
            return int(label[1:], 8)
        if label.isascii() and label.isdigit():
            return int(label)
    except ValueError:
        pass
    raise ValueError(f"{host!r} ends in a number but is no IPv4 address")


def literal_address(host: str) -> Address | None:
    """The address a URL's host spells, in any spelling; None for a name. ValueError
    for a host that is neither."""
    if ":" in host:
        return IPv6Address(host.strip("[]"))
    return ipv4_number(host)


def shown_host(url: str) -> str:
    """A webhook for the logs: its host and port only (never its path, query or credentials)."""
    try:
        parts = urlsplit(url)
        host, port = parts.hostname or "?", parts.port
    except ValueError:
        return "?"
    host = f"[{host}]" if ":" in host else host
    return f"{host}:{port}" if port is not None else host


@dataclass(frozen=True, slots=True)
class WebhookPolicy:
    """Refuses the special-purpose addresses above, except inside `allowed`."""

    allowed: tuple[Network, ...] = ()

    def refusal(self, address: Address) -> str | None:
        """Why `address` is refused (the kind of range it is in); None when allowed."""
        embedded = _embedded_ipv4(address)
        for candidate in (address, embedded):
            if candidate is not None and any(candidate in net for net in self.allowed):
                return None
        if embedded is not None:
            address = embedded
        if isinstance(address, IPv4Address):
            return next((kind for net, kind in _REFUSED_V4 if address in net), None)
        for net6, kind in _REFUSED_V6:
            if address in net6:
                return kind
        return None if address in _GLOBAL_V6 else "reserved"

    def allows(self, address: Address) -> bool:
        return self.refusal(address) is None

    def allows_sockaddr(self, family: int, sockaddr: tuple[Any, ...]) -> bool:
        """Whether a socket may connect to `sockaddr` (as getaddrinfo gives it); an
        address that cannot be read is refused."""
        if family not in (socket.AF_INET, socket.AF_INET6):
            return False
        try:
            address = ip_address(sockaddr[0])
        except (ValueError, IndexError, TypeError):
            return False
        return self.allows(address)

    def url_problem(self, url: str) -> UrlProblem | None:
        """What is wrong with `url` as a webhook, None if nothing: it must be http(s),
        name a host, carry no credentials, and not spell a refused address (a name is
        judged when it is connected to)."""
        try:
            parsed = URL(url)
            netloc = urlsplit(url).netloc
        except ValueError as exc:
            return UrlProblem("url", f"not a valid URL ({exc})")
        if parsed.scheme not in ("http", "https"):
            return UrlProblem("url", "must be an http:// or https:// URL")
        if "@" in netloc or parsed.user is not None or parsed.password is not None:
            return UrlProblem(
                "credentials", "must not carry credentials (user:password@): send them another way"
            )
        host = parsed.raw_host
        if not host:
            return UrlProblem("url", "must name a host")
        if ":" not in host and not _HOST_NAME.fullmatch(host):
            return UrlProblem("url", f"host {host!r} is not a host name or an address")
        try:
            # An IPv6 literal with its zone decoded (fe80::1%eth0); any other host as sent.
            address = literal_address((parsed.host or host) if ":" in host else host)
        except ValueError:
            return UrlProblem("url", f"host {host!r} is not a valid address")
        if address is None:
            return None
        kind = self.refusal(address)
        if kind is not None:
            return UrlProblem("address", (
                f"address {address} is {kind}: webhooks reach public addresses only, and "
                "networks the operator allows (FNHOST_WEBHOOK_ALLOWED_NETWORKS)"
            ))
        if isinstance(address, IPv4Address) and host != str(address):
            # 0x7f000001, 127.1 and the like have no use but to slip past a check.
            return UrlProblem("url", f"host {host!r} spells an IPv4 address: write it as {address}")
        return None


@dataclass(frozen=True, slots=True)
class UrlProblem:
    """Why a webhook URL is refused: `message` for its owner when it is set (400);
    `recorded` for a delivery refused for it (a URL stored before the policy was)."""

    kind: Literal["url", "credentials", "address"]
    message: str

    @property
    def recorded(self) -> str:
        if self.kind == "address":
            return REFUSED
        if self.kind == "credentials":
            return "credentials in the URL are not allowed"
        return "not a valid webhook URL"


def _embedded_ipv4(address: Address) -> IPv4Address | None:
    """The IPv4 address an IPv4-mapped (::ffff:a.b.c.d) or NAT64 (64:ff9b::a.b.c.d)
    IPv6 address reaches."""
    if isinstance(address, IPv4Address):
        return None
    if address in _IPV4_MAPPED or address in _NAT64:
        return IPv4Address(int(address) & 0xFFFFFFFF)
    return None
