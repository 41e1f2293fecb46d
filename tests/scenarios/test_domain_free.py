"""No Python of the service names a domain: its names, fields, entities, labels or reasons.

The service builds everything domain-specific from the domain files; this test reads the shipped
ones (payments and loan applications) and looks for their words in the code of
``scoring_service/``: names and string literals. Docstrings, comments and the examples of the API
documentation are left aside (they may show a domain, as the OpenAPI page does). Field kinds that
are also field names (``ip_address``, ``currency``) are words of the domain-file schema, not of a
domain. The one domain a bare ``serve`` falls back to is a default setting: configuration, named
in ``settings.py`` only.
"""

from __future__ import annotations

import ast
import io
import re
import tokenize
from pathlib import Path

from feature_repo.domain import KEY_KINDS, NUMERIC_KINDS, load_domain

ROOT = Path(__file__).resolve().parents[2]
SERVICE = ROOT / "scoring_service"
KINDS = set(KEY_KINDS) | set(NUMERIC_KINDS) | {"category", "timestamp"}
# A setting's default is configuration: which folder a bare `serve` serves.
DEFAULTS = {("settings.py", "feature_repo/fraud")}


def domain_words() -> set[str]:
    words: set[str] = set()
    for name in ("fraud", "credit"):
        spec = load_domain(ROOT / "feature_repo" / name)
        words |= {spec.name, spec.resource, spec.business_id, spec.label_column}
        words |= {spec.model_name, spec.feature_service, spec.collection_field}
        words |= set(spec.request_fields) | set(spec.join_keys) | set(spec.labels)
        words |= {reason.code for reason in spec.reasons}
        for entity in spec.entities.values():
            words |= {entity.unknown_reason} | ({entity.route} if entity.route else set())
    return words - KINDS


def prose_lines(tree: ast.Module) -> set[int]:
    """Lines of docstrings (string expression statements) and of documentation examples: an
    ``examples`` value (keyword or dict key) or a module constant named ``*_EXAMPLE``."""
    lines: set[int] = set()
    examples: list[ast.AST] = []
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Expr)
            and isinstance(node.value, ast.Constant)
            and isinstance(node.value.value, str)
        ):
            lines.add(node.lineno)
        elif isinstance(node, ast.keyword) and node.arg == "examples":
            examples.append(node.value)
        elif isinstance(node, ast.Dict):
            examples += [
                value
                for key, value in zip(node.keys, node.values, strict=True)
                if isinstance(key, ast.Constant) and key.value == "examples"
            ]
        elif isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id.endswith("_EXAMPLE") for t in node.targets
        ):
            examples.append(node.value)
    for example in examples:
        lines.update(range(example.lineno, (example.end_lineno or example.lineno) + 1))
    return lines


def test_the_service_names_no_domain() -> None:
    words = domain_words()
    pattern = re.compile(
        r"(?<![A-Za-z0-9_])("
        + "|".join(sorted(map(re.escape, words), key=len, reverse=True))
        + r")(?![A-Za-z0-9_])"
    )
    found = []
    for path in sorted(SERVICE.rglob("*.py")):
        text = path.read_text()
        prose = prose_lines(ast.parse(text))
        for token in tokenize.generate_tokens(io.StringIO(text).readline):
            if token.type not in (tokenize.NAME, tokenize.STRING):
                continue
            if token.type == tokenize.STRING and token.start[0] in prose:
                continue
            literal = token.string.strip("\"'")
            if (path.name, literal) in DEFAULTS:
                continue
            found += [
                f"{path.relative_to(ROOT)}:{token.start[0]}: {match.group(0)}"
                for match in pattern.finditer(token.string)
            ]
    assert not found, "domain words in the service's code:\n" + "\n".join(found)
