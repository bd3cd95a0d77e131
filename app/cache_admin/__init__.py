"""The /cache admin routes: above the cache (which they operate) and auth (which guards them)."""
