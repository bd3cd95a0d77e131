from tests.conftest import bearer, register


def test_register_push_and_read_back(app, client, owner):
    key = register(client, owner, "dev-1", "greenhouse")
    assert key["api_key"].startswith("osk_")
    r = client.post(
        "/api/v1/readings",
        json={"device_id": "dev-1", "device_name": "greenhouse", "readings": {"temp": 21.5, "rh": 50}},
        headers={"X-API-Key": key["api_key"]},
    )
    assert r.status_code == 201, r.get_json()
    assert r.get_json()["stored"] == ["temp", "rh"]
    r = client.get("/api/v1/devices/dev-1/greenhouse/readings/temp")
    assert r.status_code == 200, r.get_json()
    body = r.get_json()
    assert body["total"] == 1 and body["items"][0]["value"] == 21.5
    r = client.get("/api/v1/devices/dev-1/greenhouse/readings/vpd")
    assert r.status_code == 200, r.get_json()
    r = client.get("/api/v1/devices/dev-1/greenhouse", headers=bearer(owner))
    assert r.get_json()["owner_id"] == owner["user_id"]
    assert client.get("/health").get_json()["status"] == "ok"
