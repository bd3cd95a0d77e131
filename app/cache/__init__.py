"""The shared Redis cache: the device-lookup cache and the /cache admin routes."""
