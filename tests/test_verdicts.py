"""No notebook sentence may be guarded by a check that cannot fail (STYLE.md, habit 17).

Every ``nb.say(text, **checks)`` in every notebook is read statically (an AST of all its code
cells) and a check is refused when it

(a) is a constant: it reads no variable at all (``ok=True``, ``ok=refit`` for a parameter
    ``refit = True``, ``ok=1 == 1``);
(b) compares an expression with itself (``ok=x == x``);
(c) compares a name with the very expression it was assigned from
    (``x = f(a)`` … ``ok=x == f(a)``; names are replaced by their one assignment, recursively);
(d) reads only variables the sentence itself interpolates: it re-reads the sentence's own
    numbers (``say(f"{peak} is the top", ok=peak == curve.max())`` where ``peak`` came from
    ``curve`` and ``curve`` is in the text too) instead of comparing them with a value computed
    another way, typically from the run's files on disk.

A check held in a variable first (``ok = a == b`` … ``ok=ok``) is judged as its expression.
Aliases (``t = decision.table``) count as what they name, in the check and in the sentence.
The unit cases below prove each form is caught and that honest checks pass.
"""

from __future__ import annotations

import ast
import builtins
import copy
import json
from pathlib import Path

import pytest

from conftest import REPO

NOTEBOOKS = sorted((REPO / "notebooks").glob("[0-9][0-9]_*.ipynb"))
BUILTINS = frozenset(dir(builtins)) | {"globals"}
OPAQUE = object()  # a name bound more than once, or by a loop, unpacking, import …


def _bindings(tree: ast.AST) -> dict[str, object]:
    """Each name's one assigned expression, or OPAQUE when it is bound any other way."""
    seen: dict[str, list] = {}

    def bind(target, value):
        if isinstance(target, ast.Name):
            seen.setdefault(target.id, []).append(value)
        elif isinstance(target, ast.Tuple | ast.List):
            values = value.elts if isinstance(value, ast.Tuple | ast.List) else None
            if values is not None and len(values) == len(target.elts):
                for t, v in zip(target.elts, values, strict=True):
                    bind(t, v)
            else:
                for t in target.elts:
                    bind(t, OPAQUE)

    for node in ast.walk(tree):
        if isinstance(node, ast.Assign):
            for target in node.targets:
                bind(target, node.value)
        elif isinstance(node, ast.AnnAssign | ast.AugAssign | ast.NamedExpr):
            bind(node.target, OPAQUE)
        elif isinstance(node, ast.For | ast.comprehension):
            bind(node.target, OPAQUE)
        elif isinstance(node, ast.withitem) and node.optional_vars is not None:
            bind(node.optional_vars, OPAQUE)
        elif isinstance(node, ast.Import | ast.ImportFrom):
            for alias in node.names:
                seen.setdefault((alias.asname or alias.name).split(".")[0], []).append(OPAQUE)
    return {name: vs[0] if len(vs) == 1 else OPAQUE for name, vs in seen.items()}


def _imported(tree: ast.AST) -> set[str]:
    return {
        (alias.asname or alias.name).split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in node.names
    }


def _variables(expr: ast.AST, ignore: set[str]) -> set[str]:
    """Names an expression reads, less builtins, modules and names it binds itself."""
    local = {
        n.id for n in ast.walk(expr) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)
    }
    local |= {a.arg for n in ast.walk(expr) if isinstance(n, ast.Lambda) for a in n.args.args}
    return (
        {n.id for n in ast.walk(expr) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}
        - local
        - ignore
        - BUILTINS
    )


class _Expand(ast.NodeTransformer):
    """Replace each name by its one assigned expression (a bounded number of times)."""

    def __init__(self, bindings, only=None, depth: int = 6):
        self.bindings, self.only, self.depth = bindings, only, depth

    def visit_Name(self, node):
        value = self.bindings.get(node.id, OPAQUE)
        if not isinstance(node.ctx, ast.Load) or value is OPAQUE or self.depth == 0:
            return node
        if self.only is not None and not self.only(value):
            return node
        return _Expand(self.bindings, self.only, self.depth - 1).visit(copy.deepcopy(value))


def _is_check(value) -> bool:
    """A boolean expression stored ahead of the sentence (``ok = a == b``), or an alias."""
    return (
        _is_alias(value)
        or isinstance(value, ast.Compare | ast.BoolOp)
        or (isinstance(value, ast.UnaryOp) and isinstance(value.op, ast.Not))
    )


def _is_alias(value) -> bool:
    """A name for part of another value, computing nothing (``t = decision.table``)."""
    return isinstance(value, ast.Name | ast.Attribute | ast.Subscript)


def _say_calls(tree: ast.AST):
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and node.args
            and (
                (isinstance(node.func, ast.Attribute) and node.func.attr == "say")
                or (isinstance(node.func, ast.Name) and node.func.id == "say")
            )
        ):
            yield node


def verdict_problems(source: str) -> list[str]:
    """``name: why`` for every tautological check of every ``say`` call in ``source``."""
    tree = ast.parse(source)
    bindings, modules = _bindings(tree), _imported(tree)
    problems = []
    for call in _say_calls(tree):
        text = _Expand(bindings, only=_is_alias).visit(copy.deepcopy(call.args[0]))
        said = _variables(text, modules)
        for kw in call.keywords:
            if kw.arg is None:
                problems.append("**checks: a check must be named where the sentence is said")
                continue
            as_check = _Expand(bindings, only=_is_check).visit(copy.deepcopy(kw.value))
            full = _Expand(bindings).visit(copy.deepcopy(kw.value))
            read = _variables(as_check, modules)
            if not _variables(full, modules):
                problems.append(f"{kw.arg}: a constant, it reads no result")
            elif (why := _same_sides(as_check, bindings)) is not None:
                problems.append(f"{kw.arg}: compares {why} with itself (its own definition)")
            elif read <= said:
                problems.append(
                    f"{kw.arg}: reads only the sentence's own values ({', '.join(sorted(read))})"
                    "; compare them with values computed independently"
                )
    return problems


def _same_sides(check: ast.AST, bindings) -> str | None:
    """The first side of a comparison in the check that, every name replaced by its
    definition, is the same expression as the side it is compared with."""
    for node in ast.walk(check):
        if isinstance(node, ast.Compare):
            sides = [
                _Expand(bindings).visit(copy.deepcopy(s)) for s in (node.left, *node.comparators)
            ]
            for a, b in zip(sides, sides[1:], strict=False):
                if ast.dump(a) == ast.dump(b):
                    return ast.unparse(a)[:60]
    return None


def notebook_source(path: Path) -> str:
    cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    return "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_no_notebook_check_restates_its_sentence(path):
    assert verdict_problems(notebook_source(path)) == []


def test_every_notebook_has_checked_sentences():
    """The rule has something to read: each notebook says something under a check."""
    for path in NOTEBOOKS:
        tree = ast.parse(notebook_source(path))
        assert any(call.keywords for call in _say_calls(tree)), path.stem


FLAGGED = {
    "constant": 'nb.say("All good.", ok=True)',
    "constant parameter": 'refit = True\nnb.say("Refit.", ok=refit)',
    "constant comparison": 'nb.say("x", ok=len([1]) == 1)',
    "same sides": 'nb.say(f"{a:.2%}", ok=curve.max() == curve.max())',
    "chained same sides": 'nb.say(f"{a}", ok=0 < curve.max() == curve.max())',
    "its definition": 'peak = max(curve)\nnb.say(f"peak {peak}", ok=peak == max(curve))',
    "definition two steps back": (
        "top = curve.max()\npeak = top\nnb.say(f'{peak}', peak_is_max=peak == curve.max())"
    ),
    "unpacked definition": (
        "peak, last = curve.idxmax(), curve.index.max()\n"
        "nb.say(f'{peak}', ok=curve.idxmax() == peak)"
    ),
    "sentence's own numbers": (
        "peak = curve.idxmax()\n"
        "nb.say(f'peaks at {peak} ({curve[peak]:.2%})', peak_is_max=curve[peak] == curve.max())"
    ),
    "counted as said": (
        "rising = [v for v in names if curves[v].idxmax() == 3]\n"
        "nb.say(f'{len(rising)} of {len(names)} rise', rising_counted=len(rising) <= len(names))"
    ),
    "check held in a variable": ("ok = gap > 0\nnb.say(f'ahead by {gap:.2%}', ahead=ok)"),
    "an alias of the sentence's value": (
        "t = decision.table\nd = decision\n"
        "nb.say(t.loc['x', 'acc'], chosen_ok=bool(d.table.loc[d.chosen, 'within_noise']))"
    ),
    "sentence through a method": (
        "nb.say(decision.verdict(), chosen_ok=bool(decision.table.loc[decision.chosen, 'x']))"
    ),
    "unnamed checks": 'nb.say("x", **checks)',
}

HONEST = {
    "against the files": (
        "peak = mean.val_acc.idxmax()\n"
        "on_disk = pd.concat(pd.read_csv(r) for r in runs)\n"
        "nb.say(f'peaks at {peak}', peak_matches_the_files=on_disk.val_acc.idxmax() == peak)"
    ),
    "no check": 'nb.say(f"{n} rows.")',
    "recomputed another way": (
        "from digit_utils import stats\n"
        "share = stats.accuracy(pred == y)['accuracy']\n"
        "nb.say(f'{share:.2%}', ok=abs(share - metrics['val_acc']) < 1e-6)"
    ),
    "comprehension names are not variables": (
        "nb.say(f'{unchanged}', same=all((g(n) == images).all() for n in unchanged))"
    ),
    "rebound names are not expanded": (
        "x = f(a)\nx = x[keep]\nnb.say(f'{x}', ok=x == f(a)[keep])"
    ),
}


@pytest.mark.parametrize("source", FLAGGED.values(), ids=FLAGGED.keys())
def test_the_rule_catches(source):
    assert len(verdict_problems(source)) == 1


@pytest.mark.parametrize("source", HONEST.values(), ids=HONEST.keys())
def test_the_rule_passes(source):
    assert verdict_problems(source) == []
