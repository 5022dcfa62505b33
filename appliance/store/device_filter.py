"""The device filter language: a small expression over device facts, parsed by hand into a tree and
compiled into a parameterized SQL condition. User text only ever becomes a bound parameter; field names and
operators map to fixed SQL from the tables below.

    os_version < "17.5" and model_name contains "iPad"
    (last_seen < 30d ago or not active) and group = lab-macs
    app = "us.zoom.xos" and not filevault

Grammar (keywords in any case):
    filter    := or
    or        := and ("or" and)*
    and       := unary ("and" unary)*
    unary     := "not" unary | "(" or ")" | condition
    condition := FIELD op value | FIELD ("contains" | "startswith") value | FIELD "in" "(" value ("," value)* ")"
               | FIELD "is" ["not"] "null"
    op        := "=" | "==" | "!=" | "<" | "<=" | ">" | ">="
    value     := "text" | 'text' | bare-word (17.5, true, lab-macs) | NUMBER UNIT "ago" (UNIT: s m h d w)
A device without a fact never matches a condition on it, and `not` of that condition does (two-valued logic).
Bounded: MAX_LENGTH characters, MAX_DEPTH nesting, MAX_CONDITIONS conditions; FilterError says where.
"""

from __future__ import annotations

import difflib
import functools
import re
from dataclasses import dataclass
from datetime import datetime, timedelta

from appliance.store.timefmt import to_text

MAX_LENGTH = 2000
MAX_DEPTH = 16
MAX_CONDITIONS = 64
MAX_IN_VALUES = 100

TEXT, VERSION, NUMBER, BOOL, TIME, GROUP, SET = "text", "version", "number", "bool", "time", "group", "set"
_OPS_BY_KIND = {
    TEXT: ("=", "!=", "contains", "startswith", "in", "is"),
    VERSION: ("=", "!=", "<", "<=", ">", ">=", "contains", "startswith", "in", "is"),
    NUMBER: ("=", "!=", "<", "<=", ">", ">=", "is"),
    BOOL: ("=", "!=", "is"),
    TIME: ("<", "<=", ">", ">=", "is"),
    GROUP: ("=", "!=", "in"),
    SET: ("=", "!=", "contains", "startswith", "in"),
}


@dataclass(frozen=True, slots=True)
class Field:
    name: str
    kind: str
    sql: str  # a column expression over d (devices), e (device channel enrollment), i (device_inventory)
    doc: str
    # Facts that change with every request or the clock cannot define a dynamic group (membership is kept
    # up to date when inventory changes, not on every check-in).
    volatile: bool = False


FIELDS: dict[str, Field] = {field.name: field for field in (
    Field("name", TEXT, "d.device_name", "the device name"),
    Field("serial", TEXT, "d.serial_number", "the serial number"),
    Field("udid", TEXT, "d.id", "the device id (UDID, or EnrollmentID for User Enrollment)"),
    Field("model", TEXT, "d.model", "the model identifier, e.g. iPad13,18 or Mac14,2"),
    Field("model_name", TEXT, "d.model_name", "the model name, e.g. iPad or MacBook Air"),
    Field("product_name", TEXT, "d.product_name", "the product name, e.g. iPad13,18"),
    Field("os_version", VERSION, "d.os_version", "the OS version, compared as a version (17.10 > 17.9)"),
    Field("build", TEXT, "d.build_version", "the OS build, e.g. 21E236"),
    Field("capacity", NUMBER, "i.device_capacity", "storage capacity in GB"),
    Field("available", NUMBER, "i.available_capacity", "available storage in GB"),
    Field("battery", NUMBER, "i.battery_level * 100", "battery level in percent (0-100)"),
    Field("supervised", BOOL, "i.supervised", "the device is supervised"),
    Field("activation_lock", BOOL, "i.activation_lock", "Activation Lock is on"),
    Field("filevault", BOOL, "i.filevault", "FileVault is on (macOS)"),
    Field("passcode", BOOL, "i.passcode_present", "a passcode is set"),
    Field("passcode_compliant", BOOL, "i.passcode_compliant", "the passcode complies with the policies"),
    Field("app", SET, "apps", "an installed app's bundle id (contains/startswith: its bundle id or name)"),
    Field("profile", SET, "profiles", "an installed profile's identifier (contains/startswith: identifier or name)"),
    Field("active", BOOL, "e.active", "enrolled and not checked out", volatile=True),
    Field("last_seen", TIME, "e.last_seen_at", "the last request from the device", volatile=True),
    Field("last_inventory", TIME, "i.inventory_at", "the last inventory answer", volatile=True),
    Field("enrolled_at", TIME, "e.enrolled_at", "when the device (last) enrolled", volatile=True),
    Field("group", GROUP, "", "a member of the group NAME", volatile=True),
)}

# (table, key column, name column) behind the SET fields.
_SETS = {"apps": ("device_applications", "identifier", "name"),
         "profiles": ("device_profiles", "identifier", "display_name")}
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_KEYWORDS = {"and", "or", "not", "in", "is", "null", "contains", "startswith", "ago"}
_TRUE, _FALSE = ("true", "yes"), ("false", "no")


class FilterError(ValueError):
    """The filter cannot be used; `position` is the 1-based character where the problem is."""

    def __init__(self, reason: str, position: int) -> None:
        super().__init__(f"{reason} (at position {position})")
        self.reason = reason
        self.position = position


# --- the tree ---------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Age:
    """`30d ago`: a moment relative to when the filter runs."""

    seconds: float


@dataclass(frozen=True, slots=True)
class Condition:
    field: Field
    op: str
    values: tuple  # str, float, bool, Age; empty for "is null" / "is not null"
    position: int


@dataclass(frozen=True, slots=True)
class Not:
    operand: Node


@dataclass(frozen=True, slots=True)
class All:
    operands: tuple[Node, ...]


@dataclass(frozen=True, slots=True)
class Any:
    operands: tuple[Node, ...]


Node = Condition | Not | All | Any


@dataclass(frozen=True, slots=True)
class Filter:
    text: str
    tree: Node

    @property
    def conditions(self) -> list[Condition]:
        found, stack = [], [self.tree]
        while stack:
            node = stack.pop()
            if isinstance(node, Condition):
                found.append(node)
            elif isinstance(node, Not):
                stack.append(node.operand)
            else:
                stack.extend(node.operands)
        return found


# --- tokens ---------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class _Token:
    kind: str   # "word", "string", "op", "(", ")", ",", "end"
    text: str   # a word's or op's text, a string's content (unescaped)
    position: int  # 1-based

    def is_keyword(self, *words: str) -> bool:
        return self.kind == "word" and self.text.lower() in words


_SCAN = re.compile(r"""
    (?P<space>\s+)
  | (?P<op>==|!=|<=|>=|=|<|>)
  | (?P<paren>[(),])
  | (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')
  | (?P<word>[A-Za-z0-9_.:+\-]+)
""", re.VERBOSE)


def _tokens(text: str) -> list[_Token]:
    tokens, at = [], 0
    while at < len(text):
        match = _SCAN.match(text, at)
        if match is None:
            char = text[at]
            if char in "\"'":
                raise FilterError("this quote is never closed", at + 1)
            shown = repr(char) if char.isprintable() else f"U+{ord(char):04X}"
            raise FilterError(f"unexpected character {shown}", at + 1)
        kind = match.lastgroup
        if kind == "string":
            body = match.group()[1:-1]
            tokens.append(_Token("string", re.sub(r"\\(.)", r"\1", body), at + 1))
        elif kind == "paren":
            tokens.append(_Token(match.group(), match.group(), at + 1))
        elif kind != "space":
            tokens.append(_Token(kind, match.group(), at + 1))
        at = match.end()
    tokens.append(_Token("end", "", len(text) + 1))
    return tokens


# --- parsing ----------------------------------------------------------------------------------------

def parse(text: str, *, for_group: bool = False) -> Filter:
    """Parse a filter; `for_group`: a dynamic group's definition, where volatile fields are refused."""
    if not isinstance(text, str):
        raise FilterError("the filter must be text", 1)
    if len(text) > MAX_LENGTH:
        raise FilterError(f"the filter is longer than {MAX_LENGTH} characters", MAX_LENGTH + 1)
    if not text.strip():
        raise FilterError("the filter is empty", 1)
    parser = _Parser(_tokens(text), for_group)
    tree = parser.expression(0)
    end = parser.peek()
    if end.kind != "end":
        raise FilterError(f"expected 'and', 'or' or the end of the filter, found {_shown(end)}", end.position)
    return Filter(text, tree)


class _Parser:
    def __init__(self, tokens: list[_Token], for_group: bool) -> None:
        self.tokens = tokens
        self.at = 0
        self.for_group = for_group
        self.conditions = 0

    def peek(self) -> _Token:
        return self.tokens[self.at]

    def take(self) -> _Token:
        token = self.tokens[self.at]
        if token.kind != "end":
            self.at += 1
        return token

    def expression(self, depth: int) -> Node:
        operands = [self.conjunction(depth)]
        while self.peek().is_keyword("or"):
            self.take()
            operands.append(self.conjunction(depth))
        return operands[0] if len(operands) == 1 else Any(tuple(operands))

    def conjunction(self, depth: int) -> Node:
        operands = [self.unary(depth)]
        while self.peek().is_keyword("and"):
            self.take()
            operands.append(self.unary(depth))
        return operands[0] if len(operands) == 1 else All(tuple(operands))

    def unary(self, depth: int) -> Node:
        token = self.peek()
        if depth >= MAX_DEPTH:
            raise FilterError(f"the filter nests deeper than {MAX_DEPTH} levels", token.position)
        if token.is_keyword("not"):
            self.take()
            return Not(self.unary(depth + 1))
        if token.kind == "(":
            self.take()
            inner = self.expression(depth + 1)
            closing = self.take()
            if closing.kind != ")":
                raise FilterError(f"expected ')' to close the '(' at position {token.position}, found "
                                  f"{_shown(closing)}", closing.position)
            return inner
        return self.condition()

    def condition(self) -> Condition:
        token = self.take()
        if token.kind != "word" or token.text.lower() in _KEYWORDS:
            raise FilterError(f"expected a field name, found {_shown(token)}", token.position)
        field = self.field(token)
        self.conditions += 1
        if self.conditions > MAX_CONDITIONS:
            raise FilterError(f"the filter has more than {MAX_CONDITIONS} conditions", token.position)
        op_token = self.take()
        op = _operator(op_token)
        if op is None:
            raise FilterError(f"expected an operator after {field.name} (one of "
                              f"{', '.join(_OPS_BY_KIND[field.kind])}), found {_shown(op_token)}", op_token.position)
        if op not in _OPS_BY_KIND[field.kind]:
            raise FilterError(f"{field.name} is {_KIND_WORDS[field.kind]}: it takes "
                              f"{', '.join(_OPS_BY_KIND[field.kind])}, not {op}", op_token.position)
        if op == "is":
            negated = self.peek().is_keyword("not")
            if negated:
                self.take()
            null = self.take()
            if not null.is_keyword("null"):
                raise FilterError(f"expected 'null' after 'is{' not' if negated else ''}', found {_shown(null)}",
                                  null.position)
            return Condition(field, "is not null" if negated else "is null", (), token.position)
        if op == "in":
            return Condition(field, op, self.value_list(field), token.position)
        return Condition(field, op, (self.value(field, op),), token.position)

    def field(self, token: _Token) -> Field:
        field = FIELDS.get(token.text.lower())
        if field is None:
            close = difflib.get_close_matches(token.text.lower(), FIELDS, n=1)
            hint = f" (did you mean {close[0]}?)" if close else f"; fields: {', '.join(FIELDS)}"
            raise FilterError(f"unknown field {token.text!r}{hint}", token.position)
        if self.for_group and field.volatile:
            raise FilterError(f"{field.name} cannot define a dynamic group (it changes with every request or "
                              f"over time); use it in a search", token.position)
        return field

    def value_list(self, field: Field) -> tuple:
        opening = self.take()
        if opening.kind != "(":
            raise FilterError(f"expected '(' after 'in', found {_shown(opening)}", opening.position)
        values = [self.value(field, "in")]
        while self.peek().kind == ",":
            self.take()
            if len(values) >= MAX_IN_VALUES:
                raise FilterError(f"more than {MAX_IN_VALUES} values in one 'in' list", self.peek().position)
            values.append(self.value(field, "in"))
        closing = self.take()
        if closing.kind != ")":
            raise FilterError(f"expected ',' or ')' in the 'in' list, found {_shown(closing)}", closing.position)
        return tuple(values)

    def value(self, field: Field, op: str):
        token = self.take()
        if token.kind not in ("word", "string") or (token.kind == "word" and token.text.lower() in _KEYWORDS):
            raise FilterError(f"expected a value for {field.name}, found {_shown(token)}", token.position)
        if field.kind == TIME:
            return self.moment(token)
        text = token.text
        if field.kind == BOOL:
            if text.lower() in _TRUE:
                return True
            if text.lower() in _FALSE:
                return False
            raise FilterError(f"{field.name} is true or false, not {_shown(token)}", token.position)
        if field.kind == NUMBER:
            try:
                number = float(text)
            except ValueError:
                number = float("nan")
            if number != number or number in (float("inf"), float("-inf")):
                raise FilterError(f"{field.name} takes a number, not {_shown(token)}", token.position)
            return number
        if not text and op in ("contains", "startswith"):
            raise FilterError(f"'{op}' needs some text", token.position)
        return text

    def moment(self, token: _Token):
        """A date ("2026-05-01"), a time ("2026-05-01T12:00:00Z") or an age (`30d ago`)."""
        if token.kind == "word" and (match := re.fullmatch(r"(\d{1,6})([smhdw])", token.text.lower())):
            ago = self.take()
            if not ago.is_keyword("ago"):
                raise FilterError(f"expected 'ago' after {token.text}, found {_shown(ago)}", ago.position)
            return Age(int(match.group(1)) * _UNITS[match.group(2)])
        text = token.text.strip()
        try:
            if re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
                return datetime.fromisoformat(text + "T00:00:00+00:00")
            if re.fullmatch(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d{1,6})?)?(Z|[+-]\d{2}:\d{2})", text):
                return datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            pass
        raise FilterError(f"expected a date like \"2026-05-01\", a time like \"2026-05-01T12:00:00Z\" or an "
                          f"age like 30d ago, found {_shown(token)}", token.position)


_KIND_WORDS = {TEXT: "text", VERSION: "a version", NUMBER: "a number", BOOL: "true or false", TIME: "a time",
               GROUP: "a group name", SET: "a set of names"}


def _operator(token: _Token) -> str | None:
    if token.kind == "op":
        return "=" if token.text == "==" else token.text
    if token.is_keyword("contains", "startswith", "in", "is"):
        return token.text.lower()
    return None


def _shown(token: _Token) -> str:
    if token.kind == "end":
        return "the end of the filter"
    if token.kind == "string":
        return repr(token.text[:40])
    return f"'{token.text[:40]}'"


# --- SQL ----------------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Sql:
    where: str
    params: list


def compile_sql(filter_: Filter, *, now: datetime) -> Sql:
    """A WHERE condition over `d`, `e` and `i` (see FIELDS) with `?` placeholders; the connection needs
    version_key() (appliance.store.device_search.prepare)."""
    params: list = []
    return Sql(_node(filter_.tree, params, now), params)


def _node(node: Node, params: list, now: datetime) -> str:
    if isinstance(node, Not):
        return f"NOT {_node(node.operand, params, now)}"
    if isinstance(node, All):
        return "(" + " AND ".join(_node(operand, params, now) for operand in node.operands) + ")"
    if isinstance(node, Any):
        return "(" + " OR ".join(_node(operand, params, now) for operand in node.operands) + ")"
    # coalesce(..., 0): a missing fact makes the condition false, so that `not` of it is true.
    return f"coalesce({_condition(node, params, now)}, 0)"


def _condition(c: Condition, params: list, now: datetime) -> str:
    field, op = c.field, c.op
    if field.kind == GROUP:
        params.extend(c.values)
        marks = ", ".join("?" * len(c.values))
        member = f"d.id IN (SELECT gm.device_id FROM group_members gm WHERE gm.group_name IN ({marks}))"
        return f"NOT ({member})" if op == "!=" else f"({member})"
    if field.kind == SET:
        return _set_condition(c, params)
    if op in ("is null", "is not null"):
        return f"({field.sql} {op.upper()})"
    column = field.sql
    values = [_sql_value(field, value, now) for value in c.values]
    if op in ("contains", "startswith"):
        # lower() on both sides: SQLite folds ASCII only, so fold the needle the same way.
        if field.kind == TEXT:
            column = f"lower({column})"
        needle = "lower(?)" if field.kind == TEXT else "?"
        if op == "contains":
            params.append(values[0])
            return f"(instr({column}, {needle}) > 0)"
        params.extend([values[0], values[0]])
        return f"(substr({column}, 1, length(?)) = {needle})"
    if field.kind == VERSION:
        column = f"version_key({column})"
        values = [version_key(value) for value in values]
    elif field.kind == TEXT:
        column = f"{column} COLLATE NOCASE"
    params.extend(values)
    if op == "in":
        return f"({column} IN ({', '.join('?' * len(values))}))"
    return f"({column} {op} ?)"


def _set_condition(c: Condition, params: list) -> str:
    table, key, name = _SETS[c.field.sql]
    if c.op == "contains":
        test = f"(instr(lower(s.{key}), lower(?)) > 0 OR instr(lower(s.{name}), lower(?)) > 0)"
        params.extend([c.values[0]] * 2)
    elif c.op == "startswith":
        test = (f"(lower(substr(s.{key}, 1, length(?))) = lower(?) "
                f"OR lower(substr(s.{name}, 1, length(?))) = lower(?))")
        params.extend([c.values[0]] * 4)
    else:
        params.extend(c.values)
        test = f"s.{key} IN ({', '.join('?' * len(c.values))})"
    # Not correlated: SQLite builds the set of devices once, then each row is one lookup in it.
    found = f"d.id IN (SELECT s.device_id FROM {table} s WHERE {test})"
    return f"NOT ({found})" if c.op == "!=" else f"({found})"


def _sql_value(field: Field, value, now: datetime):
    if isinstance(value, Age):
        return to_text(now - timedelta(seconds=value.seconds))
    if isinstance(value, datetime):
        return to_text(value)
    if isinstance(value, bool):
        return 1 if value else 0
    return value


# What a compiled filter is evaluated over: the device, its device-channel enrollment, its inventory.
SOURCE = ("FROM devices d LEFT JOIN enrollments e ON e.id = d.id "
          "LEFT JOIN device_inventory i ON i.device_id = d.id")


def prepare(conn) -> None:
    """Give the connection the SQL function compiled filters call (cheap; per connection)."""
    conn.create_function("version_key", 1, version_key, deterministic=True)


@functools.lru_cache(maxsize=4096)  # a fleet has a few dozen distinct versions
def version_key(version: str | None) -> str | None:
    """'9.3.5' < '15.1' < '15.10': each number zero-padded, so the text sorts as the versions do."""
    if version is None:
        return None
    return ".".join(part.zfill(6) if part.isdigit() else part for part in version.split("."))
