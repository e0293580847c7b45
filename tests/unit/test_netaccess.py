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
