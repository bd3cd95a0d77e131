"""``flask --app wsgi import-opensensor --source-uri mongodb://…``: opensensor's data, moved here.

opensensor keeps users in ``Users`` (``_id`` a UUID, ``api_keys`` embedded with the plaintext
``key``, ``device_id``, ``device_name``, ``description``, ``private_data``) and readings in the
time series ``FreeTier`` (``metadata.{device_id,name,user_id}``, measurements stored as text).
The import writes, through this service's own rules:

- one user per opensensor user (``opensensor_id`` kept, a new token printed once);
- one key record per usable api_key: hashed, ``private`` and ``description`` kept (an
  imported key is found by its hash, see ``app/auth.py``), then the pairs' cached lookups
  are invalidated;
- every reading, converted by ``app/compat/protocol.py`` and validated by ``parse_readings``,
  with its opensensor ``_id`` as ``opensensor_id``.

Safety: the source is only read. Users and keys are upserts keyed by the opensensor user id and
the key's hash (unique indexes), so a second run adds nothing. Readings are read in ``_id``
order and written in batches (``insert_many``), checkpointed so that a stopped run resumes
without duplicates; a lease keeps two runs from importing one source at once.

The modules, by concern: ``command`` (the CLI and the source), ``plan`` (which users and keys),
``run`` (one run: users and keys), ``readings`` (checkpointed batches), ``lease``, ``report``.
"""

from app.compat.importer.command import import_opensensor
from app.compat.importer.run import Importer

__all__ = ["Importer", "import_opensensor"]
