"""Secrets are compared in constant time (hmac.compare_digest), never with == or !=: a guard over the
whole package's source, so that a new comparison of a key, secret, challenge or password is caught."""

from __future__ import annotations

import ast
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "appliance"
# Names that hold a secret (lower case: ALL_CAPS constants such as CHALLENGE_PASSWORD are OIDs).
# Not every token is a secret: DDM's ServerToken is a version stamp, a push token an address.
SECRET_NAME = re.compile(r"(^|_)(api_key|hmac_key|secret|challenge|password|passphrase|digest|signature|"
                         r"bootstrap_token|unlock_token|push_magic)($|_)")


def _names(node: ast.AST) -> set[str]:
    found = set()
    for part in ast.walk(node):
        if isinstance(part, ast.Name):
            found.add(part.id)
        elif isinstance(part, ast.Attribute):
            found.add(part.attr)
    return {name for name in found if name == name.lower()}


def _secret_equalities(source: str) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Compare) or not any(isinstance(op, (ast.Eq, ast.NotEq)) for op in node.ops):
            continue
        operands = [node.left, *node.comparators]
        if any(isinstance(operand, ast.Constant) for operand in operands):
            continue  # `password == ""`, `key is None`: no secret value on the other side
        if any(SECRET_NAME.search(name) for operand in operands for name in _names(operand)):
            found.append((node.lineno, ast.unparse(node)))
    return found


def test_the_guard_sees_an_equality_on_a_secret():
    assert _secret_equalities("ok = presented == config.api_key\n") == [(1, "presented == config.api_key")]
    assert _secret_equalities("if secret != given: pass\n")
    assert not _secret_equalities("if password == '': pass\nif attr == OID.CHALLENGE_PASSWORD: pass\n")


def test_no_secret_is_compared_with_eq_anywhere_in_the_package():
    offenders = [f"{path.relative_to(PACKAGE.parent)}:{line}: {text}"
                 for path in sorted(PACKAGE.rglob("*.py"))
                 for line, text in _secret_equalities(path.read_text())]
    assert not offenders, "compare secrets with hmac.compare_digest:\n" + "\n".join(offenders)
