"""The errors core raises; the API maps each kind to one HTTP status in one place."""

from __future__ import annotations

import json


class CoreError(Exception):
    """Base of every error core reports to its callers."""


class NotFound(CoreError):
    """No job, dataset, model or version answers to the given name."""


class Conflict(CoreError):
    """The thing exists, but its state does not allow the request."""


class NotReady(Conflict):
    """The thing exists but cannot serve yet (e.g. a job without a checkpoint)."""


class Invalid(CoreError):
    """The request is well-formed but cannot run; `problems` are (location, message) pairs.

    A location is a path into the submitted document (a job spec, a sweep, an upload's form), e.g.
    ("data", "dataset"); core knows nothing of HTTP, and the API's one handler adds "body" in front.
    `document`, where given, is that document, from which each problem's input is read.
    """

    def __init__(self, problems: list[tuple[tuple, str]], document: dict | None = None):
        super().__init__("; ".join(f"{'.'.join(map(str, loc))}: {msg}" for loc, msg in problems))
        self.problems = problems
        self.document = document

    def input_at(self, loc: tuple):
        """What the document holds at loc; None where there is no document or nothing there."""
        value = self.document
        for key in loc:
            if isinstance(value, dict) and key in value:
                value = value[key]
            elif isinstance(value, list) and isinstance(key, int) and -len(value) <= key < len(value):
                value = value[key]
            else:
                return None
        return value


class Unusable(CoreError):
    """Something stored cannot be used (e.g. a damaged checkpoint file)."""


class Unprocessable(CoreError):
    """An upload or input was read but cannot be used; the message says what to fix."""


class Unavailable(CoreError):
    """The service cannot answer now but may soon (busy, or a dependency is down)."""

    def __init__(self, message: str, retry_after: int = 1):
        super().__init__(message)
        self.retry_after = retry_after


def json_field(field: str, raw: str | None, default=None):
    """A form field that holds JSON, decoded; Invalid naming the field if it is not JSON, or nests
    too deeply for the decoder."""
    if raw is None:
        return default
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise Invalid([((field,), f"{field} must be JSON: {exc}")]) from None
    except RecursionError:
        raise Invalid([((field,), f"{field} nests arrays or objects too deeply")]) from None
