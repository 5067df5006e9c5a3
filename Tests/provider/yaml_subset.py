"""A small YAML loader for the subset the symbol configs use, so tests do not need PyYAML.

Supported: block sequences and mappings, one-line flow sequences and mappings, plain,
single- and double-quoted scalars (one line each), block scalars (``|`` and ``>`` with
``-``/``+`` chomping, folded the way PyYAML folds them), comments, and the YAML 1.1 scalar
types PyYAML resolves (null, bool, int, float). Anything else raises ``YamlSubsetError``
naming the line: a config using more YAML than this fails loudly instead of being misread.
``Tests/provider/test_exprs.py`` checks the result against PyYAML where it is installed.
"""

import re

__all__ = ["YamlSubsetError", "load", "load_file"]


class YamlSubsetError(ValueError):
    pass


_NULL = re.compile(r"^(?:~|null|Null|NULL|)$")
_BOOL = {w: True for w in ("yes", "Yes", "YES", "true", "True", "TRUE", "on", "On", "ON")}
_BOOL.update({w: False for w in ("no", "No", "NO", "false", "False", "FALSE", "off", "Off", "OFF")})
_INT = re.compile(r"^[-+]?(?:0|[1-9][0-9_]*)$")
_FLOAT = re.compile(r"^[-+]?(?:[0-9][0-9_]*)?\.[0-9_]*(?:[eE][-+][0-9]+)?$")
_INF = re.compile(r"^[-+]?\.(?:inf|Inf|INF)$")
_NAN = re.compile(r"^\.(?:nan|NaN|NAN)$")
_ESCAPES = {"0": "\0", "a": "\a", "b": "\b", "t": "\t", "n": "\n", "v": "\v", "f": "\f",
            "r": "\r", "e": "\x1b", " ": " ", '"': '"', "/": "/", "\\": "\\", "N": "\x85",
            "_": "\xa0", "L": "\u2028", "P": "\u2029"}


def _plain(text):
    if _NULL.match(text):
        return None
    if text in _BOOL:
        return _BOOL[text]
    if _INT.match(text):
        return int(text.replace("_", ""))
    if _FLOAT.match(text) and text not in (".", "+.", "-."):
        return float(text.replace("_", ""))
    if _INF.match(text):
        return float("-inf") if text.startswith("-") else float("inf")
    if _NAN.match(text):
        return float("nan")
    return text


class _Line:
    __slots__ = ("no", "indent", "text", "raw")

    def __init__(self, no, raw):
        self.no = no
        self.raw = raw
        stripped = raw.lstrip(" ")
        self.indent = len(raw) - len(stripped)
        self.text = stripped


class _Parser:
    def __init__(self, text, name):
        self.name = name
        self.lines = [_Line(i + 1, raw.rstrip("\r")) for i, raw in enumerate(text.split("\n"))]
        self.pos = 0

    def error(self, line, msg):
        no = line.no if line is not None else len(self.lines)
        return YamlSubsetError("%s:%d: %s" % (self.name, no, msg))

    # ---------------------------------------------------------------- lines

    @staticmethod
    def _blank(line):
        t = line.text
        return t == "" or t.startswith("#")

    def _peek(self):
        while self.pos < len(self.lines) and self._blank(self.lines[self.pos]):
            self.pos += 1
        return self.lines[self.pos] if self.pos < len(self.lines) else None

    # ---------------------------------------------------------------- scanning helpers

    def _scalar_end(self, s, i, flow, line):
        """End of a scalar starting at s[i] (quoted or plain) and its value."""
        if i < len(s) and s[i] == "'":
            out = []
            j = i + 1
            while True:
                if j >= len(s):
                    raise self.error(line, "unterminated single-quoted scalar")
                if s[j] == "'":
                    if j + 1 < len(s) and s[j + 1] == "'":
                        out.append("'")
                        j += 2
                        continue
                    return j + 1, "".join(out)
                out.append(s[j])
                j += 1
        if i < len(s) and s[i] == '"':
            out = []
            j = i + 1
            while True:
                if j >= len(s):
                    raise self.error(line, "unterminated double-quoted scalar")
                c = s[j]
                if c == '"':
                    return j + 1, "".join(out)
                if c == "\\":
                    if j + 1 >= len(s):
                        raise self.error(line, "line break in a double-quoted scalar")
                    e = s[j + 1]
                    if e in _ESCAPES:
                        out.append(_ESCAPES[e])
                        j += 2
                    elif e in "xuU":
                        n = {"x": 2, "u": 4, "U": 8}[e]
                        out.append(chr(int(s[j + 2:j + 2 + n], 16)))
                        j += 2 + n
                    else:
                        raise self.error(line, "unknown escape \\%s" % e)
                    continue
                out.append(c)
                j += 1
        # plain
        j = i
        stops = ",[]{}" if flow else ""
        while j < len(s):
            c = s[j]
            if c in stops:
                break
            if c == ":" and (j + 1 == len(s) or s[j + 1] in " ," + ("]}" if flow else "")):
                break
            if c == "#" and j > i and s[j - 1] == " ":
                break
            j += 1
        return j, _plain(s[i:j].strip())

    def _skip_spaces(self, s, i):
        while i < len(s) and s[i] == " ":
            i += 1
        return i

    def _flow(self, s, i, line):
        """A flow collection or scalar at s[i]; returns (end, value)."""
        i = self._skip_spaces(s, i)
        if i >= len(s):
            raise self.error(line, "flow collection continues on the next line (not supported)")
        if s[i] == "[":
            out = []
            i = self._skip_spaces(s, i + 1)
            if i < len(s) and s[i] == "]":
                return i + 1, out
            while True:
                i, v = self._flow(s, i, line)
                out.append(v)
                i = self._skip_spaces(s, i)
                if i < len(s) and s[i] == ",":
                    i = self._skip_spaces(s, i + 1)
                    continue
                if i < len(s) and s[i] == "]":
                    return i + 1, out
                raise self.error(line, "expected , or ] in a flow sequence")
        if s[i] == "{":
            out = {}
            i = self._skip_spaces(s, i + 1)
            if i < len(s) and s[i] == "}":
                return i + 1, out
            while True:
                i, k = self._scalar_end(s, self._skip_spaces(s, i), True, line)
                i = self._skip_spaces(s, i)
                if i >= len(s) or s[i] != ":":
                    raise self.error(line, "expected : in a flow mapping")
                i, v = self._flow(s, i + 1, line)
                out[k] = v
                i = self._skip_spaces(s, i)
                if i < len(s) and s[i] == ",":
                    i = self._skip_spaces(s, i + 1)
                    continue
                if i < len(s) and s[i] == "}":
                    return i + 1, out
                raise self.error(line, "expected , or } in a flow mapping")
        return self._scalar_end(s, i, True, line)

    def _rest_is_empty(self, s, i, line):
        i = self._skip_spaces(s, i)
        if i < len(s) and s[i] != "#":
            raise self.error(line, "unexpected text after a value: %r" % s[i:])

    def _inline_value(self, s, i, line, indent):
        """The value after 'key:' or '- ' on the same line (or below it)."""
        i = self._skip_spaces(s, i)
        if i >= len(s) or s[i] == "#":
            nxt = self._peek()
            if nxt is None or nxt.indent < indent or (nxt.indent == indent
                                                      and not nxt.text.startswith("- ")
                                                      and nxt.text != "-"):
                return None
            return self._block(nxt.indent)
        c = s[i]
        if c in "|>":
            return self._block_scalar(s[i:], line, indent)
        if c in "[{":
            end, v = self._flow(s, i, line)
            self._rest_is_empty(s, end, line)
            return v
        end, v = self._scalar_end(s, i, False, line)
        if end < len(s) and s[end] == ":":
            raise self.error(line, "a mapping inside a value on one line is not supported")
        self._rest_is_empty(s, end, line)
        return v

    def _block_scalar(self, header, line, parent_indent):
        m = re.match(r"^([|>])([-+]?)\s*(?:#.*)?$", header)
        if not m:
            raise self.error(line, "unsupported block scalar header %r" % header)
        folded, chomp = m.group(1) == ">", m.group(2)
        raw = []
        j = self.pos
        while j < len(self.lines):
            ln = self.lines[j]
            if ln.text == "":
                raw.append(ln)
                j += 1
                continue
            if ln.indent <= parent_indent:
                break
            raw.append(ln)
            j += 1
        content = [ln for ln in raw if ln.text != ""]
        # trailing blank lines belong to the scalar only up to the last content line
        while raw and raw[-1].text == "":
            raw.pop()
            j -= 1
        # PyYAML: blank lines after the scalar count for "+" chomping only; keep it simple
        trailing = 0
        k = j
        while k < len(self.lines) and self.lines[k].text == "":
            trailing += 1
            k += 1
        self.pos = j
        if not content:
            return ""
        indent = content[0].indent
        chunks = []
        for n, ln in enumerate(raw):
            if ln.text != "" and ln.indent < indent:
                raise self.error(ln, "block scalar line less indented than its first line")
        i = 0
        while i < len(raw):
            ln = raw[i]
            text = ln.raw[indent:]
            chunks.append(text)
            leading_non_space = text[:1] not in (" ", "\t")
            breaks = 0
            i += 1
            while i < len(raw) and raw[i].text == "":
                breaks += 1
                i += 1
            if i < len(raw):
                nxt = raw[i].raw[indent:]
                if folded and leading_non_space and nxt[:1] not in (" ", "\t"):
                    chunks.append(" " if not breaks else "\n" * breaks)
                else:
                    chunks.append("\n" * (breaks + 1))
        out = "".join(chunks)
        if chomp == "-":
            return out
        if chomp == "+":
            return out + "\n" * (1 + trailing)
        return out + "\n"

    # ---------------------------------------------------------------- blocks

    def _block(self, indent):
        line = self._peek()
        if line is None:
            return None
        if line.indent != indent:
            raise self.error(line, "bad indentation")
        if line.text.startswith("- ") or line.text == "-":
            return self._sequence(indent)
        return self._mapping(indent)

    def _sequence(self, indent):
        out = []
        while True:
            line = self._peek()
            if line is None or line.indent < indent:
                return out
            if line.indent > indent:
                raise self.error(line, "bad indentation in a sequence")
            if not (line.text.startswith("- ") or line.text == "-"):
                return out
            self.pos += 1
            body = line.text[1:]
            rest = body.lstrip(" ")
            col = line.indent + 1 + (len(body) - len(rest))
            if rest and not rest.startswith("#") and self._is_key(rest, line):
                # "- key: value": a mapping whose first key is on the dash's line
                out.append(self._mapping(col, first=_Line(line.no, " " * col + rest)))
            else:
                out.append(self._inline_value(line.text, 1, line, indent + 1 if rest else indent))

    def _is_key(self, s, line):
        if s[0] in "[{|>":
            return False
        end, _ = self._scalar_end(s, 0, False, line)
        return end < len(s) and s[end] == ":"

    def _mapping(self, indent, first=None):
        out = {}
        while True:
            if first is not None:
                line, first = first, None
            else:
                line = self._peek()
                if line is None or line.indent < indent:
                    return out
                if line.indent > indent:
                    raise self.error(line, "bad indentation in a mapping")
                if line.text.startswith("- "):
                    return out
                self.pos += 1
            s = line.text
            end, key = self._scalar_end(s, 0, False, line)
            if end >= len(s) or s[end] != ":":
                raise self.error(line, "expected 'key: value'")
            if key in out:
                raise self.error(line, "duplicate key %r" % (key,))
            out[key] = self._inline_value(s, end + 1, line, indent)


def load(text, name="<yaml>"):
    p = _Parser(text, name)
    first = p._peek()
    if first is None:
        return None
    if first.indent != 0:
        raise p.error(first, "document must start at column 0")
    value = p._block(0)
    rest = p._peek()
    if rest is not None:
        raise p.error(rest, "unexpected line")
    return value


def load_file(path):
    with open(path, encoding="utf-8") as f:
        return load(f.read(), path)
