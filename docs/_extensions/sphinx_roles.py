"""A griffe extension for the documentation site: reST habits of the docstrings made Markdown.

memscope's docstrings are written to read well in ``help()``, with a few reStructuredText
habits that mkdocstrings would print literally. Before rendering, once the package is loaded:

- Sphinx roles (``:class:`BatchReport```, ``:meth:`trigger_gc_if_needed```) become links to
  the object's entry in the API reference when the object is documented there (the public
  names of ``memscope`` and of the namespaces the reference shows), and plain code otherwise.
- Literal blocks become fenced Python code: ``text::`` then an indented block reads as
  ``text:`` then code, and a paragraph that is only ``::`` disappears, as reST renders them.
- Base classes from private modules (``memscope._context_manager``, say) are left out of the
  "Bases:" line: they are how a class is built, not part of what it offers.
- A public module attribute that only names a class of its module (``managed_batch =
  ManagedBatch``) and has no docstring of its own gets one pointing to that class.
"""

from __future__ import annotations

import re
import textwrap
from collections.abc import Iterator
from typing import Any

from griffe import Alias, Attribute, Class, Docstring, Extension, Module, Object

ROLE = re.compile(r":(?:class|meth|func|attr|exc|mod|data|obj):`~?([\w.]+)`")
DOCUMENTED_MODULES = (
    "memscope",
    "memscope.reports",
    "memscope.oom",
    "memscope.leaks",
    "memscope.journal",
    "memscope.host",
    "memscope.estimation",
    "memscope.distributed",
    "memscope.ray",
    "memscope.testing",
    "memscope.backends",
    "memscope.batch",
    "memscope.decorator",
    "memscope.manager",
    "memscope.policies",
    "memscope.exceptions",
    "memscope.typing",
)
"""The modules docs/api.md documents, in its order: a name several export is documented
under the first (the top level first of all), as the reference lists it."""


def _objects(module: Module) -> Iterator[Object]:
    yield module
    for member in module.members.values():
        if isinstance(member, Alias):
            continue
        if isinstance(member, Module):
            yield from _objects(member)
        else:
            yield member
            yield from (child for child in member.members.values() if not child.is_alias)


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def literal_blocks_as_code(text: str) -> str:
    """reST literal blocks (``text::`` and an indented block) as fenced Python code."""
    lines = text.split("\n")
    result: list[str] = []
    index = 0
    while index < len(lines):
        line = lines[index]
        stripped = line.rstrip()
        start = index + 1
        while start < len(lines) and not lines[start].strip():
            start += 1
        introduces_block = (
            stripped.endswith("::")
            and start > index + 1
            and start < len(lines)
            and _indent(lines[start]) > _indent(line)
        )
        if not introduces_block:
            result.append(line)
            index += 1
            continue
        end = start
        while end < len(lines) and (not lines[end].strip() or _indent(lines[end]) > _indent(line)):
            end += 1
        while not lines[end - 1].strip():
            end -= 1
        lead = stripped[:-2]
        # reST: "text::" reads "text:", "text ::" reads "text", and "::" alone vanishes.
        if lead.strip():
            result += [lead.rstrip() if lead.endswith(" ") else lead + ":", ""]
        margin = " " * _indent(line)
        code = textwrap.dedent("\n".join(lines[start:end]))
        fenced = [f"{margin}```python", *(margin + row for row in code.split("\n")), f"{margin}```"]
        result += [row.rstrip() for row in fenced]
        index = end
    return "\n".join(result)


class SphinxRoles(Extension):
    """Make every docstring of the package Markdown, and tidy what the reference shows."""

    def on_package(self, *, pkg: Module, **kwargs: Any) -> None:
        public = self._public_paths(pkg)
        for obj in list(_objects(pkg)):
            if isinstance(obj, Class):
                obj.bases = [base for base in obj.bases if not self._is_private(base)]
            if isinstance(obj, Attribute) and obj.docstring is None:
                self._describe_class_alias(obj)
            if obj.docstring is not None:
                value = literal_blocks_as_code(obj.docstring.value)
                obj.docstring.value = ROLE.sub(
                    lambda match, owner=obj: self._reference(pkg, owner, match[1], public),
                    value,
                )

    @staticmethod
    def _is_private(base: object) -> bool:
        """Whether a base class comes from a private module or is private itself."""
        path = str(getattr(base, "canonical_path", None) or base)
        return any(part.startswith("_") for part in path.split("."))

    @staticmethod
    def _describe_class_alias(attribute: Attribute) -> None:
        """``name = SomeClass`` in a class's module: a docstring that says so."""
        parent = attribute.parent
        value = str(attribute.value) if attribute.value is not None else ""
        if attribute.is_private or parent is None or not value.isidentifier():
            return
        target = parent.members.get(value)
        if not isinstance(target, Class):
            return
        attribute.docstring = Docstring(
            f"`{attribute.name}` is :class:`{value}`: the same class, by the name you call it "
            f"with. `{attribute.name}(...)` takes the options below.",
            parent=attribute,
        )

    @staticmethod
    def _public_paths(pkg: Module) -> dict[str, str]:
        """Canonical path -> the path it is documented under, for documented names."""
        paths: dict[str, str] = {}
        for module_path in DOCUMENTED_MODULES:
            module = pkg if module_path == pkg.path else pkg[module_path.removeprefix("memscope.")]
            for name in module.exports or ():
                member = module.members.get(str(name))
                if member is None:
                    continue
                target = member.final_target if isinstance(member, Alias) else member
                paths.setdefault(target.path, f"{module_path}.{name}")
        return paths

    @staticmethod
    def _reference(pkg: Module, owner: Object, name: str, public: dict[str, str]) -> str:
        label = f"`{name.rsplit('.', 1)[-1] if name.startswith('memscope.') else name}`"
        scopes = [owner.path]
        parent = owner.parent
        while parent is not None:
            scopes.append(parent.path)
            parent = parent.parent
        for scope in scopes:
            candidate = name if name.startswith("memscope.") else f"{scope}.{name}"
            try:
                found = pkg[candidate.removeprefix("memscope.")]
            except (KeyError, ValueError):
                continue
            target = found.final_target if isinstance(found, Alias) else found
            for canonical, documented in public.items():
                if target.path == canonical or target.path.startswith(canonical + "."):
                    return f"[{label}][{documented}{target.path.removeprefix(canonical)}]"
            return label
        return label
