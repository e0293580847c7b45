import pytest

from gateway.netaccess import AccessPolicy


@pytest.mark.parametrize(
    "allow, deny, trusted, peer, xff, path, expected",
    [
        ((), (), (), "1.2.3.4", None, "/v1/messages", (True, "1.2.3.4", None)),
        (("10.0.0.0/8",), (), (), "1.2.3.4", None, "/v1/messages", (False, "1.2.3.4", "ip_not_allowed")),
        (("10.0.0.0/8",), (), (), "1.2.3.4", None, "/healthz", (True, "1.2.3.4", None)),
        (("10.0.0.0/8",), ("10.0.0.5/32",), (), "10.0.0.5", None, "/healthz", (False, "10.0.0.5", "ip_denylist")),
        # XFF ignored from an untrusted peer
        (("10.0.0.0/8",), (), (), "1.2.3.4", "10.1.1.1", "/x", (False, "1.2.3.4", "ip_not_allowed")),
        # walked past trusted hops from the right
        (("10.0.0.0/8",), (), ("192.168.0.0/16",), "192.168.1.1", "10.9.9.9, 192.168.1.2", "/x", (True, "10.9.9.9", None)),
        (("10.0.0.0/8",), (), ("192.168.0.0/16",), "192.168.1.1", "1.1.1.1, 10.9.9.9", "/x", (True, "10.9.9.9", None)),
        (("10.0.0.0/8",), (), ("192.168.0.0/16",), "192.168.1.1", "junk", "/x", (False, None, "xff_unparseable")),
        ((), (), ("192.168.0.0/16",), "192.168.1.1", "5.5.5.5:443", "/x", (True, "5.5.5.5", None)),
        (("127.0.0.0/8",), (), (), "::ffff:127.0.0.1", None, "/x", (True, "127.0.0.1", None)),
    ],
)
def test_decide(allow, deny, trusted, peer, xff, path, expected):
    assert tuple(AccessPolicy(allow, deny, trusted).decide(peer, xff, path)) == expected


def test_the_first_public_client_is_told_once_and_private_ones_never():
    policy = AccessPolicy((), (), ())
    private = ["10.1.2.3", "172.20.0.1", "192.168.9.9", "100.64.1.1", "127.0.0.1", "::1", "fd00::5", "::ffff:10.0.0.1"]
    assert [policy.first_public_client(ip) for ip in [*private, None, "not-an-ip"]] == [False] * 10
    assert policy.first_public_client("203.0.113.7") is True
    assert policy.first_public_client("198.51.100.1") is False  # once per policy, which is once per process
    assert policy.first_public_client("203.0.113.7") is False


@pytest.mark.parametrize("public", ["8.8.8.8", "2001:db8::1", "172.32.0.1", "100.128.0.1", "169.254.1.1"])
def test_anything_outside_the_recommended_allow_list_counts_as_public(public):
    assert AccessPolicy((), ("192.0.2.0/24",), ()).first_public_client(public) is True


def test_an_allow_list_means_no_public_client_is_ever_told():
    policy = AccessPolicy(("0.0.0.0/0",), (), ())
    assert policy.first_public_client("203.0.113.7") is False
