"""GET /v1/openapi.json: the OpenAPI 3.0 description of the admin API (tests/unit/test_openapi.py checks the
implementation against it with schemathesis). Served without the key: it describes, it reveals nothing."""

from __future__ import annotations

from quart import Blueprint, jsonify

from appliance import __version__
from appliance.store.device_search import SORTS
from appliance.web import openapi_ddm

blueprint = Blueprint("openapi", __name__)


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def _nullable(kind: str, **extra) -> dict:
    return {"type": kind, "nullable": True, **extra}


def _json(schema: dict, description: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _error(description: str) -> dict:
    return _json(_ref("Error"), description)


_AUTH_ERRORS = {"401": _error("Missing or wrong API key.")}
# Every operation that needs the key may also answer this (added to each one in document()).
_TOO_MANY_GUESSES = {
    **_error("Too many wrong API keys from this client within [api] key_guess_window (code "
             "too_many_guesses): every request from it is refused until the window has passed, even with "
             "the right key."),
    "headers": {"Retry-After": {"description": "Seconds until the client may try again.",
                                "schema": {"type": "integer"}}},
}
_STD_ERRORS = {
    "400": _error("The request is wrong as a whole (the message says how)."),
    **_AUTH_ERRORS,
    "503": _error("The database cannot take the request now (disk full, I/O error, locked by another "
                  "process; code storage_unavailable): nothing of it was stored. Send it again after the "
                  "Retry-After header's seconds."),
}
_LIMIT = {"name": "limit", "in": "query", "required": False,
          "schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100},
          "description": "Page size."}
_CURSOR = {"name": "cursor", "in": "query", "required": False, "schema": {"type": "string"},
           "description": "next_cursor of the previous page."}
_DEVICE_ID = {"name": "device_id", "in": "path", "required": True, "schema": {"type": "string"},
              "description": "Device id (UDID, or EnrollmentID for User Enrollment)."}
_ENROLLMENT_ID = {"name": "device_id", "in": "path", "required": True, "schema": {"type": "string"},
                  "description": "A device id, or a user channel's enrollment id (\"UDID:UserID\")."}
_ABM_NAME = {"name": "name", "in": "path", "required": True,
             "schema": {"type": "string", "pattern": r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"},
             "description": "The ABM server entry's name (yours to choose, e.g. \"main\")."}
_UUID = {"name": "command_uuid", "in": "path", "required": True, "schema": {"type": "string"}}
GROUP_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
_GROUP = {"name": "name", "in": "path", "required": True, "schema": {"type": "string"},
          "description": "The group's name (any case)."}
_STRICT = {"name": "strict", "in": "query", "required": False, "schema": {"type": "string"},
           "description": "Any value but empty/0/false: check the command against GET /v1/catalog (RequestType, "
                          "key names, types, allowed values, required keys) and answer 400 naming the key "
                          "that does not fit. Without it any command is queued, as NanoMDM does."}

# The pattern is a subset that always fits the 3650-day bound; the server also takes decimals.
_TTL = {"name": "ttl", "in": "query", "required": False,
        "schema": {"type": "string", "pattern": r"^[0-9]{1,8}s?$|^[0-9]{1,6}m$|^[0-9]{1,4}h$|^[0-9]{1,3}d$"},
        "description": "How long the command may wait for a final status on each enrollment before it is taken "
                       "off that queue as Expired: seconds or a duration like \"12h\", \"7d\" (at most 3650d); "
                       "0: it never expires. Default: [queue] command_ttl (30 days)."}

_ENQUEUE_ANSWER = {
    "200": _json(_ref("EnqueueAnswer"), "Every id queued (and pushed, or its push scheduled)."),
    "207": _json(_ref("EnqueueAnswer"), "Some ids failed (see their command_error / push_error)."),
    "500": _json(_ref("EnqueueAnswer"), "Every id failed (NanoMDM's code; the body says why per id)."),
    "409": _error("The CommandUUID was used before (code command_exists)."),
    **_STD_ERRORS,
}

_EXAMPLE_PLIST = (
    '<?xml version="1.0" encoding="UTF-8"?>\n<plist version="1.0"><dict>'
    "<key>CommandUUID</key><string>0f0e7c5e-6d0b-4a8e-9d43-3f1b2f1d9c01</string>"
    "<key>Command</key><dict><key>RequestType</key><string>ProfileList</string></dict>"
    "</dict></plist>\n"
)

SCHEMAS: dict = {
    "Error": {
        "type": "object", "required": ["error"],
        "properties": {"error": {"type": "object", "required": ["code", "message"], "properties": {
            "code": {"type": "string", "description": "Stable machine code, e.g. command_exists."},
            "message": {"type": "string"},
            "position": {"type": "integer", "description": "bad_filter: the 1-based character of the filter "
                         "where the problem is."}}}},
    },
    "EnrollmentOutcome": {
        "type": "object",
        "properties": {
            "push_result": {"type": "string", "description": "The APNs id (apns-id) of the accepted push "
                            "when APNs answered within the request (up to 1,000 pushed ids, within 3 s); "
                            "\"scheduled\" when the push was handed to the scheduler instead (more ids, or "
                            "APNs slower than that): it is still sent, and its outcome recorded on the "
                            "enrollment (last_push_result)."},
            "push_error": {"type": "string", "description": "Why this id was not pushed, e.g. \"400 "
                           "BadDeviceToken\", \"NoPushCertificate\", \"no push token yet ...\"; the "
                           "command stays queued."},
            "command_error": {"type": "string", "description": "e.g. \"unknown enrollment\"."},
        },
    },
    "EnqueueAnswer": {
        "type": "object", "required": ["status", "no_push", "command_uuid", "request_type"],
        "description": "NanoMDM's answer; unlike NanoMDM every id has an entry, also with nopush.",
        "properties": {
            "status": {"type": "object", "additionalProperties": _ref("EnrollmentOutcome")},
            "no_push": {"type": "boolean"},
            "push_error": {"type": "string"},
            "command_uuid": {"type": "string"},
            "request_type": {"type": "string"},
        },
    },
    "CommandRequest": {
        "type": "object", "required": ["enrollment_ids", "command"], "additionalProperties": False,
        "properties": {
            "enrollment_ids": {"type": "array", "minItems": 1, "items": {
                "type": "string", "minLength": 1, "pattern": r"\S"}},
            "command": {"type": "object", "required": ["RequestType"],
                        "properties": {"RequestType": {"type": "string",
                                                       "pattern": r"^[A-Za-z][A-Za-z0-9.]{0,127}$"}},
                        "description": "The Command dictionary as JSON. Binary values as {\"$data\": "
                                       "\"<base64>\"}, dates as {\"$date\": \"2026-01-01T00:00:00Z\"}."},
            "command_uuid": {"type": "string", "description": "At most 256 printable characters (as in reports). Default: a new random UUID."},
            "no_push": {"type": "boolean", "default": False},
        },
    },
    "CatalogKey": {
        "type": "object", "required": ["name", "type", "required", "platforms", "allowed", "default", "keys", "items"],
        "properties": {
            "name": {"type": "string"},
            "type": {"type": "string", "enum": ["string", "integer", "real", "boolean", "data", "date", "array",
                                                "dictionary", "any"]},
            "required": {"type": "boolean"},
            "platforms": {"type": "array", "items": {"type": "string"}, "description": "Where the key applies."},
            "allowed": {"type": "array", "items": {}, "description": "The values it may take (empty: any)."},
            "default": {"nullable": True, "description": "The device's default when the key is left out."},
            "keys": {"type": "array", "items": _ref("CatalogKey"),
                     "description": "A dictionary's keys; a dictionary without any is free-form."},
            "items": {"type": "array", "items": _ref("CatalogKey"),
                      "description": "An array's item shapes; with several, each item is one of them."},
        },
    },
    "CatalogCommand": {
        "type": "object", "required": ["request_type", "category", "summary", "destructive", "platforms", "keys"],
        "properties": {
            "request_type": {"type": "string"}, "category": {"type": "string"}, "summary": {"type": "string"},
            "destructive": {"type": "boolean", "description": "Takes data, access or availability away from "
                            "the device's user: the CLI asks before sending it to several devices or a group."},
            "platforms": {"type": "array", "items": {"type": "object", "required": ["name", "introduced", "supervised"],
                          "properties": {"name": {"type": "string"}, "introduced": {"type": "string"},
                                         "supervised": {"type": "boolean"}}}},
            "keys": {"type": "array", "items": _ref("CatalogKey")},
        },
    },
    "Catalog": {
        "type": "object", "required": ["source", "categories", "commands"],
        "properties": {
            "source": {"type": "string", "description": "The Apple schema release the facts come from."},
            "categories": {"type": "array", "items": {"type": "string"}},
            "commands": {"type": "array", "items": _ref("CatalogCommand")},
        },
    },
    "Device": {
        "type": "object", "required": ["id", "enrolled", "active", "pending_commands"],
        "properties": {
            "id": {"type": "string", "nullable": True, "description": "The device id (UDID); null for a device "
                   "Apple Business Manager assigned to us that has not enrolled yet (see serial_number, status)."},
            "status": {"type": "string", "description": "Devices not enrolled yet only: e.g. \"not enrolled yet "
                       "(profile assigned)\"."},
            "abm": {"type": "object", "nullable": True, "description": "Devices not enrolled yet only: their ABM "
                    "server, assignment state, OS and family."},
            "serial_number": _nullable("string"), "model": _nullable("string"),
            "model_name": _nullable("string"), "product_name": _nullable("string"),
            "os_version": _nullable("string"), "build_version": _nullable("string"),
            "device_name": _nullable("string"), "authenticated_at": _nullable("string"),
            "created_at": {"type": "string"}, "updated_at": {"type": "string"},
            "has_bootstrap_token": {"type": "boolean"}, "has_unlock_token": {"type": "boolean"},
            "enrolled": {"type": "boolean", "description": "The device channel sent TokenUpdate."},
            "active": {"type": "boolean", "description": "Enrolled and not checked out."},
            "enrolled_at": _nullable("string"), "checked_out_at": _nullable("string"),
            "last_seen_at": _nullable("string"), "last_push_at": _nullable("string"),
            "last_push_result": _nullable("string"), "last_push_error": _nullable("string"),
            "token_invalid_at": _nullable("string"),
            "pending_commands": {"type": "integer"},
            "identity_not_after": _nullable("string", description="When the bound identity certificate "
                                            "expires (null: none bound)."),
            "identity_renewal": _nullable("string", description="Its renewal state (see IdentityRenewal)."),
            "last_inventory_at": _nullable("string", description="In lists: the newest inventory answer."),
        },
    },
    "IdentityRenewal": {
        "type": "object", "required": ["state"],
        "properties": {
            "state": {"type": "string", "enum": ["scheduled", "pending", "sent", "done", "failed", "not_renewable"],
                      "description": "scheduled: not begun (renews_at says when); pending: the InstallProfile "
                      "with the enrollment profile is queued (or was answered NotNow); sent: the device took it "
                      "and has not presented its new certificate yet; done: it uses the renewed certificate; "
                      "failed: the attempt ended in Error, its command was removed, or the certificate expired "
                      "first (next_attempt_at says when the next attempt comes, if any); not_renewable: "
                      "issued by another CA."},
            "reason": _nullable("string"), "renews_at": _nullable("string"),
            "attempts": {"type": "integer"}, "command_uuid": _nullable("string"),
            "attempted_at": _nullable("string"), "next_attempt_at": _nullable("string"),
            "last_failure": _nullable("string", description="Why the attempt before did not complete."),
            "completed_at": _nullable("string"),
        },
    },
    "Enrollment": {
        "type": "object", "required": ["id", "type", "active"],
        "properties": {
            "id": {"type": "string"}, "type": {"type": "string"},
            "user_id": _nullable("string"), "user_short_name": _nullable("string"),
            "user_long_name": _nullable("string"), "topic": _nullable("string"),
            "active": {"type": "boolean"}, "token_present": {"type": "boolean"},
            "token_update_count": {"type": "integer"}, "awaiting_configuration": {"nullable": True},
            "last_seen_at": _nullable("string"), "last_idle_at": _nullable("string"),
            "token_invalid_at": _nullable("string"), "last_push_at": _nullable("string"),
            "last_push_result": _nullable("string"), "last_push_error": _nullable("string"),
            "created_at": {"type": "string"}, "updated_at": {"type": "string"},
            "pending_commands": {"type": "integer"},
        },
    },
    "DeviceDetail": {
        "allOf": [_ref("Device"), {
            "type": "object", "required": ["enrollments"],
            "properties": {
                "enrollments": {"type": "array", "items": _ref("Enrollment"),
                                "description": "The device channel first, then user channels."},
                "abm": {"type": "object", "nullable": True, "description": "What Apple Business Manager "
                        "says of it (joined by serial number): server, model, assignment, status, and its ADE "
                        "setup (profile_served_at, setup_state, configured_at)."},
                "identity_certificate": {"type": "object", "nullable": True, "properties": {
                    "sha256": {"type": "string"}, "subject": _nullable("string"), "issuer": _nullable("string"),
                    "issued_by_appliance": {"type": "boolean"},
                    "not_before": _nullable("string"), "not_after": _nullable("string"),
                    "bound_at": {"type": "string"}, "days_left": _nullable("number"),
                    "renewal": _ref("IdentityRenewal")}},
                "groups": {"type": "array", "items": {"type": "string"}, "description": "Groups it is in."},
                "inventory": {"allOf": [_ref("Inventory")], "nullable": True,
                              "description": "What its inventory answers said; null until the first."},
                "history": {"type": "array", "items": _ref("FactChange"),
                            "description": "Dated OS version, build and name changes, newest first (50)."},
            }}],
    },
    "Inventory": {
        "type": "object",
        "description": "Facts with a column of their own (null when never reported), when each answer came, the "
                       "whole DeviceInformation and SecurityInfo answers as JSON, and the lists last reported.",
        "properties": {
            "model_number": _nullable("string"), "device_capacity": _nullable("number", description="GB"),
            "available_capacity": _nullable("number", description="GB"),
            "battery_level": _nullable("number", description="0.0-1.0"),
            **{flag: _nullable("boolean") for flag in (
                "supervised", "activation_lock", "passcode_present", "passcode_compliant", "filevault",
                "enrolled_via_dep", "user_approved_enrollment")},
            **{at: _nullable("string") for at in (
                "inventory_at", "device_information_at", "security_info_at", "profiles_at", "certificates_at",
                "applications_at")},
            "device_information": {"type": "object", "nullable": True},
            "security_info": {"type": "object", "nullable": True},
            "profiles": {"type": "array", "items": {"type": "object", "properties": {
                "identifier": {"type": "string"}, "uuid": _nullable("string"), "display_name": _nullable("string"),
                "organization": _nullable("string"), "version": _nullable("integer"),
                "managed": _nullable("boolean"), "encrypted": _nullable("boolean"),
                "removal_disallowed": _nullable("boolean"),
                "payload_types": {"type": "array", "items": {"type": "string"}}}}},
            "certificates": {"type": "array", "items": {"type": "object", "properties": {
                "common_name": _nullable("string"), "is_identity": _nullable("boolean"), "sha256": {"type": "string"},
                "subject": _nullable("string"), "issuer": _nullable("string"), "not_after": _nullable("string")}}},
            "applications": {"type": "array", "items": {"type": "object", "properties": {
                "identifier": _nullable("string"), "name": _nullable("string"), "short_version": _nullable("string"),
                "version": _nullable("string"), "bundle_size": _nullable("integer"),
                "installing": _nullable("boolean")}}},
        },
    },
    "FactChange": {
        "type": "object", "required": ["fact", "source", "changed_at"],
        "properties": {"fact": {"type": "string", "enum": ["os_version", "build_version", "device_name"]},
                       "old_value": _nullable("string"), "new_value": _nullable("string"),
                       "source": {"type": "string", "enum": ["Authenticate", "DeviceInformation"]},
                       "changed_at": {"type": "string"}},
    },
    "DevicePage": {
        "type": "object", "required": ["devices", "next_cursor"],
        "properties": {"devices": {"type": "array", "items": _ref("Device")},
                       "total": {"type": "integer", "description": "Devices matching, on all pages."},
                       "next_cursor": _nullable("string")},
    },
    "Group": {
        "type": "object", "required": ["name", "kind", "member_count"],
        "properties": {"name": {"type": "string"}, "kind": {"type": "string", "enum": ["static", "dynamic"]},
                       "filter": _nullable("string"), "description": _nullable("string"),
                       "member_count": {"type": "integer"}, "created_at": {"type": "string"},
                       "updated_at": {"type": "string"}},
    },
    "GroupList": {"type": "object", "required": ["groups"],
                  "properties": {"groups": {"type": "array", "items": _ref("Group")}}},
    "NewGroup": {
        "type": "object", "required": ["name"], "additionalProperties": False,
        "properties": {"name": {"type": "string", "pattern": GROUP_NAME},
                       "filter": {"type": "string", "description": "Makes it dynamic: the device filter "
                                  "language over inventory facts (README, \"Searching devices\")."},
                       "description": {"type": "string", "maxLength": 500}},
    },
    "GroupChange": {
        "type": "object", "additionalProperties": False,
        "properties": {"filter": {"type": "string", "description": "Dynamic groups only."},
                       "description": {"type": "string", "maxLength": 500, "description": "\"\" removes it."}},
    },
    "GroupMembership": {
        "type": "object", "required": ["name", "member_count"],
        "properties": {"name": {"type": "string"}, "added": {"type": "integer"}, "removed": {"type": "integer"},
                       "member_count": {"type": "integer"}},
    },
    "GroupDeleted": {
        "type": "object", "required": ["name", "deleted", "members_removed"],
        "properties": {"name": {"type": "string"}, "deleted": {"type": "boolean"},
                       "members_removed": {"type": "integer"}},
    },
    "CommandGroup": {
        "type": "object", "required": ["name", "kind", "members"],
        "properties": {"name": {"type": "string"}, "kind": {"type": "string"}, "filter": _nullable("string"),
                       "members": {"type": "array", "items": {"type": "string"}},
                       "recorded_at": {"type": "string"}},
    },
    "DeviceCommand": {
        "type": "object", "required": ["enrollment_id", "command_uuid", "status", "pending", "queued_at"],
        "properties": {
            "enrollment_id": {"type": "string"}, "command_uuid": {"type": "string"},
            "request_type": _nullable("string"),
            "status": {"type": "string", "description": "pending, sent, NotNow, cancelled (still queued) or "
                       "Acknowledged, Error, CommandFormatError, Expired (final)."},
            "pending": {"type": "boolean"}, "queued_at": {"type": "string"},
            "sent_at": _nullable("string"), "not_now_count": _nullable("integer"),
            "not_now_at": _nullable("string"), "expires_at": _nullable("string"),
            "received_at": _nullable("string"),
            "error_chain": {"nullable": True},
        },
    },
    "DeviceCommandPage": {
        "type": "object", "required": ["commands", "next_cursor"],
        "properties": {"commands": {"type": "array", "items": _ref("DeviceCommand")},
                       "next_cursor": _nullable("string")},
    },
    "CommandEnrollment": {
        "type": "object", "required": ["enrollment_id", "status"],
        "properties": {
            "enrollment_id": {"type": "string"}, "status": {"type": "string"},
            "queued_at": _nullable("string"), "sent_at": _nullable("string"),
            "not_now_count": _nullable("integer"), "expires_at": _nullable("string"),
            "received_at": _nullable("string"),
            "error_chain": {"nullable": True},
            "result": {"type": "object", "nullable": True,
                       "description": "The device's report as JSON (data as {\"$data\": base64}); null while "
                                      "pending and for Expired."},
        },
    },
    "CommandDetail": {
        "type": "object",
        "required": ["command_uuid", "request_type", "created_at", "command", "counts", "enrollments", "next_cursor"],
        "properties": {
            "command_uuid": {"type": "string"}, "request_type": {"type": "string"},
            "created_at": {"type": "string"}, "command": {"type": "object"},
            "counts": {"type": "object", "additionalProperties": {"type": "integer"},
                       "description": "pending plus one count per final status."},
            "groups": {"type": "array", "items": _ref("CommandGroup"), "nullable": True,
                       "description": "The groups it was enqueued to (group:NAME), with their members then."},
            "enrollments": {"type": "array", "items": _ref("CommandEnrollment")},
            "next_cursor": _nullable("string"),
        },
    },
    "StuckCommand": {
        "type": "object", "required": ["enrollment_id", "command_uuid", "not_now_count"],
        "properties": {
            "enrollment_id": {"type": "string"}, "command_uuid": {"type": "string"},
            "request_type": {"type": "string"}, "not_now_count": {"type": "integer"},
            "not_now_at": _nullable("string"), "queued_at": {"type": "string"}, "expires_at": _nullable("string"),
        },
    },
    "StuckPage": {
        "type": "object", "required": ["threshold", "devices", "next_cursor"],
        "properties": {
            "threshold": {"type": "integer"},
            "devices": {"type": "array", "items": {
                "type": "object", "required": ["device_id", "commands"],
                "properties": {"device_id": {"type": "string"},
                               "commands": {"type": "array", "items": _ref("StuckCommand"),
                                            "description": "Its commands NotNow'd more than threshold "
                                                           "times, most NotNow'd first."}}}},
            "next_cursor": _nullable("string"),
        },
    },
    "Cleared": {"type": "object", "required": ["enrollment_id", "cleared"], "properties": {
        "enrollment_id": {"type": "string"}, "cleared": {"type": "integer"}}},
    "Cancelled": {"type": "object", "required": ["command_uuid", "cancelled"], "properties": {
        "command_uuid": {"type": "string"}, "cancelled": {"type": "integer"}}},
    "CancelledPending": {"type": "object", "required": ["enrollment_id", "command_uuid", "cancelled"], "properties": {
        "enrollment_id": {"type": "string"}, "command_uuid": {"type": "string"}, "cancelled": {"type": "integer"}}},
    "AuditEntry": {
        "type": "object", "required": ["id", "at", "actor", "action"],
        "properties": {
            "id": {"type": "integer"}, "at": {"type": "string"},
            "actor": {"type": "string", "description": "\"user NAME\" (console), \"api key\" or \"cli (OS user)\"."},
            "action": {"type": "string", "description": "e.g. command.send, command.cancel, queue.clear, push, "
                       "pushcert.import, pushcert.csr, challenge.mint, enrollment.profile, user.add, user.remove, "
                       "user.passwd, sign_in, sign_out."},
            "target": _nullable("string", description="To whom: enrollment ids, a command UUID, a user name, a topic."),
            "details": {"type": "object", "nullable": True},
            "remote": _nullable("string", description="The client address."),
        },
    },
    "AuditPage": {
        "type": "object", "required": ["entries", "next_before"],
        "properties": {"entries": {"type": "array", "items": _ref("AuditEntry")},
                       "next_before": _nullable("integer", description="Pass as ?before= for older entries.")},
    },
    "PushAnswer": {"type": "object", "required": ["status"], "properties": {
        "status": {"type": "object", "additionalProperties": _ref("EnrollmentOutcome")}}},
    "PushCert": {"type": "object", "required": ["topic", "not_after"], "properties": {
        "topic": {"type": "string"}, "not_after": {"type": "string"}, "days_left": {"type": "integer"},
        "state": {"type": "string", "enum": ["ok", "warning", "expired"],
                  "description": "warning: expires within 30 days."},
        "sha256": {"type": "string", "description": "Fingerprint of the certificate (hex)."},
        "imported_at": _nullable("string")}},
    "UrlSet": {"type": "object", "required": ["topic", "server_url", "checkin_url"], "properties": {
        "topic": {"type": "string"}, "server_url": {"type": "string"}, "checkin_url": {"type": "string"},
        "first_built_at": {"type": "string"}, "last_built_at": {"type": "string"}}},
    "UrlSets": {"type": "object", "required": ["url_sets", "warnings"], "properties": {
        "url_sets": {"type": "array", "items": _ref("UrlSet")},
        "warnings": {"type": "array", "items": {"type": "string"},
                     "description": "One per value that differs from what the config says now."}}},
    "ForgottenUrlSets": {"type": "object", "required": ["forgotten"], "properties": {
        "forgotten": {"type": "array", "items": _ref("UrlSet")}}},
    "Challenge": {"type": "object", "required": ["challenge", "expires_at", "ttl_seconds"], "properties": {
        "challenge": {"type": "string"}, "expires_at": {"type": "string"}, "ttl_seconds": {"type": "integer"}}},
    "AbmServer": {
        "type": "object", "required": ["name", "has_token", "phase", "devices"],
        "properties": {
            "name": {"type": "string"}, "created_at": {"type": "string"},
            "has_token": {"type": "boolean"}, "token_expires_at": _nullable("string"),
            "token_imported_at": _nullable("string"),
            "token_state": {"type": "string", "nullable": True, "enum": ["ok", "warning", "expired", "missing", None],
                            "description": "warning: expires within 30 days."},
            "token_days_left": _nullable("integer"),
            "account": {"type": "object", "nullable": True, "additionalProperties": {"type": "string"},
                        "description": "Apple's account detail: server_name, org_name, ..."},
            "phase": {"type": "string", "enum": ["fetch", "sync"],
                      "description": "fetch: a full fetch runs or is due; sync: incremental syncs."},
            "cursor_at": _nullable("string"), "last_full_fetch_at": _nullable("string"),
            "last_sync_at": _nullable("string"), "last_error": _nullable("string"),
            "last_error_at": _nullable("string"), "profile_uuid": _nullable("string"),
            "profile_defined_at": _nullable("string"),
            "devices": {"type": "object", "additionalProperties": {"type": "integer"},
                        "description": "Devices by assignment state (removed: no longer the server's)."},
        },
    },
    "AbmServerList": {"type": "object", "required": ["servers"], "properties": {
        "servers": {"type": "array", "items": _ref("AbmServer")}}},
    "AbmKeypair": {"type": "object", "required": ["name", "certificate"], "properties": {
        "name": {"type": "string"}, "certificate": {"type": "string", "description": "PEM: upload it in ABM."},
        "next": {"type": "string"}}},
    "AbmToken": {"type": "object", "required": ["name", "token_expires_at"], "properties": {
        "name": {"type": "string"}, "token_expires_at": _nullable("string"),
        "token_days_left": _nullable("integer")}},
    "AbmSync": {"type": "object", "required": ["name", "full", "started"], "properties": {
        "name": {"type": "string"}, "full": {"type": "boolean"}, "started": {"type": "boolean"}}},
    "AbmServerDeleted": {"type": "object", "required": ["name", "devices_forgotten"], "properties": {
        "name": {"type": "string"}, "devices_forgotten": {"type": "integer"}}},
    "AbmDevice": {
        "type": "object", "required": ["serial_number", "abm_server", "assign_state", "status"],
        "properties": {
            "serial_number": {"type": "string"}, "abm_server": {"type": "string"},
            "model": _nullable("string"), "description": _nullable("string"), "color": _nullable("string"),
            "asset_tag": _nullable("string"), "os": _nullable("string"), "device_family": _nullable("string"),
            "profile_status": _nullable("string"), "profile_uuid": _nullable("string"),
            "profile_assign_time": _nullable("string"), "profile_push_time": _nullable("string"),
            "device_assigned_date": _nullable("string"), "device_assigned_by": _nullable("string"),
            "added_at": {"type": "string"}, "modified_at": _nullable("string"), "deleted_at": _nullable("string"),
            "seen_at": {"type": "string"},
            "assign_state": {"type": "string", "enum": ["pending", "assigned", "failed", "throttled",
                                                         "not_accessible", "unassigned", "removed"]},
            "assign_reason": _nullable("string"), "assign_attempts": {"type": "integer"},
            "assign_next_at": _nullable("string"), "assigned_profile_uuid": _nullable("string"),
            "assigned_at": _nullable("string"),
            "device_id": {"type": "string", "nullable": True,
                          "description": "The enrolled device with this serial number (its UDID), or null."},
            "status": {"type": "string", "description": "For people: enrolled, not enrolled yet (...), removed..."},
            "ade": {"type": "object", "nullable": True, "description": "What the ADE endpoint handed it: "
                    "profile_served_at, setup_state (awaiting, setup_commands, device_configured_sent, "
                    "configured), setup_commands, configured_at."},
        },
    },
    "AbmDevicePage": {"type": "object", "required": ["devices", "next_cursor"], "properties": {
        "devices": {"type": "array", "items": _ref("AbmDevice")}, "next_cursor": _nullable("string")}},
    "AbmSerials": {"type": "object", "required": ["serials"], "additionalProperties": False, "properties": {
        "serials": {"type": "array", "minItems": 1, "maxItems": 10000,
                    "items": {"type": "string", "minLength": 1, "maxLength": 128, "pattern": r"\S"}}}},
    "AbmDeviceOutcomes": {"type": "object", "required": ["devices"], "properties": {
        "devices": {"type": "object", "additionalProperties": {"type": "object", "properties": {
            "state": {"type": "string"}, "abm_server": {"type": "string"}, "result": _nullable("string"),
            "error": {"type": "string"}}}}}},
}

PATHS: dict = {
    "/v1/enqueue/{ids}": {"put": {
        "summary": "Enqueue a raw command plist (NanoMDM compatible).",
        "description": "ids: comma-separated enrollment ids (thousands are fine); group:NAME stands for the "
                       "group's members, each answered in its own entry. Up to 1,000 pushed ids "
                       "the answer waits (at most 3 s) for APNs and carries each apns-id, as NanoMDM's "
                       "does; beyond that push_result is \"scheduled\".",
        "parameters": [
            {"name": "ids", "in": "path", "required": True, "schema": {"type": "string", "pattern": r"[^,\s]"},
             "description": "Comma-separated enrollment ids or group:NAME; empty entries are skipped."},
            {"name": "nopush", "in": "query", "required": False, "schema": {"type": "string"},
             "description": "Any value but empty/0/false: queue without pushing."},
            _STRICT, _TTL,
        ],
        "requestBody": {"required": True, "description": "A command plist: CommandUUID (at most 256 printable "
                        "characters, as in reports) and Command with RequestType. An XML plist in UTF-8 is "
                        "queued byte for byte; a binary plist (or XML in another encoding) is rewritten as "
                        "XML, which devices get, and refused (400) when XML cannot hold it.",
                        "content": {"application/xml": {"schema": {"type": "string", "format": "binary"},
                                                        "example": _EXAMPLE_PLIST}}},
        "responses": _ENQUEUE_ANSWER,
    }},
    "/v1/commands": {"post": {
        "summary": "Enqueue a command given as JSON; the CommandUUID is generated.",
        "parameters": [_STRICT, _TTL],
        "requestBody": {"required": True, "content": {"application/json": {
            "schema": _ref("CommandRequest"),
            "example": {"enrollment_ids": ["99385AF6-44CB-5621-A678-A321F4D9A2C8"],
                        "command": {"RequestType": "InstallProfile", "Payload": {"$data": "PD94bWwgdmVyc2lvbj0iMS4wIj8+"}}},
        }}},
        "responses": _ENQUEUE_ANSWER,
    }},
    "/v1/commands/{command_uuid}": {
        "get": {
            "summary": "A command and its status per enrollment, with results as JSON.",
            "parameters": [_UUID, _LIMIT, _CURSOR,
                           {"name": "enrollment_id", "in": "query", "required": False, "schema": {"type": "string"}},
                           {"name": "format", "in": "query", "required": False,
                            "schema": {"type": "string", "enum": ["json", "plist"]},
                            "description": "plist: the raw result plist of one enrollment."}],
            "responses": {
                "200": {"description": "The command (JSON), or with format=plist the raw result.",
                        "content": {"application/json": {"schema": _ref("CommandDetail")},
                                    "application/xml": {"schema": {"type": "string"}},
                                    "application/octet-stream": {"schema": {"type": "string"}}}},
                "404": _error("No such command (or, with format=plist, no result yet)."),
                **_STD_ERRORS,
            },
        },
        "delete": {
            "summary": "Cancel a command wherever it is still pending.",
            "parameters": [_UUID],
            "responses": {"200": _json(_ref("Cancelled"), "How many queue rows were taken off."),
                          "404": _error("No such command."), **_AUTH_ERRORS,
                          "503": _STD_ERRORS["503"]},
        },
    },
    "/v1/queue/stuck": {"get": {
        "summary": "Devices with a pending command NotNow'd more than a threshold of times (a stuck device).",
        "description": "A device answers NotNow when it cannot run a command now (locked, busy) and gets it "
                       "again at its next check-in; a count that keeps growing means it never will.",
        "parameters": [{"name": "threshold", "in": "query", "required": False,
                        "schema": {"type": "integer", "minimum": 0, "maximum": 1000000},
                        "description": "Default: [queue] not_now_threshold (10)."}, _LIMIT, _CURSOR],
        "responses": {"200": _json(_ref("StuckPage"), "A page of devices, by device id."), **_STD_ERRORS},
    }},
    "/v1/catalog": {"get": {
        "summary": "The command catalog: each command's keys (type, required, allowed values, nested keys), "
                   "platforms, and whether it is destructive.",
        "description": "Facts from Apple's device-management schema. ?strict=1 on the enqueue routes checks "
                       "commands against it.",
        "responses": {"200": _json(_ref("Catalog"), "The catalog."), **_AUTH_ERRORS},
    }},
    "/v1/devices": {"get": {
        "summary": "Devices: searched, filtered, sorted and paged.",
        "description": "Without parameters: every device by id, as always, then the devices Apple Business "
                       "Manager assigned to us that have not enrolled yet (id null, by serial number; only "
                       "without ?q=, ?filter=, ?group=, ?sort=, ?udid= and ?active=true). The filter language, "
                       "e.g. `os_version < \"17.5\" and model_name contains \"iPad\"` or `last_seen < 30d ago`, "
                       "is in the README (\"Searching devices\").",
        "parameters": [_LIMIT, _CURSOR,
                       {"name": "q", "in": "query", "required": False, "schema": {"type": "string", "maxLength": 200},
                        "description": "Text in the name, serial, UDID, model or OS version (any case)."},
                       {"name": "filter", "in": "query", "required": False, "schema": {"type": "string"},
                        "description": "An expression in the device filter language (at most 2,000 characters)."},
                       {"name": "group", "in": "query", "required": False, "schema": {"type": "string"},
                        "description": "Only this group's members."},
                       {"name": "sort", "in": "query", "required": False,
                        "schema": {"type": "string", "enum": list(SORTS), "default": "id"},
                        "description": "os sorts as versions (17.10 after 17.9)."},
                       {"name": "order", "in": "query", "required": False,
                        "schema": {"type": "string", "enum": ["asc", "desc"], "default": "asc"}},
                       {"name": "serial", "in": "query", "required": False, "schema": {"type": "string"}},
                       {"name": "udid", "in": "query", "required": False, "schema": {"type": "string"}},
                       {"name": "active", "in": "query", "required": False,
                        "schema": {"type": "string", "enum": ["true", "false"]}}],
        "responses": {"200": _json(_ref("DevicePage"), "A page of devices."),
                      "404": _error("No such group (code group_not_found)."), **_STD_ERRORS},
    }},
    "/v1/devices/{device_id}": {"get": {
        "summary": "One device with its channels (device and users) and identity certificate.",
        "parameters": [_DEVICE_ID],
        "responses": {"200": _json(_ref("DeviceDetail"), "The device."), "404": _error("No such device."),
                      **_AUTH_ERRORS,
                      "503": _STD_ERRORS["503"]},
    }},
    "/v1/devices/{device_id}/commands": {"get": {
        "summary": "Pending and past commands of a device (all its channels) or of one user channel, newest first.",
        "parameters": [_ENROLLMENT_ID, _LIMIT, _CURSOR],
        "responses": {"200": _json(_ref("DeviceCommandPage"), "A page of commands."),
                      "404": _error("No such device or enrollment."), **_STD_ERRORS},
    }},
    "/v1/devices/{device_id}/queue": {"delete": {
        "summary": "Take every pending command off one enrollment's queue.",
        "parameters": [_ENROLLMENT_ID],
        "responses": {"200": _json(_ref("Cleared"), "How many were taken off."),
                      "404": _error("No such enrollment."), **_AUTH_ERRORS,
                      "503": _STD_ERRORS["503"]},
    }},
    "/v1/devices/{device_id}/queue/{command_uuid}": {"delete": {
        "summary": "Take one command off one enrollment's queue (DELETE /v1/commands/UUID cancels it everywhere).",
        "parameters": [_ENROLLMENT_ID, _UUID],
        "responses": {"200": _json(_ref("CancelledPending"), "Taken off (a command the device already holds is "
                                                             "marked cancelled; its late answer is still kept)."),
                      "404": _error("No such enrollment (enrollment_not_found), or the command is not pending "
                                    "on it (command_not_pending)."),
                      "401": _STD_ERRORS["401"]},
    }},
    "/v1/audit": {"get": {
        "summary": "The audit log, newest first: every state change through the console, this API or the CLI.",
        "parameters": [
            {"name": "limit", "in": "query", "required": False,
             "schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100}},
            {"name": "before", "in": "query", "required": False, "schema": {"type": "integer", "minimum": 0},
             "description": "next_before of the previous page."},
            {"name": "actor", "in": "query", "required": False, "schema": {"type": "string"}},
            {"name": "action", "in": "query", "required": False, "schema": {"type": "string"}},
            {"name": "target", "in": "query", "required": False, "schema": {"type": "string"},
             "description": "Entries whose target contains this text (an enrollment id among many)."},
        ],
        "responses": {"200": _json(_ref("AuditPage"), "A page of entries."), **_STD_ERRORS},
    }},
    "/v1/push/{ids}": {
        method: {
            "summary": "Push to enrollments now and wait for APNs' answers (NanoMDM compatible).",
            "description": "Answers within [apns] push_api_deadline (10 s): pushes APNs has not answered by "
                           "then get a push_error saying so and carry on; their outcome is recorded on the "
                           "enrollment (GET /v1/devices/ID: last_push_at, last_push_result, last_push_error).",
            "parameters": [{"name": "ids", "in": "path", "required": True, "schema": {"type": "string"},
                            "description": "Comma-separated enrollment ids or group:NAME (at most 10,000 in "
                                           "all, the groups' members counted)."}],
            "responses": {
                **_STD_ERRORS,
                "200": _json(_ref("PushAnswer"), "Every push accepted by APNs (push_result: apns-id)."),
                "207": _json(_ref("PushAnswer"), "Some pushes failed."),
                "500": _json(_ref("PushAnswer"), "Every push failed (NanoMDM's code)."),
                "503": _error("The push service is not running (code push_unavailable), or the database cannot "
                              "take the request now (code storage_unavailable; see Retry-After)."),
            },
        } for method in ("get", "post")
    },
    "/v1/pushcert": {
        "put": {
            "summary": "Import the APNs push certificate (PEM certificate + unencrypted PEM key in one body).",
            "parameters": [{"name": "force", "in": "query", "required": False, "schema": {"type": "string"},
                            "description": "1: accept a different topic (orphans enrolled devices)."}],
            "requestBody": {"required": True, "content": {"text/plain": {"schema": {"type": "string"}}}},
            "responses": {"200": _json(_ref("PushCert"), "Stored and in use."),
                          "409": _error("The topic differs from the current certificate's (code topic_changed)."),
                          **_STD_ERRORS},
        },
        "get": {
            "summary": "The current push certificate.",
            "responses": {"200": _json(_ref("PushCert"), "Topic and expiry."),
                          "404": _error("No push certificate imported yet."),
                          "500": _error("The stored certificate cannot be read."),
                          **_AUTH_ERRORS, "503": _STD_ERRORS["503"]},
        },
    },
    "/v1/challenges": {"post": {
        "summary": "Mint a one-time SCEP challenge.",
        "responses": {"201": _json(_ref("Challenge"), "The challenge."), **_AUTH_ERRORS,
                      "503": _STD_ERRORS["503"]},
    }},
    "/v1/enrollment-profile": {"post": {
        "summary": "Build an enrollment profile, the same GET /mdm/enroll serves (with one_time_challenge, "
                   "each carries a fresh challenge).",
        "responses": {
            "200": {"description": "The .mobileconfig.",
                    "content": {"application/x-apple-aspen-config": {"schema": {"type": "string",
                                                                                "format": "binary"}}}},
            "409": _error("No profile can be built yet (no push certificate, no challenge configured; "
                          "code profile_unavailable)."),
            **_AUTH_ERRORS,
            "503": _STD_ERRORS["503"],
        },
    }},
    "/v1/enrollment-urls": {"get": {
        "summary": "The Topic/ServerURL/CheckInURL sets enrollment profiles handed out, and warnings for "
                   "those that differ from the config.",
        "responses": {"200": _json(_ref("UrlSets"), "The sets, oldest first."), **_AUTH_ERRORS,
                      "503": _STD_ERRORS["503"]},
    }},
    "/v1/enrollment-urls/changed": {"delete": {
        "summary": "Forget the sets that differ from the config (their devices were re-enrolled or retired), "
                   "so the warning at start and in /healthz stops.",
        "responses": {"200": _json(_ref("ForgottenUrlSets"), "What was forgotten."), **_AUTH_ERRORS,
                      "503": _STD_ERRORS["503"]},
    }},
    "/v1/abm/servers": {"get": {
        "summary": "ABM server entries: token expiry, sync state, last error, devices by assignment state.",
        "responses": {"200": _json(_ref("AbmServerList"), "Every entry."), "401": _STD_ERRORS["401"],
                      "503": _STD_ERRORS["503"]},
    }},
    "/v1/abm/servers/{name}": {
        "post": {
            "summary": "Make the key pair of a new ABM server entry; answers the certificate to upload in ABM.",
            "parameters": [_ABM_NAME, {"name": "replace", "in": "query", "required": False,
                                       "schema": {"type": "string"},
                                       "description": "1: a new key pair for an existing entry (its token and "
                                                      "devices go; upload the new certificate and a new token)."}],
            "responses": {"201": _json(_ref("AbmKeypair"), "Made; the private key stays in the database."),
                          "409": _error("The entry exists (code abm_server_exists)."), **_STD_ERRORS},
        },
        "get": {
            "summary": "One ABM server entry.",
            "parameters": [_ABM_NAME],
            "responses": {"200": _json(_ref("AbmServer"), "The entry."), "404": _error("No such entry."),
                          **_STD_ERRORS},
        },
        "delete": {
            "summary": "Forget an ABM server entry, its token and the devices synced from it.",
            "parameters": [_ABM_NAME],
            "responses": {"200": _json(_ref("AbmServerDeleted"), "Forgotten."), "404": _error("No such entry."),
                          **_STD_ERRORS},
        },
    },
    "/v1/abm/servers/{name}/certificate": {"get": {
        "summary": "The entry's certificate again (PEM), to upload in ABM.",
        "parameters": [_ABM_NAME],
        "responses": {"200": {"description": "PEM.", "content": {"application/x-pem-file": {
            "schema": {"type": "string"}}}}, "404": _error("No such entry."), **_STD_ERRORS},
    }},
    "/v1/abm/servers/{name}/token": {"put": {
        "summary": "Import the server token file (server_token_*.p7m) downloaded from ABM; used at once.",
        "parameters": [_ABM_NAME],
        "requestBody": {"required": True, "description": "The .p7m as downloaded (S/MIME), or its PEM/DER.",
                        "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}},
        "responses": {"200": _json(_ref("AbmToken"), "Stored; the sync starts now."),
                      "400": _error("Not a token, made for another key pair, or expired (code invalid_server_token; "
                                    "the message says which). Nothing changed."),
                      "404": _error("No such entry."), "401": _STD_ERRORS["401"], "503": _STD_ERRORS["503"]},
    }},
    "/v1/abm/servers/{name}/sync": {"post": {
        "summary": "Sync now (a full fetch of every device with ?full=1).",
        "parameters": [_ABM_NAME, {"name": "full", "in": "query", "required": False, "schema": {"type": "string"},
                                   "description": "1: fetch every device again instead of the changes."}],
        "responses": {"202": _json(_ref("AbmSync"), "Started; GET the entry to follow it."),
                      "404": _error("No such entry."), "409": _error("No token imported yet (code no_server_token)."),
                      **_STD_ERRORS},
    }},
    "/v1/abm/devices": {"get": {
        "summary": "Devices ABM assigned to our servers, with their profile assignment and enrollment status.",
        "parameters": [_LIMIT, _CURSOR,
                       {"name": "server", "in": "query", "required": False, "schema": {"type": "string"}},
                       {"name": "state", "in": "query", "required": False, "schema": {
                           "type": "string", "enum": ["pending", "assigned", "failed", "throttled", "not_accessible",
                                                      "unassigned", "removed"]}},
                       {"name": "serial", "in": "query", "required": False, "schema": {"type": "string"}},
                       {"name": "enrolled", "in": "query", "required": False,
                        "schema": {"type": "string", "enum": ["true", "false"]}}],
        "responses": {"200": _json(_ref("AbmDevicePage"), "A page of devices, by serial number."), **_STD_ERRORS},
    }},
    "/v1/abm/devices/{serial}": {"get": {
        "summary": "One ABM device: assignment, enrollment and ADE setup state.",
        "parameters": [{"name": "serial", "in": "path", "required": True, "schema": {"type": "string"}}],
        "responses": {"200": _json(_ref("AbmDevice"), "The device."), "404": _error("ABM never named it."),
                      "401": _STD_ERRORS["401"], "503": _STD_ERRORS["503"]},
    }},
    "/v1/abm/devices/assign": {"post": {
        "summary": "Assign the ADE profile to these devices now (also ones an operator unassigned).",
        "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("AbmSerials"),
                                                                           "example": {"serials": ["C02XK1JJH7JY"]}}}},
        "responses": {"200": _json(_ref("AbmDeviceOutcomes"), "Per serial: pending (assigned by its worker now), "
                                   "or an error."), **_STD_ERRORS},
    }},
    "/v1/abm/devices/unassign": {"post": {
        "summary": "Take the ADE profile off these devices in ABM, and never assign it automatically again.",
        "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("AbmSerials"),
                                                                           "example": {"serials": ["C02XK1JJH7JY"]}}}},
        "responses": {"200": _json(_ref("AbmDeviceOutcomes"), "Per serial: Apple's answer, or an error."),
                      **_STD_ERRORS},
    }},
    "/v1/groups": {
        "get": {"summary": "Every group with its member count.",
                "responses": {"200": _json(_ref("GroupList"), "The groups."), "401": _STD_ERRORS["401"],
                              "503": _STD_ERRORS["503"]}},
        "post": {
            "summary": "Create a group: static without a filter, dynamic with one.",
            "requestBody": {"required": True, "content": {"application/json": {
                "schema": _ref("NewGroup"),
                "example": {"name": "old-ipads", "filter": "os_version < \"17.5\" and model_name contains \"iPad\""}}}},
            "responses": {"201": _json(_ref("Group"), "Created (a dynamic group with its members already)."),
                          "409": _error("A group of that name exists (names ignore case; code group_exists)."),
                          **_STD_ERRORS},
        },
    },
    "/v1/groups/{name}": {
        "get": {"summary": "One group.", "parameters": [_GROUP],
                "responses": {"200": _json(_ref("Group"), "The group."), "404": _error("No such group."),
                              "401": _STD_ERRORS["401"], "503": _STD_ERRORS["503"]}},
        "patch": {
            "summary": "Change a group's filter (dynamic groups; members follow at once) or description.",
            "parameters": [_GROUP],
            "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("GroupChange")}}},
            "responses": {"200": _json(_ref("Group"), "The group as it is now."), "404": _error("No such group."),
                          **_STD_ERRORS},
        },
        "delete": {"summary": "Delete a group (its devices stay).", "parameters": [_GROUP],
                   "responses": {"200": _json(_ref("GroupDeleted"), "Deleted."), "404": _error("No such group."),
                                 "401": _STD_ERRORS["401"], "503": _STD_ERRORS["503"]}},
    },
    "/v1/groups/{name}/members/{ids}": {
        method: {
            "summary": summary, "parameters": [_GROUP, {
                "name": "ids", "in": "path", "required": True, "schema": {"type": "string"},
                "description": "Comma-separated device ids (at most 10,000)."}],
            "responses": {"200": _json(_ref("GroupMembership"), "How many changed, and the count now."),
                          "404": _error("No such group, or (adding) no such device: nothing changed."),
                          **_STD_ERRORS},
        } for method, summary in (("put", "Add devices to a static group."),
                                  ("delete", "Take devices out of a static group."))
    },
    "/v1/openapi.json": {"get": {
        "summary": "This document.", "security": [],
        "responses": {"200": {"description": "OpenAPI 3.0 JSON.",
                              "content": {"application/json": {"schema": {"type": "object"}}}}},
    }},
}


def document() -> dict:
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "mdm-appliance admin API",
            "version": __version__,
            "description": "Authenticate with HTTP Basic (any user name, the API key as password) or "
                           "`Authorization: Bearer KEY`. Errors are {\"error\": {\"code\", \"message\"}}. "
                           "Lists page with ?limit= and ?cursor= (the previous answer's next_cursor).",
        },
        "components": {
            "securitySchemes": {"basic": {"type": "http", "scheme": "basic"},
                                "bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {**SCHEMAS, **openapi_ddm.SCHEMAS},
        },
        "security": [{"basic": []}, {"bearer": []}],
        "paths": _with_guess_limit({**PATHS, **openapi_ddm.PATHS}),
    }


def _with_guess_limit(paths: dict) -> dict:
    """The guessing limit on the API key (web/auth.py) answers 429 wherever a key is needed (a 401 is)."""
    return {path: {method: ({**operation, "responses": {**operation["responses"], "429": _TOO_MANY_GUESSES}}
                            if "401" in operation.get("responses", {}) else operation)
                   for method, operation in operations.items()}
            for path, operations in paths.items()}


@blueprint.get("/v1/openapi.json")
async def openapi_json():
    return jsonify(document())
