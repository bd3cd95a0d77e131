"""API keys: register a pair, list keys without secrets, delete; one owner per pair."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.conftest import bearer, register
from tests.helpers import assert_error, push, read

KEYS_URL = "/api/v1/api-keys"
PUBLIC_FIELDS = {"key_id", "masked", "device_id", "device_name", "description", "private", "created_at"}


def test_create_key_returns_secret_once_with_every_field(app, client, owner):
    body = register(client, owner, "dev-1", "green house", description="bench", private=True)
    assert set(body) == PUBLIC_FIELDS | {"api_key"}
    assert body["device_id"] == "dev-1" and body["device_name"] == "green house"
    assert body["description"] == "bench" and body["private"] is True
    assert body["api_key"].startswith("osk_") and body["api_key"] not in body["masked"]
    assert body["created_at"].endswith("Z")


def test_create_key_defaults_to_public_with_empty_description(client, owner):
    response = client.post(KEYS_URL, json={"device_id": "d", "device_name": "n"}, headers=bearer(owner))
    assert response.status_code == 201
    assert response.get_json()["private"] is False
    assert response.get_json()["description"] == ""


def test_only_a_hash_of_the_key_is_stored(app, client, owner):
    secret = register(client, owner, "dev-1", "room")["api_key"]
    with app.app_context():
        docs = list(app.extensions["mongo"].db["api_keys"].find({}, {"_id": 0}))
    assert len(docs) == 1
    assert secret not in repr(docs)


def test_list_keys_shows_own_keys_without_secrets(client, owner, other):
    mine = register(client, owner, "dev-1", "room", description="a")
    register(client, owner, "dev-2", "room")
    register(client, other, "dev-3", "hall")
    response = client.get(KEYS_URL, headers=bearer(owner))
    assert response.status_code == 200
    keys = response.get_json()["keys"]
    assert [k["device_id"] for k in keys] == ["dev-1", "dev-2"]
    assert all(set(k) == PUBLIC_FIELDS for k in keys)
    assert keys[0]["key_id"] == mine["key_id"] and keys[0]["masked"] == mine["masked"]
    assert mine["api_key"] not in response.get_data(as_text=True)


def test_list_keys_of_a_user_without_keys_is_empty(client, owner):
    response = client.get(KEYS_URL, headers=bearer(owner))
    assert response.status_code == 200 and response.get_json() == {"keys": []}


def test_pair_registered_by_another_user_conflicts(client, owner, other):
    register(client, owner, "dev-1", "room")
    response = client.post(KEYS_URL, json={"device_id": "dev-1", "device_name": "room"}, headers=bearer(other))
    assert_error(response, 409, "conflict")


def test_same_owner_registering_the_same_pair_again_conflicts(client, owner):
    register(client, owner, "dev-1", "room")
    response = client.post(KEYS_URL, json={"device_id": "dev-1", "device_name": "room"}, headers=bearer(owner))
    assert_error(response, 409, "conflict")


def test_same_id_under_another_name_is_another_device(client, owner, other):
    register(client, owner, "dev-1", "room")
    assert register(client, other, "dev-1", "hall")["device_name"] == "hall"


def test_delete_key_answers_204_and_drops_it_from_the_list(client, owner):
    key = register(client, owner, "dev-1", "room")
    response = client.delete(f"{KEYS_URL}/{key['key_id']}", headers=bearer(owner))
    assert response.status_code == 204 and response.get_data() == b""
    assert client.get(KEYS_URL, headers=bearer(owner)).get_json() == {"keys": []}
    assert_error(client.delete(f"{KEYS_URL}/{key['key_id']}", headers=bearer(owner)), 404, "not_found")


def test_delete_unknown_key_is_404(client, owner):
    assert_error(client.delete(f"{KEYS_URL}/0123456789abcdef", headers=bearer(owner)), 404, "not_found")


def test_delete_another_users_key_is_404_and_keeps_it(client, owner, other):
    key = register(client, owner, "dev-1", "room")
    assert_error(client.delete(f"{KEYS_URL}/{key['key_id']}", headers=bearer(other)), 404, "not_found")
    assert len(client.get(KEYS_URL, headers=bearer(owner)).get_json()["keys"]) == 1


def test_deleted_key_no_longer_pushes(client, owner):
    key = register(client, owner, "dev-1", "room")
    client.delete(f"{KEYS_URL}/{key['key_id']}", headers=bearer(owner))
    assert_error(push(client, key, "dev-1", "room", {"temp": 1}), 401, "invalid_credentials")


def test_pair_is_free_again_after_its_key_is_deleted(client, owner, other):
    key = register(client, owner, "dev-1", "room")
    client.delete(f"{KEYS_URL}/{key['key_id']}", headers=bearer(owner))
    assert register(client, other, "dev-1", "room")["device_id"] == "dev-1"


@pytest.mark.parametrize(
    ("method", "path"),
    [("post", KEYS_URL), ("get", KEYS_URL), ("delete", f"{KEYS_URL}/0123456789abcdef")],
)
def test_key_routes_need_a_bearer(client, method, path):
    response = getattr(client, method)(path, json={"device_id": "d", "device_name": "n"})
    assert_error(response, 401, "auth_required")


@pytest.mark.parametrize(
    "header",
    ["Bearer ost_0123456789abcdef_" + "x" * 43, "Bearer nonsense", "Basic dXNlcjpwdw==", "Bearer", ""],
)
def test_key_routes_reject_a_wrong_bearer(client, header):
    assert_error(client.get(KEYS_URL, headers={"Authorization": header}), 401, "invalid_credentials")


def test_device_key_is_not_a_user_credential(client, owner):
    key = register(client, owner, "dev-1", "room")
    assert_error(client.get(KEYS_URL, headers={"X-API-Key": key["api_key"]}), 401, "auth_required")


@pytest.mark.parametrize(
    "body",
    [
        {"device_name": "n"},
        {"device_id": "d"},
        {"device_id": "", "device_name": "n"},
        {"device_id": "d", "device_name": ""},
        {"device_id": "x" * 65, "device_name": "n"},
        {"device_id": "d", "device_name": "n" * 65},
        {"device_id": "has space", "device_name": "n"},
        {"device_id": "d/1", "device_name": "n"},
        {"device_id": "d", "device_name": "a/b"},
        {"device_id": "dé", "device_name": "n"},
        {"device_id": 7, "device_name": "n"},
        {"device_id": "d", "device_name": ["n"]},
        {"device_id": "d", "device_name": "n", "private": "yes"},
        {"device_id": "d", "device_name": "n", "private": 1},
        {"device_id": "d", "device_name": "n", "description": 5},
        {"device_id": "d", "device_name": "n", "description": "x" * 257},
        {"device_id": "d", "device_name": "n", "owner_id": "someone"},
    ],
    ids=lambda body: repr(body)[:40],
)
def test_bad_key_fields_are_validation_errors(client, owner, body):
    assert_error(client.post(KEYS_URL, json=body, headers=bearer(owner)), 400, "validation_error")


def test_longest_allowed_pair_with_every_allowed_character_registers(client, owner):
    device_id = ("aZ9._:-" * 10)[:64]
    device_name = ("aZ 9._:-" * 10)[:64]
    key = register(client, owner, device_id, device_name)
    assert (key["device_id"], key["device_name"]) == (device_id, device_name)
    assert push(client, key, device_id, device_name, {"rh": 40}).status_code == 201
    response = read(client, device_id, device_name.replace(" ", "%20"), "rh")
    assert response.status_code == 200 and response.get_json()["total"] == 1


def test_create_key_body_must_be_json(client, owner):
    response = client.post(KEYS_URL, data="device_id=d", content_type="text/plain", headers=bearer(owner))
    assert_error(response, 415, "unsupported_media_type")
    response = client.post(KEYS_URL, data="{not json", content_type="application/json", headers=bearer(owner))
    assert_error(response, 400, "validation_error")
    response = client.post(KEYS_URL, json=["d", "n"], headers=bearer(owner))
    assert_error(response, 400, "validation_error")


def test_concurrent_registrations_of_one_pair_give_exactly_one_key(app, client, owner, other):
    def attempt(user: dict) -> int:
        body = {"device_id": "race", "device_name": "room"}
        return app.test_client().post(KEYS_URL, json=body, headers=bearer(user)).status_code

    with ThreadPoolExecutor(max_workers=8) as pool:
        statuses = list(pool.map(attempt, [owner, other] * 4))
    assert sorted(statuses) == [201] + [409] * 7
    with app.app_context():
        assert app.extensions["mongo"].db["api_keys"].count_documents({"device_id": "race"}) == 1


def test_an_insert_retried_after_its_answer_was_lost_is_the_key_created(app, client, owner, monkeypatch):
    """pymongo retries a write whose answer a socket timeout lost; when the first try was stored,
    the retry finds the key it is: the suite once saw a 409 for a device registered once."""
    from pymongo.collection import Collection

    from app.db import KEYS

    real = Collection.insert_one

    def stored_then_retried(self, doc, *args, **kwargs):
        if self.name == KEYS:
            real(self, doc, *args, **kwargs)
        return real(self, doc, *args, **kwargs)  # DuplicateKeyError, as the retry gets

    monkeypatch.setattr(Collection, "insert_one", stored_then_retried)
    response = client.post("/api/v1/api-keys", json={"device_id": "d", "device_name": "n"}, headers=bearer(owner))
    monkeypatch.undo()
    assert response.status_code == 201, response.get_json()
    assert client.get("/api/v1/devices/d/n").status_code == 200
