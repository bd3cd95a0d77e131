"""API keys: a device owner registers a (device_id, device_name) pair and gets its secret once."""
