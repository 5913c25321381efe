"""The catalog's concept-ablation entries carry Kumari et al.'s evaluation strings (their assets/eval.json)."""

from __future__ import annotations

from pathlib import Path

from tad_demo.app.catalog import Catalog

ROOT = Path(__file__).resolve().parents[1]


def test_concepts_carry_target_anchor_and_hard_negatives():
    concepts = {c.name: c for c in Catalog.load(ROOT / "assets" / "catalog.yaml").concepts["sd-1"]}
    snoopy, van_gogh = concepts["snoopy"], concepts["van gogh"]
    assert (snoopy.kind, snoopy.anchor) == ("object", "dog")
    assert snoopy.hard_negatives == ("beagles", "basset hound", "harrier dog", "english foxhound")
    assert (van_gogh.kind, van_gogh.anchor) == ("style", "painting")
    assert van_gogh.hard_negatives == ("monet", "greg rutkowski", "salvador dali", "johannes vermeer", "jeremy mann")
    for c in concepts.values():  # bare lower-case strings, never the concept itself
        assert c.hard_negatives and c.name not in c.hard_negatives
        assert all(h == h.lower().strip() for h in (c.name, c.anchor, *c.hard_negatives))
