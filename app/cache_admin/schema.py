"""The request bodies of the /cache admin routes: fields and bounds, shared by the routes and their OpenAPI."""

MAX_PATTERN = 512
MAX_WARM_LIMIT = 10_000
WARM_FIELDS = {"limit"}  # the bodies of POST /cache/warm and /cache/invalidate
INVALIDATE_FIELDS = {"pattern"}
