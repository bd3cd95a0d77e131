"""Users: created, given a new token or deleted by an operator (``flask users ...``); no identity provider."""
