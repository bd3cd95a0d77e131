"""Devices: the list, the device route, chains, and what happens when keys go away."""

from __future__ import annotations

from tests.conftest import bearer, create_user, register
from tests.helpers import assert_error, insert_readings, push, read, utc

DEVICES_URL = "/api/v1/devices"
RANGE = {"start": "2024-03-10T00:00:00Z", "end": "2024-03-11T00:00:00Z"}


def device_url(device_id: str, device_name: str) -> str:
    return f"{DEVICES_URL}/{device_id}/{device_name}"


def listed(response) -> list[tuple[str, str, bool, bool]]:
    assert response.status_code == 200
    body = response.get_json()
    assert set(body) == {"devices"}
    assert all(set(d) == {"device_id", "device_name", "public", "owned"} for d in body["devices"])
    return sorted((d["device_id"], d["device_name"], d["public"], d["owned"]) for d in body["devices"])


def test_device_list_is_public_devices_for_anonymous_callers(client, owner, other):
    register(client, owner, "a", "room")
    register(client, owner, "b", "room", private=True)
    register(client, other, "c", "hall")
    assert listed(client.get(DEVICES_URL)) == [("a", "room", True, False), ("c", "hall", True, False)]


def test_device_list_adds_the_callers_private_devices_and_marks_owned(client, owner, other):
    register(client, owner, "a", "room")
    register(client, owner, "b", "room", private=True)
    register(client, other, "c", "hall")
    register(client, other, "d", "hall", private=True)
    assert listed(client.get(DEVICES_URL, headers=bearer(owner))) == [
        ("a", "room", True, True),
        ("b", "room", False, True),
        ("c", "hall", True, False),
    ]
    assert listed(client.get(DEVICES_URL, headers=bearer(other))) == [
        ("a", "room", True, False),
        ("c", "hall", True, True),
        ("d", "hall", False, True),
    ]


def test_device_list_is_empty_without_devices(client):
    assert client.get(DEVICES_URL).get_json() == {"devices": []}


def test_device_list_with_a_wrong_bearer_is_401(client):
    response = client.get(DEVICES_URL, headers={"Authorization": "Bearer ost_0123456789abcdef_" + "z" * 43})
    assert_error(response, 401, "invalid_credentials")


def test_device_route_shows_owner_id_only_to_the_owner(client, owner, other):
    register(client, owner, "a", "green house")
    mine = client.get(device_url("a", "green house"), headers=bearer(owner))
    assert mine.status_code == 200
    assert mine.get_json() == {
        "device_id": "a",
        "device_name": "green house",
        "chain": ["a"],
        "public": True,
        "owner_id": owner["user_id"],
    }
    for headers in ({}, bearer(other)):
        theirs = client.get(device_url("a", "green house"), headers=headers)
        assert theirs.status_code == 200
        assert theirs.get_json() == {"device_id": "a", "device_name": "green house", "chain": ["a"], "public": True}


def test_device_route_with_the_pairs_key_has_no_owner_id(client, owner):
    key = register(client, owner, "a", "room", private=True)
    body = client.get(device_url("a", "room"), headers={"X-API-Key": key["api_key"]}).get_json()
    assert body == {"device_id": "a", "device_name": "room", "chain": ["a"], "public": False}


def test_device_route_takes_url_encoded_segments(client, owner):
    register(client, owner, "id:1.x_y-z", "my room")
    response = client.get("/api/v1/devices/id%3A1.x_y-z/my%20room")
    assert response.status_code == 200 and response.get_json()["device_name"] == "my room"


def test_unknown_or_invalid_pair_on_the_device_route_is_404(client, owner):
    register(client, owner, "a", "room")
    for device_id, device_name in [("b", "room"), ("a", "hall"), ("a b", "room"), ("a", "x" * 65)]:
        assert_error(client.get(device_url(device_id, device_name)), 404, "not_found")


def test_ids_one_owner_registers_under_one_name_form_a_chain(app, client, owner):
    old = register(client, owner, "old-board", "tent")
    new = register(client, owner, "new-board", "tent")
    register(client, owner, "other-board", "shed")
    for device_id in ("old-board", "new-board"):
        body = client.get(device_url(device_id, "tent")).get_json()
        assert body["chain"] == ["new-board", "old-board"]
    assert client.get(device_url("other-board", "shed")).get_json()["chain"] == ["other-board"]
    insert_readings(app, "old-board", "tent", owner["user_id"], [(utc(2024, 3, 10, 1), {"co2": 400})])
    insert_readings(app, "new-board", "tent", owner["user_id"], [(utc(2024, 3, 10, 2), {"co2": 500})])
    for device_id in ("old-board", "new-board"):
        body = read(client, device_id, "tent", "co2", **RANGE).get_json()
        assert body["device"]["chain"] == ["new-board", "old-board"]
        assert [i["value"] for i in body["items"]] == [400, 500]
    assert push(client, old, "old-board", "tent", {"rh": 1}).status_code == 201
    assert push(client, new, "new-board", "tent", {"rh": 2}).status_code == 201
    assert [i["count"] for i in read(client, "old-board", "tent", "rh").get_json()["items"]] == [2]


def test_another_owner_cannot_join_a_chain(client, owner, other):
    register(client, owner, "board-1", "tent")
    response = client.post(
        "/api/v1/api-keys", json={"device_id": "board-1", "device_name": "tent"}, headers=bearer(other)
    )
    assert_error(response, 409, "conflict")
    register(client, other, "board-2", "tent")  # same name, other owner: a separate history
    assert client.get(device_url("board-1", "tent")).get_json()["chain"] == ["board-1"]
    assert client.get(device_url("board-2", "tent")).get_json()["chain"] == ["board-2"]


def test_registering_a_new_id_shows_at_once_in_the_chain_of_a_cached_device(client, owner):
    register(client, owner, "a", "tent")
    assert client.get(device_url("a", "tent")).get_json()["chain"] == ["a"]  # now cached
    register(client, owner, "b", "tent")
    assert client.get(device_url("a", "tent")).get_json()["chain"] == ["a", "b"]


def test_deleting_one_id_of_a_chain_shrinks_it(client, owner):
    register(client, owner, "a", "tent")
    b = register(client, owner, "b", "tent")
    assert client.get(device_url("a", "tent")).get_json()["chain"] == ["a", "b"]
    client.delete(f"/api/v1/api-keys/{b['key_id']}", headers=bearer(owner))
    assert client.get(device_url("a", "tent")).get_json()["chain"] == ["a"]
    assert_error(client.get(device_url("b", "tent")), 404, "not_found")


def test_deleting_the_last_key_makes_the_pair_unknown_everywhere(app, client, owner):
    key = register(client, owner, "a", "tent")
    assert push(client, key, "a", "tent", {"temp": 20}).status_code == 201
    assert client.get(device_url("a", "tent")).status_code == 200  # cached lookup
    assert read(client, "a", "tent", "temp").get_json()["total"] == 1
    assert client.delete(f"/api/v1/api-keys/{key['key_id']}", headers=bearer(owner)).status_code == 204
    for headers in ({}, bearer(owner)):
        assert_error(client.get(device_url("a", "tent"), headers=headers), 404, "not_found")
        assert_error(read(client, "a", "tent", "temp", headers=headers), 404, "not_found")
    assert listed(client.get(DEVICES_URL, headers=bearer(owner))) == []
    assert_error(push(client, key, "a", "tent", {"temp": 20}), 401, "invalid_credentials")


def test_a_new_owner_of_a_freed_pair_never_sees_the_earlier_owners_readings(app, client, owner, other):
    key = register(client, owner, "a", "tent")
    assert push(client, key, "a", "tent", {"temp": 20}).status_code == 201
    client.delete(f"/api/v1/api-keys/{key['key_id']}", headers=bearer(owner))
    fresh = register(client, other, "a", "tent")
    body = read(client, "a", "tent", "temp").get_json()
    assert (body["items"], body["total"]) == ([], 0)
    assert push(client, fresh, "a", "tent", {"temp": 30}).status_code == 201
    [item] = read(client, "a", "tent", "temp").get_json()["items"]
    assert (item["value"], item["count"]) == (30, 1)
    body = client.get(device_url("a", "tent"), headers=bearer(other)).get_json()
    assert body["owner_id"] == other["user_id"] and body["chain"] == ["a"]


def test_the_earlier_owner_gets_the_pair_back_with_its_own_readings_only(app, client, owner, other):
    key = register(client, owner, "a", "tent")
    push(client, key, "a", "tent", {"rh": 10})
    client.delete(f"/api/v1/api-keys/{key['key_id']}", headers=bearer(owner))
    theirs = register(client, other, "a", "tent")
    push(client, theirs, "a", "tent", {"rh": 90})
    client.delete(f"/api/v1/api-keys/{theirs['key_id']}", headers=bearer(other))
    register(client, owner, "a", "tent")
    [item] = read(client, "a", "tent", "rh").get_json()["items"]
    assert (item["value"], item["count"]) == (10, 1)


def test_private_flag_is_per_pair(client, owner):
    third = create_user(client.application, "third")
    register(client, owner, "a", "tent", private=True)
    register(client, owner, "b", "tent")
    assert client.get(device_url("b", "tent"), headers=bearer(third)).status_code == 200
    assert_error(client.get(device_url("a", "tent"), headers=bearer(third)), 403, "forbidden")
