"""The OpenAPI description of the device routes (``app/devices/views.py``): the lookup and the list."""

from __future__ import annotations

from typing import Any

from app.openapi import OPTIONAL_READER, Schema, obj, ok, operation, path_param, ref

# The pair in a path, and a device as the lookup answers it (the readings' pages carry it too).
DEVICE_PARAMS = [
    path_param("device_id", ref("DeviceId"), "The device's id."),
    path_param("device_name", ref("DeviceName"), "The device's name (URL-encoded: spaces as %20)."),
]
DEVICE_FIELDS: dict[str, Schema] = {
    "device_id": ref("DeviceId"),
    "device_name": ref("DeviceName"),
    "chain": {"type": "array", "items": ref("DeviceId"), "minItems": 1},
    "public": {"type": "boolean"},
}


def schemas() -> dict[str, Schema]:
    return {
        "Device": obj(
            {**DEVICE_FIELDS, "owner_id": {"type": "string", "description": "Only for the owner."}}, list(DEVICE_FIELDS)
        ),
        "DeviceList": obj(
            {
                "devices": {
                    "type": "array",
                    "items": obj(
                        {
                            "device_id": ref("DeviceId"),
                            "device_name": ref("DeviceName"),
                            "public": {"type": "boolean"},
                            "owned": {"type": "boolean"},
                        },
                        ["device_id", "device_name", "public", "owned"],
                    ),
                }
            },
            ["devices"],
        ),
    }


def paths() -> dict[str, dict[str, Any]]:
    return {
        "/api/v1/devices": {
            "get": operation(
                "list_devices",
                "Public devices, and the caller's private ones",
                "devices",
                {
                    200: ok(
                        "The devices.",
                        ref("DeviceList"),
                        {
                            "devices": [
                                {"device_id": "pi-01", "device_name": "greenhouse", "public": True, "owned": False}
                            ]
                        },
                    )
                },
                errors=(401, 503),
                security=OPTIONAL_READER,
            )
        },
        "/api/v1/devices/{device_id}/{device_name}": {
            "get": operation(
                "show_device",
                "The device lookup (answered from the shared cache when warm)",
                "devices",
                {
                    200: ok(
                        "The device.",
                        ref("Device"),
                        {"device_id": "pi-01", "device_name": "greenhouse", "chain": ["pi-01"], "public": True},
                    )
                },
                errors=(401, 403, 404, 503),
                security=OPTIONAL_READER,
                parameters=DEVICE_PARAMS,
            )
        },
    }
