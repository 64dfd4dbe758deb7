"""A minimal renderer for the subset of Terraform's template language (templatefile()) that the
swarmstrap cloud-init templates use, so the tests can render them without Terraform.

Supported: literal text with `$${` / `%%{` escapes; `${ expr }` interpolations; `%{ if expr }`,
`%{ else }`, `%{ endif }`, `%{ for x in expr }`, `%{ for k, v in expr }`, `%{ endfor }`; the
right-hand strip marker `~}` (Terraform strips the spaces/tabs after it and at most one newline).
The left-hand strip marker `{~` is rejected on purpose: its exact semantics differ between
interpolations and directives, and the templates do not need it.

Expressions: string/number/bool/null literals, variables, `.attr` and `[index]`, `!`, `==`,
`!=`, `&&`, `||`, parentheses and the functions jsonencode, indent, length, join, upper, lower,
trimspace, base64encode.

Like Terraform, rendering fails when the template references a variable that was not passed
(even in a branch that is not taken). Values render as Terraform renders them: numbers without
a fraction as integers, booleans as true/false. Where a Terraform binary is available,
tests/iac/test_cloudinit.py cross-checks this renderer against Terraform's own templatefile().
"""

from __future__ import annotations

import base64
import json
import re
from dataclasses import dataclass, field


class TemplateError(Exception):
    pass


# ----------------------------------------------------------------------------------------------
# Expressions


_TOKEN_RE = re.compile(
    r"""
    (?P<ws>\s+)
  | (?P<num>\d+(?:\.\d+)?)
  | (?P<str>"(?:[^"\\]|\\.)*")
  | (?P<op>==|!=|&&|\|\||[!()\[\].,])
  | (?P<ident>[A-Za-z_][A-Za-z0-9_-]*)
    """,
    re.VERBOSE,
)


def _tokenize(src: str) -> list[tuple[str, str]]:
    out = []
    pos = 0
    while pos < len(src):
        m = _TOKEN_RE.match(src, pos)
        if not m:
            raise TemplateError(f"unsupported expression syntax at {src[pos:]!r} in {src!r}")
        pos = m.end()
        kind = m.lastgroup
        if kind == "ws":
            continue
        out.append((kind, m.group()))
    return out


@dataclass
class _Expr:
    kind: str
    value: object = None
    args: list = field(default_factory=list)


class _ExprParser:
    def __init__(self, src: str):
        self.src = src
        self.toks = _tokenize(src)
        self.i = 0

    def peek(self):
        return self.toks[self.i] if self.i < len(self.toks) else (None, None)

    def take(self, text=None):
        tok = self.peek()
        if tok[0] is None or (text is not None and tok[1] != text):
            raise TemplateError(f"expected {text or 'a token'} in expression {self.src!r}")
        self.i += 1
        return tok

    def parse(self) -> _Expr:
        e = self.or_()
        if self.i != len(self.toks):
            raise TemplateError(f"unexpected {self.peek()[1]!r} in expression {self.src!r}")
        return e

    def or_(self):
        e = self.and_()
        while self.peek()[1] == "||":
            self.take()
            e = _Expr("or", args=[e, self.and_()])
        return e

    def and_(self):
        e = self.not_()
        while self.peek()[1] == "&&":
            self.take()
            e = _Expr("and", args=[e, self.not_()])
        return e

    def not_(self):
        if self.peek()[1] == "!":
            self.take()
            return _Expr("not", args=[self.not_()])
        return self.cmp()

    def cmp(self):
        e = self.postfix()
        if self.peek()[1] in ("==", "!="):
            op = self.take()[1]
            e = _Expr(op, args=[e, self.postfix()])
        return e

    def postfix(self):
        e = self.primary()
        while self.peek()[1] in (".", "["):
            if self.take()[1] == ".":
                e = _Expr("attr", value=self.take()[1], args=[e])
            else:
                idx = self.or_()
                self.take("]")
                e = _Expr("index", args=[e, idx])
        return e

    def primary(self):
        kind, text = self.take()
        if kind == "num":
            return _Expr("lit", value=float(text) if "." in text else int(text))
        if kind == "str":
            body = text[1:-1]
            if "${" in body or "%{" in body:
                raise TemplateError(f"template strings inside expressions are not supported: {text}")
            return _Expr("lit", value=json.loads(text))
        if text == "(":
            e = self.or_()
            self.take(")")
            return e
        if kind == "ident":
            if text in ("true", "false"):
                return _Expr("lit", value=(text == "true"))
            if text == "null":
                return _Expr("lit", value=None)
            if self.peek()[1] == "(":
                self.take("(")
                args = []
                if self.peek()[1] != ")":
                    args.append(self.or_())
                    while self.peek()[1] == ",":
                        self.take()
                        args.append(self.or_())
                self.take(")")
                return _Expr("call", value=text, args=args)
            return _Expr("var", value=text)
        raise TemplateError(f"unexpected {text!r} in expression {self.src!r}")


def tf_jsonencode(v) -> str:
    """Terraform's jsonencode: compact, HTML-safe escapes like Go's encoding/json."""
    s = json.dumps(v, ensure_ascii=False, separators=(",", ":"), sort_keys=True)
    return (
        s.replace("<", "\\u003c")
        .replace(">", "\\u003e")
        .replace("&", "\\u0026")
        .replace("\u2028", "\\u2028")
        .replace("\u2029", "\\u2029")
    )


def tf_tostring(v) -> str:
    """How an interpolation renders a value."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return str(int(v)) if v.is_integer() else repr(v)
    if isinstance(v, str):
        return v
    if v is None:
        raise TemplateError("cannot interpolate a null value")
    raise TemplateError(f"cannot interpolate a value of type {type(v).__name__}: {v!r}")


def _indent(n, s):
    return s.replace("\n", "\n" + " " * int(n))


_FUNCS = {
    "jsonencode": tf_jsonencode,
    "indent": _indent,
    "length": len,
    "join": lambda sep, xs: sep.join(tf_tostring(x) for x in xs),
    "upper": lambda s: s.upper(),
    "lower": lambda s: s.lower(),
    "trimspace": lambda s: s.strip(),
    # Terraform's chomp: every trailing \n, \r\n or \r.
    "chomp": lambda s: re.sub(r"(?:\r\n|\r|\n)+\Z", "", s),
    "base64encode": lambda s: base64.b64encode(s.encode()).decode(),
}


def _vars_of(e: _Expr, out: set):
    if e.kind == "var":
        out.add(e.value)
    for a in e.args:
        _vars_of(a, out)


def _eval(e: _Expr, scope: dict):
    k = e.kind
    if k == "lit":
        return e.value
    if k == "var":
        if e.value not in scope:
            raise TemplateError(f"vars map does not contain key {e.value!r}")
        return scope[e.value]
    if k == "attr":
        base = _eval(e.args[0], scope)
        if not isinstance(base, dict) or e.value not in base:
            raise TemplateError(f"value has no attribute {e.value!r}")
        return base[e.value]
    if k == "index":
        base, idx = _eval(e.args[0], scope), _eval(e.args[1], scope)
        try:
            return base[idx]
        except (KeyError, IndexError, TypeError) as err:
            raise TemplateError(f"invalid index {idx!r}") from err
    if k == "not":
        v = _eval(e.args[0], scope)
        if not isinstance(v, bool):
            raise TemplateError(f"'!' needs a bool, got {v!r}")
        return not v
    if k in ("and", "or"):
        a, b = (_eval(x, scope) for x in e.args)
        if not isinstance(a, bool) or not isinstance(b, bool):
            raise TemplateError(f"'{k}' needs bools, got {a!r} and {b!r}")
        return (a and b) if k == "and" else (a or b)
    if k in ("==", "!="):
        a, b = (_eval(x, scope) for x in e.args)
        return (a == b and type(a) is type(b)) if k == "==" else not (a == b and type(a) is type(b))
    if k == "call":
        if e.value not in _FUNCS:
            raise TemplateError(f"function {e.value}() is not supported by this renderer")
        return _FUNCS[e.value](*[_eval(a, scope) for a in e.args])
    raise TemplateError(f"bad expression node {k}")


# ----------------------------------------------------------------------------------------------
# Templates


@dataclass
class _Node:
    kind: str  # text | interp | if | for
    text: str = ""
    expr: _Expr | None = None
    then: list = field(default_factory=list)
    els: list = field(default_factory=list)
    names: tuple = ()


_OPEN_RE = re.compile(r"(\$\$\{|%%\{|\$\{|%\{)")


def _lex(src: str):
    """Yields ("text", s) and ("interp"|"directive", body, strip_right) items."""
    pos = 0
    buf = []
    while True:
        m = _OPEN_RE.search(src, pos)
        if not m:
            buf.append(src[pos:])
            break
        buf.append(src[pos : m.start()])
        tok = m.group()
        if tok in ("$${", "%%{"):
            buf.append(tok[1:])
            pos = m.end()
            continue
        end = _find_close(src, m.end())
        body = src[m.end() : end]
        pos = end + 1
        if body.startswith("~"):
            raise TemplateError("the left strip marker '{~' is not supported by this renderer")
        strip = body.endswith("~")
        if strip:
            body = body[:-1]
        yield ("text", "".join(buf))
        buf = []
        yield ("interp" if tok == "${" else "directive", body.strip(), strip)
    yield ("text", "".join(buf))


def _find_close(src: str, start: int) -> int:
    """Index of the '}' that closes a sequence opened just before start (skips strings)."""
    depth = 0
    i = start
    while i < len(src):
        c = src[i]
        if c == '"':
            i += 1
            while i < len(src) and src[i] != '"':
                i += 2 if src[i] == "\\" else 1
        elif c in "({[":
            depth += 1
        elif c in ")]":
            depth -= 1
        elif c == "}":
            if depth == 0:
                return i
            depth -= 1
        i += 1
    raise TemplateError(f"unterminated interpolation or directive starting at offset {start}")


_STRIP_RE = re.compile(r"^[ \t]*(\r?\n)?")


def _parse(src: str) -> list:
    items = list(_lex(src))
    # Apply right strip markers to the following text.
    for i, it in enumerate(items):
        if it[0] != "text" and it[2] and i + 1 < len(items) and items[i + 1][0] == "text":
            items[i + 1] = ("text", _STRIP_RE.sub("", items[i + 1][1], count=1))
    root: list = []
    stack = [("root", root, None)]
    for it in items:
        cur = stack[-1][1]
        if it[0] == "text":
            if it[1]:
                cur.append(_Node("text", text=it[1]))
        elif it[0] == "interp":
            cur.append(_Node("interp", expr=_ExprParser(it[1]).parse()))
        else:
            body = it[1]
            word = body.split(None, 1)[0] if body else ""
            if word == "if":
                node = _Node("if", expr=_ExprParser(body[2:]).parse())
                cur.append(node)
                stack.append(("if", node.then, node))
            elif word == "else":
                kind, _, node = stack[-1]
                if kind != "if":
                    raise TemplateError("%{ else } without %{ if }")
                stack[-1] = ("else", node.els, node)
            elif word == "endif":
                if stack[-1][0] not in ("if", "else"):
                    raise TemplateError("%{ endif } without %{ if }")
                stack.pop()
            elif word == "for":
                m = re.match(r"for\s+([A-Za-z_]\w*)\s*(?:,\s*([A-Za-z_]\w*)\s*)?in\s+(.+)$", body, re.S)
                if not m:
                    raise TemplateError(f"bad for directive: {body!r}")
                names = (m.group(1), m.group(2)) if m.group(2) else (m.group(1),)
                node = _Node("for", expr=_ExprParser(m.group(3)).parse(), names=names)
                cur.append(node)
                stack.append(("for", node.then, node))
            elif word == "endfor":
                if stack[-1][0] != "for":
                    raise TemplateError("%{ endfor } without %{ for }")
                stack.pop()
            else:
                raise TemplateError(f"unsupported directive %{{ {body} }}")
    if len(stack) != 1:
        raise TemplateError(f"unclosed %{{ {stack[-1][0]} }} directive")
    return root


def _template_vars(nodes, bound=frozenset()) -> set:
    out: set = set()
    for n in nodes:
        if n.expr is not None:
            vs: set = set()
            _vars_of(n.expr, vs)
            out |= vs - bound
        if n.kind == "for":
            out |= _template_vars(n.then, bound | set(n.names))
        else:
            out |= _template_vars(n.then, bound) | _template_vars(n.els, bound)
    return out


def _render(nodes, scope, out):
    for n in nodes:
        if n.kind == "text":
            out.append(n.text)
        elif n.kind == "interp":
            out.append(tf_tostring(_eval(n.expr, scope)))
        elif n.kind == "if":
            cond = _eval(n.expr, scope)
            if not isinstance(cond, bool):
                raise TemplateError(f"%{{ if }} condition must be a bool, got {cond!r}")
            _render(n.then if cond else n.els, scope, out)
        elif n.kind == "for":
            coll = _eval(n.expr, scope)
            pairs = sorted(coll.items()) if isinstance(coll, dict) else list(enumerate(coll))
            for k, v in pairs:
                inner = dict(scope)
                if len(n.names) == 2:
                    inner[n.names[0]], inner[n.names[1]] = k, v
                else:
                    inner[n.names[0]] = v
                _render(n.then, inner, out)


def template_variables(src: str) -> set:
    """Every variable the template references (what templatefile() requires in its vars map)."""
    return _template_vars(_parse(src))


def render(src: str, variables: dict) -> str:
    nodes = _parse(src)
    missing = _template_vars(nodes) - set(variables)
    if missing:
        raise TemplateError(f"vars map does not contain key(s) {sorted(missing)}")
    out: list = []
    _render(nodes, dict(variables), out)
    return "".join(out)


def render_file(path, variables: dict) -> str:
    with open(path, encoding="utf-8") as f:
        return render(f.read(), variables)
