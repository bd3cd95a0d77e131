"""Who may read a device: the auth matrix of the readings and device routes."""

from __future__ import annotations

import pytest

from tests.conftest import bearer, register
from tests.helpers import assert_error

UNKNOWN_TOKEN = "ost_0123456789abcdef_" + "t" * 43
UNKNOWN_KEY = "osk_0123456789abcdef_" + "k" * 43

ROUTES = {
    "device": "/api/v1/devices/{id}/{name}",
    "readings": "/api/v1/devices/{id}/{name}/readings/temp",
}


@pytest.fixture
def world(client, owner, other, admin) -> dict[str, dict[str, str]]:
    """A private and a public device of ``owner``, a chain sibling, and a device of ``other``."""
    private = register(client, owner, "priv", "tent", private=True)
    sibling = register(client, owner, "priv-2", "tent", private=True)
    register(client, owner, "pub", "shed")
    elsewhere = register(client, other, "theirs", "hall", private=True)
    return {
        "none": {},
        "wrong bearer": {"Authorization": f"Bearer {UNKNOWN_TOKEN}"},
        "bearer with a forged secret": {"Authorization": "Bearer " + owner["token"][:-3] + "zzz"},
        "malformed bearer": {"Authorization": "Bearer not-a-token"},
        "basic auth": {"Authorization": "Basic b3duZXI6cHc="},
        "empty authorization": {"Authorization": ""},
        "other user": bearer(other),
        "admin": bearer(admin),
        "owner": bearer(owner),
        "pair key": {"X-API-Key": private["api_key"]},
        "chain sibling key": {"X-API-Key": sibling["api_key"]},
        "other pair key": {"X-API-Key": elsewhere["api_key"]},
        "unknown key": {"X-API-Key": UNKNOWN_KEY},
        "malformed key": {"X-API-Key": "osk_nope"},
        "key with a forged secret": {"X-API-Key": private["api_key"][:-3] + "zzz"},
        "owner with an unknown key": {**bearer(owner), "X-API-Key": UNKNOWN_KEY},
        "other user with the pair key": {**bearer(other), "X-API-Key": private["api_key"]},
    }


PRIVATE_MATRIX = [
    ("none", 401, "auth_required"),
    ("wrong bearer", 401, "invalid_credentials"),
    ("bearer with a forged secret", 401, "invalid_credentials"),
    ("malformed bearer", 401, "invalid_credentials"),
    ("basic auth", 401, "invalid_credentials"),
    ("empty authorization", 401, "invalid_credentials"),
    ("other user", 403, "forbidden"),
    ("admin", 403, "forbidden"),
    ("owner", 200, None),
    ("pair key", 200, None),
    ("chain sibling key", 403, "forbidden"),
    ("other pair key", 403, "forbidden"),
    ("unknown key", 401, "invalid_credentials"),
    ("malformed key", 401, "invalid_credentials"),
    ("key with a forged secret", 401, "invalid_credentials"),
    ("owner with an unknown key", 401, "invalid_credentials"),
    ("other user with the pair key", 200, None),
]


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize(("who", "status", "code"), PRIVATE_MATRIX, ids=[row[0] for row in PRIVATE_MATRIX])
def test_private_device_access(client, world, route, who, status, code):
    response = client.get(ROUTES[route].format(id="priv", name="tent"), headers=world[who])
    if code is None:
        assert response.status_code == status, response.get_json()
    else:
        assert_error(response, status, code)


PUBLIC_MATRIX = [
    ("none", 200, None),
    ("other user", 200, None),
    ("owner", 200, None),
    ("other pair key", 200, None),
    ("wrong bearer", 401, "invalid_credentials"),
    ("malformed bearer", 401, "invalid_credentials"),
    ("unknown key", 401, "invalid_credentials"),
    ("malformed key", 401, "invalid_credentials"),
]


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize(("who", "status", "code"), PUBLIC_MATRIX, ids=[row[0] for row in PUBLIC_MATRIX])
def test_public_device_access(client, world, route, who, status, code):
    response = client.get(ROUTES[route].format(id="pub", name="shed"), headers=world[who])
    if code is None:
        assert response.status_code == status, response.get_json()
    else:
        assert_error(response, status, code)


@pytest.mark.parametrize("route", ROUTES)
def test_wrong_credentials_on_an_unknown_pair_are_401_before_404(client, world, route):
    url = ROUTES[route].format(id="ghost", name="tent")
    assert_error(client.get(url, headers=world["wrong bearer"]), 401, "invalid_credentials")
    assert_error(client.get(url, headers=world["unknown key"]), 401, "invalid_credentials")
    assert_error(client.get(url, headers=world["other user"]), 404, "not_found")
    assert_error(client.get(url), 404, "not_found")


def test_token_of_a_user_works_with_a_lowercase_scheme(client, world, owner):
    response = client.get("/api/v1/api-keys", headers={"Authorization": f"bearer {owner['token']}"})
    assert response.status_code == 200


def test_bearer_token_is_not_accepted_as_a_device_key(client, world, owner):
    response = client.get(ROUTES["device"].format(id="priv", name="tent"), headers={"X-API-Key": owner["token"]})
    assert_error(response, 401, "invalid_credentials")


def test_query_parameters_of_a_private_device_are_checked_only_after_access(client, world):
    url = ROUTES["readings"].format(id="priv", name="tent") + "?resolution=0"
    assert_error(client.get(url), 401, "auth_required")
    assert_error(client.get(url, headers=world["other user"]), 403, "forbidden")
    assert_error(client.get(url, headers=world["owner"]), 400, "validation_error")


def test_wrong_bearer_on_a_push_is_401_even_with_a_good_key(app, client, owner):
    key = register(client, owner, "pushy", "tent")
    response = client.post(
        "/api/v1/readings",
        json={"device_id": "pushy", "device_name": "tent", "readings": {"temp": 20}},
        headers={"X-API-Key": key["api_key"], "Authorization": "Bearer ost_0123456789abcdef_wrongwrongwrongwrongwrong"},
    )
    assert response.status_code == 401
    assert response.get_json()["error"]["code"] == "invalid_credentials"


def test_wrong_api_key_on_the_device_list_is_401_not_anonymous(client):
    response = client.get("/api/v1/devices", headers={"X-API-Key": "osk_0123456789abcdef_notarealkeynotarealkey"})
    assert response.status_code == 401
    assert response.get_json()["error"]["code"] == "invalid_credentials"
