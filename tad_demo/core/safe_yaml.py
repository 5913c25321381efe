"""Reading YAML that comes from outside (recipes, grid configs): plain data, no aliases, bounded size.

``yaml.safe_load`` runs no code, but anchors and aliases let 1 KB of text expand into gigabytes of nested lists
("billion laughs"). Recipes written by this project never use them, so they are refused outright; the text is
also capped before the parser sees it.

    data = load_yaml(text, "recipe")          # RecipeError("recipe: YAML aliases (*name) are not accepted …")
"""

from __future__ import annotations

from typing import Any

import yaml

from .errors import TadError
from .limits import HARD


class _NoAliasLoader(yaml.SafeLoader):
    """A SafeLoader that refuses anchors/aliases (each alias would be a second, possibly huge, copy)."""

    def compose_node(self, parent, index):  # noqa: ANN001 - PyYAML's signature
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.constructor.ConstructorError(
                None, None, "YAML aliases (*name) are not accepted here; write the values out", event.start_mark)
        return super().compose_node(parent, index)


def load_yaml(text: str, origin: str, *, error: type[TadError] = TadError, max_chars: int = HARD.yaml_chars) -> Any:
    """Plain data from YAML text of at most ``max_chars`` characters, without aliases; ``error(one line)`` when
    the text is too long, not YAML, or uses aliases."""
    if not isinstance(text, str):
        raise error(f"{origin}: expected YAML text, got {type(text).__name__}")
    if len(text) > max_chars:
        raise error(f"{origin}: {len(text):,} characters of YAML is more than a recipe needs (at most "
                    f"{max_chars:,})")
    try:
        return yaml.load(text, Loader=_NoAliasLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as e:
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise error(f"{origin}: not valid YAML{where}: {problem}") from None


__all__ = ["load_yaml"]
