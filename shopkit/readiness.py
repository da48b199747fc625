"""Readiness that holds under load: the datastore answering the service's own work is proof.

A ready check that sends its own probe (``ping``, ``SELECT 1``) queues behind the load: on
the same pool, the same connections, the same busy datastore. At 64 concurrent shoppers the
product service's ping took as long as its requests (1 s and more) and hit the 2 s budget,
so a working service was reported unready and would have left the Service. So a check
first asks ``DatastoreAnswers``: did the datastore answer one of the service's operations in
the last few seconds, with no connection failure since? Then the service is ready, at no
cost; only an idle service (or one whose last operation failed) sends a probe.
"""

from __future__ import annotations

import time

# How old the last answered operation may be and still prove the datastore answers: less
# than a readiness probe's period, so that a datastore gone under load is noticed by the
# next probe but one.
PROOF_SECONDS = 5.0


class DatastoreAnswers:
    """When the datastore last answered one of this service's operations, and last failed
    to (could not be reached)."""

    def __init__(self, proof_seconds: float = PROOF_SECONDS) -> None:
        self.proof_seconds = proof_seconds
        self._answered = float("-inf")
        self._failed = float("-inf")

    def answered(self) -> None:
        self._answered = time.monotonic()

    def failed(self) -> None:
        self._failed = time.monotonic()

    def recently(self) -> bool:
        """True when an operation was answered within the proof window and none failed to
        reach the datastore since."""
        now = time.monotonic()
        return now - self._answered <= self.proof_seconds and self._answered >= self._failed
