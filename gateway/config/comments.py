"""Find values YAML cut short at an unquoted `` #``.

In YAML a `` #`` ends a plain (unquoted) scalar and starts a comment, so
``blocked_message: ask in #dev-tools for more`` loads as ``ask in``. The parsed
data cannot show this; only the source text can. This pass composes the same
document again (with the loader the config uses, so tags resolve alike) and,
for every plain scalar that a comment follows on the same line, decides
whether the comment looks deliberate.

Judgement, in the spirit of yamllint's default ``comments`` rule:

* Only strings (and empty values) are looked at. A number, boolean or null
  written out resolves to its own tag and is a complete value whatever follows
  it (``port: 8443 # TLS``).
* A comment is taken as deliberate when it is written like one: whitespace
  right after the ``#``, and, when the value is several words of text, at least
  two spaces before it. ``ask in #dev-tools``, ``see #42`` and ``key: #ops``
  fail the first test (a channel, an issue number, a hashtag); ``ask in # the
  channel`` fails the second, since prose rarely ends in a one-space comment.
  ``provider: anthropic # the only one`` passes: one word is a whole value.

Pure: text in, findings out; messages name the path and line, never the value
(it could be a secret).
"""

from __future__ import annotations

import re
from typing import Any

import yaml

from gateway.config.schema import dotted

__all__ = ["cut_values", "cut_warning"]

_STR = "tag:yaml.org,2002:str"
_NULL = "tag:yaml.org,2002:null"
_MERGE = "tag:yaml.org,2002:merge"
_TRAILING_COMMENT = re.compile(r"([ \t]+)#([^\r\n]*)")


def cut_values(raw: bytes, loader: type[yaml.SafeLoader]) -> list[tuple[str, int]]:
    """(dotted path, 1-based line) of each value that probably lost text to a comment."""
    text = _decode(raw)
    if text is None:
        return []
    parser = loader(text)
    try:
        root = parser.get_single_node()
    except yaml.YAMLError:
        return []  # the loader reports the syntax error itself
    finally:
        parser.dispose()
    found: list[tuple[str, int]] = []
    if root is not None:
        _walk(root, "", text, found, set())
    return found


def cut_warning(path: str, line: int) -> str:
    return (
        f"{path} (line {line}): the value ends where an unquoted ' #' begins, so YAML read the rest of "
        "the line as a comment; quote the whole value if the # is part of it"
    )


def _decode(raw: bytes) -> str | None:
    # The same choice PyYAML's reader makes for bytes, so line numbers agree.
    codec = "utf-16-le" if raw.startswith(b"\xff\xfe") else "utf-16-be" if raw.startswith(b"\xfe\xff") else "utf-8"
    try:
        return raw.decode(codec)
    except UnicodeDecodeError:
        return None


def _walk(node: Any, path: str, text: str, found: list[tuple[str, int]], open_nodes: set[int]) -> None:
    if id(node) in open_nodes:  # an alias of an enclosing node
        return
    if isinstance(node, yaml.ScalarNode):
        # An anchored value reached again through an alias or merge is reported once, where written.
        if _looks_cut(node, text) and all(line != node.end_mark.line + 1 for _, line in found):
            found.append((path or "(top level)", node.end_mark.line + 1))
        return
    open_nodes.add(id(node))
    if isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _walk(item, f"{path}[{i}]", text, found, open_nodes)
    elif isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            if key.tag == _MERGE:
                _walk(value, path, text, found, open_nodes)  # merged keys land in this mapping
            elif isinstance(key, yaml.ScalarNode):
                _walk(value, dotted(path, key.value), text, found, open_nodes)
    open_nodes.discard(id(node))


def _looks_cut(node: yaml.ScalarNode, text: str) -> bool:
    if node.style is not None:  # quoted or block scalars keep their # as text
        return False
    if node.tag != _STR and not (node.tag == _NULL and node.value == ""):
        return False
    comment = _TRAILING_COMMENT.match(text, node.end_mark.index)
    if comment is None:
        return False
    gap, after = comment.group(1), comment.group(2)
    written_like_a_comment = after[:1] in ("", " ", "\t")
    prose = any(c.isspace() for c in node.value)
    return not written_like_a_comment or (prose and len(gap.expandtabs()) < 2)
