"""Why a device message was refused before it changed anything (each becomes a 4xx with this reason)."""


class MessageError(ValueError):
    """The message is malformed: not a plist, not a dictionary, a key missing or of the wrong type (400)."""

    status = 400

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class UnknownMessageType(MessageError):
    """A check-in MessageType this server does not know (400 naming it)."""


class NotEnrolled(MessageError):
    """The channel speaks before it enrolled (no TokenUpdate yet) or after it checked out: 403."""

    status = 403
