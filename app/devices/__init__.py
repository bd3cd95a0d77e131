"""Devices: the one device lookup (cached), access rules and the device routes."""
