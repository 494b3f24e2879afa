"""The webhook address policy (runtime/webhook_policy.py) as a pure function: every
refused range, every spelling of an address, the operator's allowed networks, and
what a destination URL may hold. No connection is made and no name is looked up
(a lookup fails the test)."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from ipaddress import IPv4Address, IPv6Address, ip_address

import pytest

from runtime.settings import SettingsError, load_settings
from runtime.webhook_policy import (
    WebhookPolicy,
    ipv4_number,
    literal_address,
    parse_networks,
    shown_host,
)
from runtime.webhooks import AddressNotAllowed, guarded_sockets

DEFAULT = WebhookPolicy()
LOOPBACK_ONLY = WebhookPolicy(parse_networks("127.0.0.1/32"))
SECRET = "s3cr3t-pw"


@pytest.fixture(autouse=True)
def no_lookups(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The policy never resolves a name: any lookup here fails the test."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"a name lookup was made: {args}")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "gethostbyname", refuse)
    yield


# -- every refused range, at its edges ---------------------------------------------

REFUSED = [
    # IPv4
    ("0.0.0.0", "unspecified"), ("0.255.255.255", "unspecified"),
    ("10.0.0.0", "private"), ("10.255.255.255", "private"),
    ("100.64.0.0", "shared"), ("100.127.255.255", "shared"),
    ("127.0.0.1", "loopback"), ("127.0.0.2", "loopback"), ("127.255.255.255", "loopback"),
    ("169.254.0.1", "link-local"), ("169.254.169.254", "link-local"),
    ("172.16.0.0", "private"), ("172.31.255.255", "private"),
    ("192.0.0.8", "reserved"), ("192.0.2.1", "reserved"), ("192.88.99.1", "reserved"),
    ("192.168.0.1", "private"), ("192.168.255.255", "private"),
    ("198.18.0.1", "reserved"), ("198.19.255.255", "reserved"),
    ("198.51.100.7", "reserved"), ("203.0.113.9", "reserved"),
    ("224.0.0.1", "multicast"), ("239.255.255.255", "multicast"),
    ("240.0.0.1", "reserved"), ("255.255.255.255", "reserved"),
    # IPv6
    ("::", "unspecified"), ("::1", "loopback"),
    ("fc00::1", "private"), ("fd12:3456::1", "private"),
    ("fe80::1", "link-local"), ("febf:ffff::1", "link-local"), ("fe80::1%eth0", "link-local"),
    ("fec0::1", "reserved"), ("ff02::1", "multicast"), ("ff05::1:3", "multicast"),
    ("2001::1", "reserved"), ("2001:2::1", "reserved"), ("2001:db8::1", "reserved"),
    ("2002:7f00:1::1", "reserved"), ("3fff::1", "reserved"),
    ("100::1", "reserved"), ("64:ff9b:1::1", "reserved"), ("5f00::1", "reserved"),
    ("4000::1", "reserved"), ("::127.0.0.2", "reserved"),  # IPv4-compatible, deprecated
    # IPv4 inside IPv6: judged as the IPv4 address they reach
    ("::ffff:127.0.0.2", "loopback"), ("::ffff:7f00:2", "loopback"),
    ("::ffff:10.0.0.1", "private"), ("::ffff:169.254.169.254", "link-local"),
    ("::ffff:100.64.0.1", "shared"), ("::ffff:0.0.0.0", "unspecified"),
    ("64:ff9b::127.0.0.1", "loopback"), ("64:ff9b::a9fe:a9fe", "link-local"),
]

ALLOWED = [
    "1.1.1.1", "8.8.8.8", "9.255.255.255", "11.0.0.0", "100.63.255.255", "100.128.0.0",
    "126.255.255.255", "128.0.0.0", "169.253.255.255", "169.255.0.0", "172.15.255.255",
    "172.32.0.0", "192.167.255.255", "192.169.0.0", "198.17.255.255", "198.20.0.0",
    "223.255.255.255",
    "2606:4700:4700::1111", "2a00:1450:4001::1", "2001:4860:4860::8888",
    "::ffff:8.8.8.8", "64:ff9b::8.8.8.8",
]


@pytest.mark.parametrize(("address", "kind"), REFUSED)
def test_refused_by_default(address: str, kind: str) -> None:
    parsed = ip_address(address)
    assert DEFAULT.refusal(parsed) == kind
    assert not DEFAULT.allows(parsed)


@pytest.mark.parametrize("address", ALLOWED)
def test_public_addresses_are_allowed(address: str) -> None:
    assert DEFAULT.refusal(ip_address(address)) is None


# -- every spelling ------------------------------------------------------------------

# How a URL's host may spell 127.0.0.2 (and what socket.inet_aton makes of the IPv4 ones).
SPELLINGS_OF_127_0_0_2 = [
    "127.0.0.2", "0x7f000002", "0X7F000002", "017700000002", "2130706434", "127.2", "127.0.2",
    "0x7f.0.0.2", "0x7f.2", "0177.0.0.2", "0177.2", "127.0.0.0x2", "00000000177.0.0.2",
    "0x00000007f.0.0.2", "127.0.0.2.",
]


@pytest.mark.parametrize("host", SPELLINGS_OF_127_0_0_2)
def test_every_ipv4_spelling_is_read_as_the_address(host: str) -> None:
    assert ipv4_number(host) == IPv4Address("127.0.0.2")
    assert literal_address(host) == IPv4Address("127.0.0.2")


@pytest.mark.parametrize("host", SPELLINGS_OF_127_0_0_2)
def test_the_reading_agrees_with_the_system(host: str) -> None:
    """Where the C library reads a spelling as an address (as getaddrinfo does before any
    lookup), it reads the same one; inet_aton is a pure function."""
    try:
        packed = socket.inet_aton(host)
    except OSError:
        return  # the system would look it up as a name: refused at validation all the same
    assert IPv4Address(packed) == ipv4_number(host)


@pytest.mark.parametrize("host", [
    "::ffff:127.0.0.2", "[::ffff:127.0.0.2]", "::ffff:7f00:2", "0:0:0:0:0:ffff:7f00:2", "::1",
    "[::1]", "0:0:0:0:0:0:0:1", "fe80::1%eth0",
])
def test_ipv6_spellings(host: str) -> None:
    address = literal_address(host)
    assert isinstance(address, IPv6Address)
    assert not DEFAULT.allows(address)


@pytest.mark.parametrize("host", ["example.com", "hooks.example", "a-b.c_d", "localhost",
                                  "1.2.3.4.example", "0x7f000002.example"])
def test_a_name_is_no_address(host: str) -> None:
    assert literal_address(host) is None


@pytest.mark.parametrize("host", ["256.0.0.1", "1.2.3.4.5", "0x100000000", "4294967296", "08.0.0.1",
                                  "127..1", "1.2.3.256", "1.2.65536", "x1.0x", "::ffff::1", "1::2::3"])
def test_a_host_that_ends_in_a_number_but_is_no_address(host: str) -> None:
    with pytest.raises(ValueError):
        literal_address(host)


# -- allowed networks ----------------------------------------------------------------


def test_allowed_networks_open_exactly_what_they_name() -> None:
    assert LOOPBACK_ONLY.allows(ip_address("127.0.0.1"))
    assert LOOPBACK_ONLY.allows(ip_address("::ffff:127.0.0.1"))  # the same address
    assert not LOOPBACK_ONLY.allows(ip_address("127.0.0.2"))
    assert not LOOPBACK_ONLY.allows(ip_address("::ffff:127.0.0.2"))
    assert not LOOPBACK_ONLY.allows(ip_address("::1"))
    assert not LOOPBACK_ONLY.allows(ip_address("10.0.0.1"))
    private = WebhookPolicy(parse_networks("10.20.0.0/16, fd00:1::/32"))
    assert private.allows(ip_address("10.20.3.4"))
    assert not private.allows(ip_address("10.21.0.1"))
    assert private.allows(ip_address("fd00:1::5"))
    assert not private.allows(ip_address("fd00:2::5"))
    assert not private.allows(ip_address("169.254.169.254"))


def test_parse_networks() -> None:
    assert parse_networks("") == ()
    assert parse_networks(" , ") == ()
    assert [str(n) for n in parse_networks("127.0.0.1/32, ::1 ,10.0.0.0/8")] == [
        "127.0.0.1/32", "::1/128", "10.0.0.0/8"]
    for bad in ("10.1.2.3/8", "bogus", "10.0.0.0/33", "localhost"):
        with pytest.raises(ValueError):
            parse_networks(bad)


def test_the_setting_names_itself_when_bad(monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_settings().webhook_networks == ()
    monkeypatch.setenv("FNHOST_WEBHOOK_ALLOWED_NETWORKS", "127.0.0.1/32,::1/128")
    assert [str(n) for n in load_settings().webhook_networks] == ["127.0.0.1/32", "::1/128"]
    monkeypatch.setenv("FNHOST_WEBHOOK_ALLOWED_NETWORKS", "127.0.0.1/8")
    with pytest.raises(SettingsError, match="FNHOST_WEBHOOK_ALLOWED_NETWORKS"):
        load_settings()


# -- the address a socket is about to connect to ------------------------------------


@pytest.mark.parametrize(("family", "sockaddr", "allowed"), [
    (socket.AF_INET, ("127.0.0.1", 80), True),
    (socket.AF_INET, ("127.0.0.2", 80), False),
    (socket.AF_INET, ("169.254.169.254", 80), False),
    (socket.AF_INET, ("10.1.2.3", 443), False),
    (socket.AF_INET, ("8.8.8.8", 443), True),
    (socket.AF_INET6, ("::1", 80, 0, 0), False),
    (socket.AF_INET6, ("::ffff:127.0.0.2", 80, 0, 0), False),
    (socket.AF_INET6, ("::ffff:127.0.0.1", 80, 0, 0), True),
    (socket.AF_INET6, ("fe80::1%lo", 80, 0, 1), False),
    (socket.AF_INET6, ("2606:4700:4700::1111", 443, 0, 0), True),
    (socket.AF_UNIX, ("/run/docker.sock",), False),
    (socket.AF_INET, ("not an address", 80), False),
    (socket.AF_INET, (), False),
])
def test_socket_addresses(family: int, sockaddr: tuple[object, ...], allowed: bool) -> None:
    assert LOOPBACK_ONLY.allows_sockaddr(family, sockaddr) is allowed


def test_the_socket_factory_refuses_before_any_socket_exists() -> None:
    new_socket = guarded_sockets(LOOPBACK_ONLY)
    with pytest.raises(AddressNotAllowed) as refused:
        new_socket((socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", ("127.0.0.2", 80)))
    assert str(refused.value) == "address not allowed"
    assert isinstance(refused.value, OSError)
    sock = new_socket((socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", ("127.0.0.1", 80)))
    try:
        assert sock.family == socket.AF_INET and sock.type == socket.SOCK_STREAM
    finally:
        sock.close()  # made, never connected


# -- destination URLs, at validation -------------------------------------------------


@pytest.mark.parametrize("url", [
    f"http://user:{SECRET}@hooks.example/done", f"https://user:{SECRET}@hooks.example:8443/",
    "http://user@hooks.example/", "http://@hooks.example/", f"http://:{SECRET}@hooks.example/",
    f"http://u%40x:{SECRET}@hooks.example/", f"http://127.0.0.1:80%2f:{SECRET}@hooks.example/",
])
def test_credentials_are_refused(url: str) -> None:
    for policy in (DEFAULT, LOOPBACK_ONLY, WebhookPolicy(parse_networks("0.0.0.0/0,::/0"))):
        problem = policy.url_problem(url)
        assert problem is not None and problem.kind == "credentials"
        assert "credentials" in problem.message and SECRET not in problem.message
        assert problem.recorded == "credentials in the URL are not allowed"


@pytest.mark.parametrize("url", [
    "http://hooks.example/done?user=a@b", "http://hooks.example/a@b", "https://hooks.example:8443/x",
    "http://8.8.8.8/hook", "http://[2606:4700:4700::1111]:8080/", "http://HOOKS.example/",
    "http://bücher.example/", "http://localhost:9/",  # a name: judged when connected to
])
def test_acceptable_urls(url: str) -> None:
    assert DEFAULT.url_problem(url) is None


@pytest.mark.parametrize("host", [
    *SPELLINGS_OF_127_0_0_2, "[::1]", "[::ffff:127.0.0.2]", "[::ffff:7f00:2]", "[0:0:0:0:0:0:0:1]",
    "10.0.0.1", "0xa000001", "012.0.0.1", "167772161", "172.16.0.1", "192.168.1.1", "100.64.0.1",
    "169.254.169.254", "0xa9fea9fe", "2852039166", "0251.0376.0251.0376", "[::ffff:169.254.169.254]",
    "[fe80::1%25eth0]", "[fd00::1]", "[64:ff9b::7f00:1]", "0.0.0.0", "0", "[::]", "224.0.0.1",
    "255.255.255.255", "\uff11\uff12\uff17.0.0.2",  # full-width digits
])
def test_a_refused_address_is_refused_in_any_spelling(host: str) -> None:
    for port in ("", ":15672"):
        url = f"http://{host}{port}/api/definitions"
        problem = DEFAULT.url_problem(url)
        assert problem is not None, url
        assert problem.kind == "address", (url, problem)
        assert "FNHOST_WEBHOOK_ALLOWED_NETWORKS" in problem.message, problem
        assert problem.recorded == "address not allowed"


def test_allowed_networks_apply_at_validation() -> None:
    assert LOOPBACK_ONLY.url_problem("http://127.0.0.1:8080/hook") is None
    assert LOOPBACK_ONLY.url_problem("http://[::ffff:127.0.0.1]:8080/hook") is None  # the same address
    assert LOOPBACK_ONLY.url_problem("http://127.0.0.2:8080/hook") is not None
    assert LOOPBACK_ONLY.url_problem("http://[::1]:8080/hook") is not None


@pytest.mark.parametrize("host", ["0x08080808", "134744072", "8.8.2056", "010.010.010.010", "8.8.8.8."])
def test_a_public_address_in_an_odd_spelling_is_refused(host: str) -> None:
    """Such a spelling has no use but to slip past a check: it is refused, the standard one shown."""
    problem = DEFAULT.url_problem(f"http://{host}/hook")
    assert problem is not None and problem.kind == "url", problem
    assert "write it as 8.8.8.8" in problem.message
    open_ = WebhookPolicy(parse_networks("127.0.0.1/32"))
    problem = open_.url_problem("http://0x7f000001:8080/hook")
    assert problem is not None and "write it as 127.0.0.1" in problem.message


@pytest.mark.parametrize("url", [
    "ftp://hooks.example/", "file:///etc/passwd", "http:///x", "http://256.1.1.1/", "http://1.2.3.4.5/",
    "http://%31%32%37.0.0.2/", "http://hooks.example:99999/", "http://a\\@127.0.0.2/",
])
def test_malformed_urls(url: str) -> None:
    problem = DEFAULT.url_problem(url)
    assert problem is not None and problem.kind == "url", problem


def test_logs_show_a_webhook_by_host_and_port_only() -> None:
    assert shown_host(f"http://user:{SECRET}@hooks.example:8080/done?token=t") == "hooks.example:8080"
    assert shown_host("https://hooks.example/x") == "hooks.example"
    assert shown_host("http://[::1]:9/x") == "[::1]:9"
    assert shown_host("http://[::1]:99999/x") == "?"
