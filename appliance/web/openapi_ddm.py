"""The DDM admin API's part of the OpenAPI document (appliance/web/openapi.py merges it): KMFDDM's routes
under /api/v1/ddm with their codes (204 changed, 304 unchanged), and ours."""

from __future__ import annotations

P = "/api/v1/ddm"


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict, description: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _error(description: str) -> dict:
    return _json(_ref("Error"), description)


_401 = {"401": _error("Missing or wrong API key.")}
_400 = {"400": _error("The request is wrong (the message says how).")}
_NOT_FOUND = {"404": _error("No such declaration (or route).")}
_CHANGED = {"204": {"description": "Changed (the enrollments it reaches are told, unless ?nonotify=1)."},
            "304": {"description": "Already so: nothing changed, nobody is told."}}
# Control characters (C0, DEL, C1; and '/', which a path segment cannot carry) are refused.
_NAME = {"type": "string", "minLength": 1, "maxLength": 256, "pattern": r"^[^\u0000-\u001f\u007f-\u009f/]+$"}
_ENROLLMENT = {"type": "string", "minLength": 1, "maxLength": 600, "pattern": r"^[^\u0000-\u001f\u007f-\u009f/]+$"}
_IDENTIFIER = {"type": "string", "minLength": 1, "maxLength": 64, "pattern": r"^[^\u0000-\u001f\u007f-\u009f/]+$"}


def _path(name: str, schema: dict, description: str) -> dict:
    return {"name": name, "in": "path", "required": True, "schema": schema, "description": description}


def _query(name: str, schema: dict, description: str, required: bool = False) -> dict:
    return {"name": name, "in": "query", "required": required, "schema": schema, "description": description}


# appliance.store.groups.NAME
_GROUP = _path("group", {"type": "string", "pattern": r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"},
               "A group's name (names ignore case).")
_DECLARATION_ID = _path("identifier", _IDENTIFIER, "A declaration's Identifier.")
_SET = _path("set_name", _NAME, "A set's name.")
_ENROLLMENT_ID = _path("enrollment_id", _ENROLLMENT, "An enrollment id (UDID, or UDID:UserID for a user channel).")
_IDS = _path("ids", {"type": "string", "minLength": 1, "pattern": r"^[^\u0000-\u001f\u007f-\u009f/]+$"},
             "Comma-separated enrollment ids (at most 1,000).")
_NONOTIFY = _query("nonotify", {"type": "string"}, "KMFDDM's: 1 (or any value but empty, 0, false, no, off) "
                   "changes without telling the enrollments.")
_STRINGS = {"type": "array", "items": {"type": "string"}}

SCHEMAS: dict = {
    "DdmDeclaration": {
        "type": "object", "required": ["Type", "Identifier", "Payload"],
        "properties": {
            "Type": {"type": "string",
                     "description": "com.apple.<activation|configuration|asset|management>.NAME; known types "
                                    "are checked against Apple's schema, unknown ones stored with a warning."},
            "Identifier": {"type": "string", "description": "At most 64 octets."},
            "ServerToken": {"type": "string", "description": "Computed by the appliance; ignored on input."},
            "Payload": {"type": "object"},
        },
        "example": {"Type": "com.apple.configuration.management.test", "Identifier": "com.example.test",
                    "Payload": {"Echo": "hello"}},
    },
    "DdmDeclarationRow": {
        "type": "object", "required": ["identifier", "type", "kind", "server_token"],
        "properties": {"identifier": {"type": "string"}, "type": {"type": "string"}, "kind": {"type": "string"},
                       "server_token": {"type": "string"}, "builtin": {"type": "string", "nullable": True},
                       "updated_at": {"type": "string"},
                       "sets": {"type": "string", "nullable": True, "description": "Comma-separated."}},
    },
    "DdmDeclarationStatus": {
        "type": "object", "additionalProperties": {"type": "array", "items": {
            "type": "object", "required": ["identifier", "active", "valid", "server-token", "current"],
            "properties": {
                "identifier": {"type": "string"}, "active": {"type": "boolean"}, "valid": {"type": "string"},
                "server-token": {"type": "string"},
                "current": {"type": "boolean", "description": "It reported the declaration's present ServerToken."},
                "status_received": {"type": "string"}, "status_id": {"type": "string"},
                "reasons": {"type": "array", "items": {}}}}},
        "description": "Per enrollment id (KMFDDM's shape).",
    },
    "DdmStatusErrors": {
        "type": "object", "additionalProperties": {"type": "array", "items": {
            "type": "object", "required": ["path", "error", "timestamp"],
            "properties": {"path": {"type": "string"}, "error": {}, "timestamp": {"type": "string"},
                           "status_id": {"type": "string"}}}},
    },
    "DdmStatusValues": {
        "type": "object", "additionalProperties": {"type": "array", "items": {
            "type": "object", "required": ["path", "value", "timestamp"],
            "properties": {"path": {"type": "string"}, "value": {"type": "string"}, "timestamp": {"type": "string"},
                           "status_id": {"type": "string"}}}},
    },
    "DdmSummary": {
        "type": "object", "required": ["identifier", "type", "enrollments", "applied", "invalid", "inactive",
                                       "pending", "not_reported", "reasons"],
        "description": "Active enrollments a declaration reaches, by the state of their latest status.",
        "properties": {
            "identifier": {"type": "string"}, "type": {"type": "string"}, "enrollments": {"type": "integer"},
            "applied": {"type": "integer"}, "invalid": {"type": "integer"}, "inactive": {"type": "integer"},
            "pending": {"type": "integer", "description": "Reported with an older ServerToken, or not yet judged."},
            "not_reported": {"type": "integer"},
            "reasons": {"type": "object", "additionalProperties": {"type": "integer"},
                        "description": "Reason codes of the invalid ones, counted."},
        },
    },
    "DdmOverview": {
        "type": "object", "required": ["enrollment_id", "sets", "declarations"],
        "properties": {
            "enrollment_id": {"type": "string"},
            "sets": {**_STRINGS, "description": "Its own and those of the groups its device is in."},
            "groups": {"type": "object", "additionalProperties": _STRINGS,
                       "description": "The groups (of its device) it gets sets from, with those sets."},
            "declarations_token": {"type": "string", "nullable": True},
            "token_changed_at": {"type": "string", "nullable": True},
            "last_sync_at": {"type": "string", "nullable": True},
            "last_status_at": {"type": "string", "nullable": True},
            "notified_at": {"type": "string", "nullable": True},
            "declarations": {"type": "array", "items": {
                "type": "object", "required": ["identifier", "kind", "server_token", "state"],
                "properties": {"identifier": {"type": "string"}, "kind": {"type": "string"},
                               "server_token": {"type": "string"},
                               "state": {"type": "string", "enum": ["applied", "invalid", "inactive", "pending",
                                                                   "not_reported"]},
                               "active": {"type": "boolean", "nullable": True,
                                          "description": "As last reported (null: never reported)."},
                               "valid": {"type": "string", "nullable": True,
                                         "description": "valid, invalid or unknown, as last reported."},
                               "reasons": {"type": "array", "items": {}},
                               "status_received": {"type": "string", "nullable": True}}}},
        },
    },
    "DdmOsUpdate": {
        "type": "object", "required": ["version", "deadline"], "additionalProperties": False,
        "properties": {
            "version": {"type": "string"},
            "deadline": {"type": "string",
                         "description": "The device's local time: YYYY-MM-DD[THH:MM[:SS]], no offset."},
            "build": {"type": "string"}, "details_url": {"type": "string"},
            "enrollment_ids": _STRINGS,
            "groups": {**_STRINGS, "description": "Groups to assign it to (their members now and later)."},
        },
        "example": {"version": "17.6", "deadline": "2027-01-15T18:00", "enrollment_ids": []},
    },
}

PATHS: dict = {
    f"{P}/declarations": {
        "get": {"summary": "Declaration identifiers (KMFDDM); ?detail=1: rows with type, token, sets.",
                "parameters": [_query("detail", {"type": "string"}, "1: objects instead of identifiers."),
                               _query("builtin", {"type": "string"}, "1: include the appliance's own.")],
                "responses": {"200": _json({"anyOf": [_STRINGS, {"type": "array", "items": _ref("DdmDeclarationRow")}]},
                                           "The declarations."), **_401}},
        "put": {"summary": "Store a declaration (new or replacing one with that Identifier).",
                "description": "Warnings (an unknown type or key) come back as Warning headers.",
                "parameters": [_NONOTIFY],
                "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("DdmDeclaration")}}},
                "responses": {**_CHANGED, **_400, "409": _error("An identifier the appliance reserves, or a kind "
                                                                "change of a declaration others name."), **_401}},
    },
    f"{P}/declarations/{{identifier}}": {
        "get": {"summary": "A declaration.", "parameters": [_DECLARATION_ID],
                "responses": {"200": _json(_ref("DdmDeclaration"), "The declaration."), **_NOT_FOUND, **_401}},
        "delete": {"summary": "Delete a declaration no set holds and no declaration names.",
                   "parameters": [_DECLARATION_ID],
                   "responses": {"204": {"description": "Deleted."}, "304": {"description": "There was none."},
                                 "409": _error("In a set, named by another declaration, or the appliance's own."),
                                 **_NOT_FOUND, **_401}},
    },
    f"{P}/declarations/{{identifier}}/touch": {
        "post": {"summary": "A new ServerToken for the same content (devices fetch it again).",
                 "parameters": [_DECLARATION_ID, _NONOTIFY],
                 "responses": {"204": {"description": "Touched."}, **_NOT_FOUND,
                               "409": _error("The appliance's own declaration."), **_401}},
    },
    f"{P}/sets": {"get": {"summary": "Set names.", "responses": {"200": _json(_STRINGS, "The sets."), **_401}}},
    f"{P}/set-declarations/{{set_name}}": {
        "get": {"summary": "The declarations in a set.", "parameters": [_SET],
                "responses": {"200": _json(_STRINGS, "Identifiers."), **_NOT_FOUND, **_401}},
        **{method: {"summary": summary, "parameters": [
            _SET, _query("declaration", _IDENTIFIER, "The declaration's Identifier.", required=True), _NONOTIFY],
            "responses": {**_CHANGED, **_400, **_NOT_FOUND, **_401}}
           for method, summary in (("put", "Put a declaration in the set."),
                                   ("delete", "Take a declaration out of the set."))},
    },
    f"{P}/declaration-sets/{{identifier}}": {
        "get": {"summary": "The sets a declaration is in.", "parameters": [_DECLARATION_ID],
                "responses": {"200": _json(_STRINGS, "Set names."), **_NOT_FOUND, **_401}},
    },
    f"{P}/enrollment-sets/{{enrollment_id}}": {
        "get": {"summary": "The sets assigned to an enrollment.", "parameters": [_ENROLLMENT_ID],
                "responses": {"200": _json(_STRINGS, "Set names."), **_NOT_FOUND, **_401}},
        **{method: {"summary": summary, "description": "An id not enrolled yet keeps its sets until it enrolls.",
                    "parameters": [_ENROLLMENT_ID, _query("set", _NAME, "The set's name.", required=True), _NONOTIFY],
                    "responses": {**_CHANGED, **_400, **_NOT_FOUND, **_401}}
           for method, summary in (("put", "Assign a set to an enrollment."),
                                   ("delete", "Take a set off an enrollment."))},
    },
    **{path: {"delete": {"summary": "Take every set off an enrollment.", "parameters": [_ENROLLMENT_ID, _NONOTIFY],
                         "responses": {**_CHANGED, **_400, **_NOT_FOUND, **_401}}}
       for path in (f"{P}/enrollment-sets-all/{{enrollment_id}}", f"{P}/enrollment-sets-all/sets/{{enrollment_id}}")},
    f"{P}/group-sets/{{group}}": {
        "get": {"summary": "The sets assigned to a group (ours).", "parameters": [_GROUP],
                "responses": {"200": _json(_STRINGS, "Set names."), **_400, "404": _error("No such group."),
                              **_401}},
        **{method: {"summary": summary, "description": "Every member's device channel gets the group's sets "
                                                       "while it is a member; members are told at once.",
                    "parameters": [_GROUP, _query("set", _NAME, "The set's name.", required=True), _NONOTIFY],
                    "responses": {**_CHANGED, **_400, "404": _error("No such group."), **_401}}
           for method, summary in (("put", "Assign a set to a group (ours)."),
                                   ("delete", "Take a set off a group (ours)."))},
    },
    f"{P}/declaration-status/{{ids}}": {
        "get": {"summary": "The latest reported status of each declaration, per enrollment.", "parameters": [_IDS],
                "responses": {"200": _json(_ref("DdmDeclarationStatus"), "Per enrollment id."), **_400,
                              **_NOT_FOUND, **_401}},
    },
    f"{P}/status-errors/{{ids}}": {
        "get": {"summary": "The newest errors reports carried (Errors, and declarations neither active nor valid).",
                "parameters": [_IDS],
                "responses": {"200": _json(_ref("DdmStatusErrors"), "Per enrollment id."), **_400, **_NOT_FOUND,
                              **_401}},
    },
    f"{P}/status-values/{{ids}}": {
        "get": {"summary": "The latest reported values (paths like .StatusItems.device.operating-system.version).",
                "parameters": [_IDS, _query("prefix", {"type": "string"}, "SQL LIKE pattern: % is the wildcard.")],
                "responses": {"200": _json(_ref("DdmStatusValues"), "Per enrollment id."), **_400, **_NOT_FOUND,
                              **_401}},
    },
    f"{P}/status-report/{{enrollment_id}}": {
        "get": {"summary": "A kept raw status report (headers: Last-Modified, X-Status-Report-Index, "
                           "X-Status-Report-ID).",
                "parameters": [_ENROLLMENT_ID, _query("index", {"type": "integer", "minimum": 0, "maximum": 100000},
                                                      "0: the newest."),
                               _query("status_id", {"type": "string"}, "A report's id.")],
                "responses": {"200": _json({"type": "object"}, "The report as the device sent it."), **_400,
                              "404": _error("No such report."), **_401}},
    },
    f"{P}/notify": {
        "post": {"summary": "Tell enrollments (by id, by set, or those a declaration reaches) even if nothing "
                            "changed; at most one DeclarativeManagement command waits per enrollment.",
                 "parameters": [_query("id", {"type": "array", "items": _ENROLLMENT},
                                       "Repeatable: id. group:NAME stands for the group's members.")]
                               + [_query(name, {"type": "array", "items": _ENROLLMENT}, f"Repeatable: {name}.")
                                  for name in ("set", "declaration")],
                 "responses": {"204": {"description": "Marked; the notifier tells them at once."}, **_400, **_401,
                               **_NOT_FOUND}},
    },
    f"{P}/status-summary": {
        "get": {"summary": "Fleet-wide: per declaration, how many enrollments have it applied, invalid, ...",
                "parameters": [_query("declaration", {"type": "string"}, "Only this declaration."),
                               _query("group", {"type": "string"}, "Only the enrollments of this group's devices.")],
                "responses": {"200": _json({"type": "object", "required": ["declarations"], "properties": {
                    "declarations": {"type": "array", "items": _ref("DdmSummary")}}}, "The summary."),
                              **_NOT_FOUND, **_401}},
    },
    f"{P}/enrollments/{{enrollment_id}}": {
        "get": {"summary": "One enrollment's DDM state: its sets, tokens, and each declaration's state.",
                "parameters": [_ENROLLMENT_ID],
                "responses": {"200": _json(_ref("DdmOverview"), "The overview."), **_NOT_FOUND, **_401}},
    },
    f"{P}/assets/{{identifier}}": {
        "put": {"summary": "Host an asset's content: stores it and the asset declaration of that Identifier "
                           "(Reference with a per-enrollment DataURL, size and SHA-256; Authentication MDM).",
                "parameters": [_DECLARATION_ID, _query("type", {"type": "string"},
                                                       "Asset type (default com.apple.asset.data)."), _NONOTIFY],
                "requestBody": {"required": True, "content": {"application/octet-stream": {
                    "schema": {"type": "string", "format": "binary"}}},
                    "description": "The content; its Content-Type header becomes the asset's ContentType."},
                "responses": {**_CHANGED, **_400, "409": _error("A declaration of that Identifier whose content "
                                                                "is not hosted here."), **_NOT_FOUND, **_401}},
    },
    f"{P}/os-update": {
        "post": {"summary": "Enforce an OS version by a deadline: softwareupdate.enforcement.specific and its "
                            "activation in set os-update-VERSION, assigned to the enrollments and groups (an "
                            "older os-update-* set on them is taken off).",
                 "parameters": [_NONOTIFY],
                 "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("DdmOsUpdate")}}},
                 "responses": {"200": _json({"type": "object", "required": ["set", "declarations", "assigned",
                                                                            "replaced", "progress"]},
                                            "What was stored and assigned, and the progress so far."),
                               **_400, "404": _error("No such group."), **_401}},
    },
}
