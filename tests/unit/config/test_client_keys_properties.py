"""Properties of client key loading for private_key_jwt (issue 17, fuzzing).

Whatever text reaches ``oidc.client_assertion`` (damaged PEM, another key's
certificate, other key types, random text, characters an environment variable
can carry), :func:`load_client_key` gives a usable key or
:class:`KeyMaterialError` naming the field at fault, never another exception,
and never quotes the key. Example counts come from the hypothesis profile
(tests/conftest.py).
"""

from __future__ import annotations

import base64

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.config.client_keys import KeyMaterialError, load_client_key
from tests.client_certs import client_cert

PROPS = settings(deadline=None)
RSA = client_cert("RSA")
EC = client_cert("EC")
PAIRS = [RSA, EC]
# The base64 lines of every PEM above: none may show up in a message.
SECRET_LINES = [line for pair in PAIRS for line in pair.key_pem.splitlines() if not line.startswith("-----")]


@st.composite
def damaged(draw, pem: str) -> str:
    text = list(pem)
    for _ in range(draw(st.integers(0, 3))):
        what = draw(st.sampled_from(["flip", "cut", "insert", "truncate"]))
        at = draw(st.integers(0, len(text)))
        if what == "flip" and at < len(text):
            text[at] = draw(st.sampled_from(list("AZaz09+/=-\n \udcff\x00")))
        elif what == "cut":
            del text[at : at + draw(st.integers(1, 40))]
        elif what == "insert":
            text[at:at] = list(draw(st.text(max_size=6)))
        else:
            del text[at:]
    return "".join(text)


def texts_for(field: str) -> st.SearchStrategy[str]:
    pems = [getattr(pair, field) for pair in PAIRS]
    return st.one_of(
        st.sampled_from(pems),
        st.sampled_from(pems).flatmap(lambda pem: damaged(pem)),
        st.text(max_size=80),
        # os.environ hands undecodable bytes over as lone surrogates (surrogateescape).
        st.text(st.characters(codec=None), max_size=40),
        st.sampled_from(["", "-----BEGIN PRIVATE KEY-----\n-----END PRIVATE KEY-----\n", "\udcff"]),
    )


@PROPS
@given(texts_for("key_pem"), texts_for("cert_pem"))
def test_any_key_and_certificate_text_is_a_key_or_names_its_field(key, cert):
    try:
        loaded = load_client_key(key, cert)
    except KeyMaterialError as err:
        assert err.field in ("private_key_pem", "certificate_pem")
        assert not any(line and line in str(err) for line in SECRET_LINES)
        return
    assert loaded.alg in ("RS256", "ES256", "ES384", "ES512") and loaded.x5t and loaded.x5t_s256


def test_text_that_is_not_utf8_encodable_names_its_field():
    # A lone surrogate (what os.environ makes of a non-UTF-8 byte behind ${VAR}).
    for key, cert, field in [("\udcff", RSA.cert_pem, "private_key_pem"), (RSA.key_pem, "\udcff", "certificate_pem")]:
        try:
            load_client_key(key, cert)
        except KeyMaterialError as err:
            assert err.field == field
        else:
            raise AssertionError("accepted")


def certificates_whose_key_is_damaged() -> list[str]:
    """RSA's certificate with one byte changed where it still loads but its public key
    does not parse (cryptography reads that part only when asked)."""
    lines = RSA.cert_pem.strip().splitlines()
    der = base64.b64decode("".join(lines[1:-1]))
    found = []
    for at in range(len(der)):
        damaged = der[:at] + b"\x00" + der[at + 1 :]
        try:
            cert = x509.load_der_x509_certificate(damaged)
        except ValueError:
            continue
        try:
            cert.public_key()
        except (ValueError, UnsupportedAlgorithm):
            body = base64.encodebytes(damaged).decode()
            found.append(f"-----BEGIN CERTIFICATE-----\n{body}-----END CERTIFICATE-----\n")
    return found


def test_regression_a_certificate_whose_public_key_does_not_parse_names_its_field():
    # Found by the property above under the large profile: the certificate loaded, and
    # reading its public key then raised ValueError/UnsupportedAlgorithm out of the check.
    damaged = certificates_whose_key_is_damaged()
    assert damaged
    for cert in damaged:
        try:
            load_client_key(RSA.key_pem, cert)
        except KeyMaterialError as err:
            assert err.field == "certificate_pem"
        else:
            raise AssertionError("accepted")
