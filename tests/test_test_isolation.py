"""The suite's own hygiene: an app a test builds and never stops does not outlive the test.

Its background thread would keep probing servers that later tests have stopped, for the rest
of the session, and its draws from the global ``random`` broke Hypothesis tests that ran later
in the same process ("Inconsistent data generation").
"""

from __future__ import annotations

import threading

from tests.conftest import build_app

left_behind: list = []


def test_an_app_left_running(settings):
    app = build_app(settings)
    cache = app.extensions["shared_cache"]
    cache.background.start()
    assert cache.background.thread is not None and cache.background.thread.is_alive()
    left_behind.append(cache)  # deliberately not stopped


def test_its_threads_ended_with_that_test():
    (cache,) = left_behind
    thread = cache.background.thread
    assert thread is not None and not thread.is_alive()
    assert not [t for t in threading.enumerate() if t is thread]
