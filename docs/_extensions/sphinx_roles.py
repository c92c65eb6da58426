"""A griffe extension for the documentation site: Sphinx roles become cross-references.

memscope's docstrings name other objects with Sphinx roles (``:class:`BatchReport```,
``:meth:`trigger_gc_if_needed```), which read well in ``help()`` but which mkdocstrings
would print literally. Before rendering, each role becomes a link to the object's entry in
the API reference when that object is documented there (public names of ``memscope`` and
``memscope.testing`` and their members), and plain code otherwise.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

from griffe import Alias, Extension, Module, Object

ROLE = re.compile(r":(?:class|meth|func|attr|exc|mod|data|obj):`~?([\w.]+)`")
DOCUMENTED_MODULES = ("memscope", "memscope.testing")


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


class SphinxRoles(Extension):
    """Rewrite Sphinx roles in every docstring of the package once it is loaded."""

    def on_package(self, *, pkg: Module, **kwargs: Any) -> None:
        public = self._public_paths(pkg)
        for obj in list(_objects(pkg)):
            if obj.docstring is not None:
                obj.docstring.value = ROLE.sub(
                    lambda match, owner=obj: self._reference(pkg, owner, match[1], public),
                    obj.docstring.value,
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
                paths[target.path] = f"{module_path}.{name}"
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
