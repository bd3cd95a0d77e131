"""The OpenAPI description of the API-key routes (``app/keys/views.py``), from the service's field sets."""

from __future__ import annotations

from typing import Any

from app.keys.service import MAX_DESCRIPTION, PUBLIC_FIELDS
from app.openapi import BEARER, PAIR_FROM_RESPONSE, TIMESTAMP, Schema, json_body, obj, ok, operation, path_param, ref

KEY_EXAMPLE = {
    "key_id": "6eb31c6399ef243d",
    "masked": "osk_6eb31c6399ef243d_…6pwc",
    "device_id": "pi-01",
    "device_name": "greenhouse",
    "description": "",
    "private": False,
    "created_at": "2026-11-25T19:13:27.251Z",
}
# What a client can do next with a new key: the operations of the other features it opens.
CREATED_LINKS = {
    "DeleteThisKey": {"operationId": "delete_api_key", "parameters": {"key_id": "$response.body#/key_id"}},
    "ShowTheDevice": {"operationId": "show_device", "parameters": PAIR_FROM_RESPONSE},
    "ReadTheDevice": {"operationId": "query_readings", "parameters": PAIR_FROM_RESPONSE},
    "PushWithTheKey": {
        "operationId": "push_readings",
        "parameters": {"header.X-API-Key": "$response.body#/api_key"},
        "requestBody": {**PAIR_FROM_RESPONSE, "readings": {"temp": 21.5, "rh": 55}},
    },
    "PushAsOpensensor": {
        "operationId": "push_environment",
        "requestBody": {
            "device_metadata": {
                "device_id": "$response.body#/device_id",
                "name": "$response.body#/device_name",
                "api_key": "$response.body#/api_key",
            },
            "temp": {"temp": "21.5", "unit": "C"},
        },
    },
    "ReadAsOpensensor": {
        "operationId": "legacy_temp",
        "parameters": {"device": "{$response.body#/device_id}|{$response.body#/device_name}"},
    },
}


def schemas() -> dict[str, Schema]:
    key_fields = {
        "key_id": {"type": "string", "pattern": "^[0-9a-f]{16}$"},
        "masked": {"type": "string"},
        "device_id": ref("DeviceId"),
        "device_name": ref("DeviceName"),
        "description": {"type": "string", "maxLength": MAX_DESCRIPTION},
        "private": {"type": "boolean"},
        "created_at": TIMESTAMP,
    }
    return {
        "NewKey": obj(
            {
                "device_id": ref("DeviceId"),
                "device_name": ref("DeviceName"),
                "description": {"type": ["string", "null"], "maxLength": MAX_DESCRIPTION, "default": ""},
                "private": {"type": "boolean", "default": False},
            },
            ["device_id", "device_name"],
        ),
        "Key": obj(key_fields, list(PUBLIC_FIELDS)),
        "KeyCreated": obj(
            {**key_fields, "api_key": {"type": "string", "description": "The secret, shown only now."}},
            [*PUBLIC_FIELDS, "api_key"],
        ),
        "KeyList": obj({"keys": {"type": "array", "items": ref("Key")}}, ["keys"]),
    }


def paths() -> dict[str, dict[str, Any]]:
    return {
        "/api/v1/api-keys": {
            "post": operation(
                "create_api_key",
                "Register a device pair; its key is shown only now",
                "keys",
                {
                    201: ok(
                        "Created.",
                        ref("KeyCreated"),
                        {**KEY_EXAMPLE, "api_key": "osk_6eb31c6399ef243d_sDVv…"},
                        CREATED_LINKS,
                    )
                },
                errors=(401, 409, 413, 415, 503),
                security=BEARER,
                body={
                    "required": True,
                    "content": json_body(ref("NewKey"), {"device_id": "pi-01", "device_name": "greenhouse"}),
                },
            ),
            "get": operation(
                "list_api_keys",
                "The caller's keys (never a secret)",
                "keys",
                {200: ok("The keys.", ref("KeyList"), {"keys": [KEY_EXAMPLE]})},
                errors=(401, 503),
                security=BEARER,
            ),
        },
        "/api/v1/api-keys/{key_id}": {
            "delete": operation(
                "delete_api_key",
                "Delete one of the caller's keys",
                "keys",
                {204: {"description": "Deleted."}},
                errors=(401, 404, 503),
                security=BEARER,
                parameters=[path_param("key_id", {"type": "string"}, "The key's id.")],
            )
        },
    }
