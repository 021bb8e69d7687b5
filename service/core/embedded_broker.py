"""kombu's SQLAlchemy transport with a short polling interval, for the embedded default broker.

The stock transport polls its table once a second, which adds up to a second of queue latency
to every job; it also hands every transport option to create_engine, so the interval cannot be
set there. The embedded default (no broker server) uses this subclass through the usual
`sqla+sqlite:///...` URL once install() has run.
"""

from kombu.transport import TRANSPORT_ALIASES
from kombu.transport.sqlalchemy import Transport as _Transport

POLLING_INTERVAL = 0.05


class Transport(_Transport):
    polling_interval = POLLING_INTERVAL


def install() -> None:
    """Make `sqla+...` broker URLs use this transport."""
    TRANSPORT_ALIASES["sqla"] = f"{__name__}:Transport"
    TRANSPORT_ALIASES["sqlalchemy"] = f"{__name__}:Transport"
