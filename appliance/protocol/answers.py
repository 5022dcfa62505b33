"""What the server answers a device, and the queue decisions behind each report. Sans-I/O.

Apple: "An empty response body is zero bytes in length and doesn't contain an empty property list";
plist answers are `application/xml; charset=UTF-8`; never 401 (the device drops its enrollment).
"""

from __future__ import annotations

from dataclasses import dataclass

from appliance.protocol import plist
from appliance.protocol.messages import IDLE, NOT_NOW, Report


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    body: bytes = b""
    content_type: str | None = None
    command_uuid: str | None = None  # the command being sent, when there is one

    @property
    def is_empty(self) -> bool:
        return self.status == 200 and not self.body


EMPTY = Answer(200)


def command(command_uuid: str, body: bytes) -> Answer:
    """The next command: the enqueued plist, byte for byte."""
    return Answer(200, body, plist.CONTENT_TYPE, command_uuid)


def plist_answer(value: dict) -> Answer:
    return Answer(200, plist.dump(value), plist.CONTENT_TYPE)


def refusal(status: int, reason: str) -> Answer:
    """A plain-text refusal (4xx, or 503: the server cannot take it now); the reason is short and safe to show."""
    assert (400 <= status < 500 and status != 401) or status == 503, status
    return Answer(status, reason.encode("utf-8") + b"\n", "text/plain; charset=utf-8")


# UserAuthenticate: 410 is Apple's "this server does not do per-user authentication".
USER_AUTHENTICATE_DECLINED = refusal(410, "UserAuthenticate is declined by this server")
# The first UserAuthenticate carries no DigestResponse: an empty challenge lets the user in without a password.
DIGEST_CHALLENGE = plist_answer({"DigestChallenge": ""})


def token_service_not_offered(service_type: str) -> Answer:
    """GetToken until the appliance offers a token service: Apple's schema (mdm/checkin/gettoken.yaml)
    says "If the server doesn't recognize the service type, it needs to return a 400"."""
    shown = service_type if len(service_type) <= 64 and service_type.isprintable() else repr(service_type[:64])
    return refusal(400, f"GetToken: TokenServiceType {shown} is not offered by this server")


@dataclass(frozen=True, slots=True)
class ReportPlan:
    """What a report does to the queue before the next command is picked."""

    starts_session: bool    # Idle: a new session; commands NotNow'd earlier are offered again
    records_status: bool    # a final status or NotNow about a command
    after_not_now: bool     # pick only commands not NotNow'd in this session, else end the session


def plan(report: Report) -> ReportPlan:
    if report.status == IDLE:
        return ReportPlan(starts_session=True, records_status=False, after_not_now=False)
    # NotNow: the device polls again by itself only if NotNow stays its last status, so we must
    # not hand it what it just refused (nor anything else it refused in this session). Never push.
    return ReportPlan(starts_session=False, records_status=True, after_not_now=report.status == NOT_NOW)
