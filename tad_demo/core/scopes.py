"""Scopes: which keys of a task vector a recipe keeps — a named scope or a small regular expression.

A scope comes from outside (a recipe, a grid config, the command line), and a regular expression can take
exponential time ("catastrophic backtracking": ``^(?:[\\w.]|[\\w.])*!`` on one 80-character key runs for ever, and
Python's ``re`` holds the GIL while it does, so a server would stop answering). So a scope is checked before
anything matches it — at most ``HARD.scope`` characters, no backreferences, no repeated group that itself
repeats or alternates — and every match runs in the ``regex`` engine with a time bound
(``HARD.scope_match_s``) and without holding the GIL.

    matcher = scope_matcher("cross_attn_kv")    # named: attn2.to_k / attn2.to_v
    matcher("unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight")  # True
    check_scope("^(?:[\\w.]|[\\w.])*!")         # TaskVectorError: scope: a repeated group that repeats …
"""

from __future__ import annotations

from collections.abc import Callable

import regex

from .errors import TaskVectorError
from .limits import HARD

# Named scopes: a component or a key pattern (regular expression searched in each key).
SCOPES: dict[str, str] = {
    "unet": r"^unet\.",
    "text_encoder": r"^text_encoder\.",
    "cross_attn_kv": r"attn2\.to_[kv]\.",       # what Kumari et al. fine-tune ("kv" mode)
    "cross_attn": r"attn2\.",
    "self_attn": r"attn1\.",
}

_QUANTIFIERS = "*+?{"


def _nested_repetition(pattern: str) -> bool:
    """True when a group that is repeated (``(…)*``, ``(…)+``, ``(…){n,m}``) contains a quantifier or an
    alternation: the shape behind catastrophic backtracking."""
    stack: list[bool] = []          # per open group: has it a quantifier or '|' inside?
    i, n = 0, len(pattern)
    in_class = False
    while i < n:
        ch = pattern[i]
        if ch == "\\":
            i += 2
            continue
        if in_class:
            in_class = ch != "]"
        elif ch == "[":
            in_class = True
            if pattern[i + 1:i + 2] == "]":
                i += 1
        elif ch == "(":
            stack.append(False)
        elif ch == ")":
            inner = stack.pop() if stack else False
            repeated = i + 1 < n and pattern[i + 1] in "*+{"
            if inner and repeated:
                return True
            if stack and (inner or repeated):
                stack[-1] = True
        elif ch in _QUANTIFIERS or ch == "|":
            if stack:
                stack[-1] = True
        i += 1
    return False


def check_scope(scope: object) -> str:
    """The regular expression of a scope (named or given), refused with a one-line :class:`TaskVectorError`
    unless it is short, compiles, has no backreferences and no nested repetition."""
    if not isinstance(scope, str) or not scope.strip():
        raise TaskVectorError(f"scope: expected a named scope ({', '.join(SCOPES)}) or a regular expression, got "
                              f"{type(scope).__name__}")
    if scope in SCOPES:
        return SCOPES[scope]
    if len(scope) > HARD.scope:
        raise TaskVectorError(f"scope: a {len(scope)}-character regular expression; at most {HARD.scope} (or a named "
                              f"scope: {', '.join(SCOPES)})")
    if regex.search(r"\\[1-9]|\(\?P=|\\g<|\(\?[<]?[=!]|\(\?>|\(\?\(|\(\?R|\(\?\d", scope, timeout=1):
        raise TaskVectorError("scope: backreferences, lookarounds, recursion and conditionals are not accepted in a "
                              "scope's regular expression")
    if _nested_repetition(scope):
        raise TaskVectorError("scope: a repeated group that repeats or alternates inside (like (a|b)* or (a+)+) can "
                              "take exponential time; write the pattern without it, or use a named scope ("
                              f"{', '.join(SCOPES)})")
    try:
        regex.compile(scope, regex.VERSION0)
    except (regex.error, ValueError, OverflowError) as e:
        raise TaskVectorError(f"scope {scope!r} is neither a known scope ({', '.join(SCOPES)}) nor a valid regular "
                              f"expression: {e}") from None
    return scope


def scope_matcher(scope: object) -> Callable[[str], bool]:
    """``key -> bool`` for a checked scope; each match is time-bounded (``HARD.scope_match_s``) and releases the
    GIL, so even a pattern that slipped through the shape check cannot stall other threads."""
    rx = regex.compile(check_scope(scope), regex.VERSION0)

    def matches(key: str) -> bool:
        try:
            return rx.search(key, timeout=HARD.scope_match_s, concurrent=True) is not None
        except TimeoutError:
            raise TaskVectorError(f"scope {scope!r}: matching one key took more than {HARD.scope_match_s:g} s; "
                                  "simplify the regular expression or use a named scope") from None

    return matches


__all__ = ["SCOPES", "check_scope", "scope_matcher"]
