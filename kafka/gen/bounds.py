#!/usr/bin/env python3
"""Generates kafka/src/bounds_generated.rs: the pre-pass walkers of `bounds.rs`.

Re-run by hand after changing `SUPPORTED` in kafka/src/lib.rs or the kafka-protocol
version in kafka/Cargo.toml, from the repository root:

    python3 kafka/gen/bounds.py            # finds the crate in ~/.cargo/registry
    python3 kafka/gen/bounds.py --src DIR  # or: DIR = kafka-protocol's source root

then `cargo test -p ringmq-kafka bounds` and commit the generated file. It needs
`rustfmt` on the PATH (the output is formatted, so `cargo fmt` leaves it alone).

How: the request types of kafka-protocol (`src/messages/*_request.rs`, and
`request_header.rs`) are generated code of a rigid shape. For every type this reads

- the struct definition: each field's Rust type (`Option<...>` means nullable, the
  element type of `Vec<...>`) and its "Supported API versions" doc line;
- the body of `impl Decodable`: a small recursive-descent parser turns it into a tree
  of statements (version ifs, `let x = <decode>`, the tagged-field loop with its
  `match tag`, `bail!`s) and expressions (`types::X.decode(buf)?`, arrays, structs,
  defaults that read nothing).

It then writes one walk function per type that mirrors the decode body statement by
statement, calling the walker primitives of `bounds.rs` instead of decoding, and
(for the tests) one function per type that builds a sample value with two elements in
every array its version has, and one that sums the capacities of a decoded value's
vectors. Anything of a shape it does not know stops the generator with an error: the
generated walkers are exact or absent, never approximate.
"""

import argparse
import glob
import os
import re
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, "..", ".."))
LIB_RS = os.path.join(ROOT, "kafka", "src", "lib.rs")
CARGO_TOML = os.path.join(ROOT, "kafka", "Cargo.toml")
OUT = os.path.join(ROOT, "kafka", "src", "bounds_generated.rs")

CRATE_VERSION = "0.18.0"

FIXED_BYTES = {
    "Boolean": 1,
    "Int8": 1,
    "Int16": 2,
    "UInt16": 2,
    "Int32": 4,
    "UInt32": 4,
    "Int64": 8,
    "Float64": 8,
    "Uuid": 16,
}
LENGTH_PREFIXED = {
    "String": "string",
    "CompactString": "compact_string",
    "Bytes": "bytes",
    "CompactBytes": "compact_bytes",
}
VARINTS = {
    "UnsignedVarInt": "uvarint",
    "VarInt": "uvarint",
    "UnsignedVarLong": "uvarlong",
    "VarLong": "uvarlong",
}


class GenError(Exception):
    pass


def snake(name):
    s = re.sub(r"(?<=[a-z0-9])([A-Z])", r"_\1", name)
    s = re.sub(r"(?<=[A-Z])([A-Z][a-z])", r"_\1", s)
    return s.lower()


# ---------------------------------------------------------------- inputs


def find_crate(src):
    if src:
        return src
    home = os.environ.get("CARGO_HOME", os.path.expanduser("~/.cargo"))
    hits = sorted(glob.glob(os.path.join(home, "registry", "src", "*", f"kafka-protocol-{CRATE_VERSION}")))
    if not hits:
        raise GenError(f"kafka-protocol {CRATE_VERSION} not found under {home}/registry/src (run a cargo build first, or pass --src)")
    return hits[0]


def supported_apis():
    """The (ApiKey name, lo, hi) entries of `SUPPORTED` in kafka/src/lib.rs."""
    text = open(LIB_RS).read()
    m = re.search(r"pub const SUPPORTED: &\[\(ApiKey, i16, i16\)\] = &\[(.*?)\];", text, re.S)
    if not m:
        raise GenError("SUPPORTED not found in kafka/src/lib.rs")
    apis = re.findall(r"\(ApiKey::(\w+), (-?\d+), (-?\d+)\)", m.group(1))
    if not apis:
        raise GenError("SUPPORTED is empty")
    return [(a, int(lo), int(hi)) for a, lo, hi in apis]


def check_crate_version():
    text = open(CARGO_TOML).read()
    m = re.search(r'kafka-protocol = \{ version = "([^"]+)"', text)
    if not m or not CRATE_VERSION.startswith(m.group(1)):
        raise GenError(f"kafka/Cargo.toml asks for kafka-protocol {m and m.group(1)}, this generator reads {CRATE_VERSION}")


# ---------------------------------------------------------------- struct definitions


class Field:
    def __init__(self, name, ty, versions):
        self.name = name
        self.ty = ty
        self.versions = versions  # None (none), or (lo, hi)


def parse_structs(text):
    structs = {}
    for m in re.finditer(r"\npub struct (\w+) \{\n(.*?)\n\}\n", text, re.S):
        fields = {}
        doc_versions = None
        for line in m.group(2).split("\n"):
            line = line.strip()
            v = re.match(r"/// Supported API versions: (.*)$", line)
            if v:
                spec = v.group(1).strip()
                if spec == "none":
                    doc_versions = None
                elif re.fullmatch(r"\d+", spec):
                    doc_versions = (int(spec), int(spec))
                elif re.fullmatch(r"\d+-\d+", spec):
                    lo, hi = spec.split("-")
                    doc_versions = (int(lo), int(hi))
                else:
                    raise GenError(f"{m.group(1)}: unknown version spec {spec!r}")
                continue
            f = re.match(r"pub (\w+): (.+),$", line)
            if f:
                fields[f.group(1)] = Field(f.group(1), f.group(2), doc_versions)
                doc_versions = None
        structs[m.group(1)] = fields
    return structs


def parse_decode_impls(text):
    impls = {}
    pat = re.compile(
        r"\nimpl Decodable for (\w+) \{\n    fn decode<B: ByteBuf>\(buf: &mut B, version: i16\) -> Result<Self> \{\n(.*?)\n    \}\n\}\n",
        re.S,
    )
    for m in pat.finditer(text):
        impls[m.group(1)] = m.group(2)
    return impls


# ---------------------------------------------------------------- decode bodies

TOKEN = re.compile(
    r'\s*(?:(?P<str>"(?:\\.|[^"\\])*")|(?P<num>\d+)|(?P<id>[A-Za-z_][A-Za-z0-9_]*)'
    r"|(?P<op>::|=>|>=|<=|!=|==|&&|\|\||\.\.|[{}()\[\];:,.=<>!?&|+\-*/]))"
)


def tokenize(text):
    toks = []
    pos = 0
    text = text.rstrip()
    while pos < len(text):
        m = TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise GenError(f"cannot tokenize at {text[pos:pos + 40]!r}")
        toks.append(m.group(m.lastgroup))
        pos = m.end()
        while pos < len(text) and text[pos].isspace():
            pos += 1
    return toks


class Parser:
    """Statements: ("if", cond, then, else), ("let", name, expr), ("assign", name,
    expr), ("for", header, body), ("match", [(pattern, body)]), ("bail", message),
    ("end",). Expressions: ("if", cond, then, else), ("decode", text), ("default", text)."""

    def __init__(self, toks, where):
        self.t = toks
        self.i = 0
        self.where = where

    def err(self, msg):
        ctx = " ".join(self.t[self.i:self.i + 12])
        return GenError(f"{self.where}: {msg} at `{ctx}`")

    def peek(self, k=0):
        return self.t[self.i + k] if self.i + k < len(self.t) else None

    def take(self, expect=None):
        tok = self.peek()
        if tok is None or (expect is not None and tok != expect):
            raise self.err(f"expected {expect!r}")
        self.i += 1
        return tok

    def until(self, stop):
        """Tokens up to (not including) `stop` at bracket depth 0."""
        out = []
        depth = 0
        while True:
            tok = self.peek()
            if tok is None:
                raise self.err(f"no {stop!r}")
            if depth == 0 and tok == stop:
                return out
            if tok in "([{":
                depth += 1
            elif tok in ")]}":
                depth -= 1
            out.append(self.take())

    def block(self):
        self.take("{")
        stmts = []
        while self.peek() != "}":
            stmts.append(self.stmt())
        self.take("}")
        return stmts

    def stmt(self):
        tok = self.peek()
        if tok == "if":
            self.take()
            cond = self.until("{")
            then = self.block()
            other = []
            if self.peek() == "else":
                self.take()
                other = self.block()
            return ("if", cond, then, other)
        if tok == "let":
            self.take()
            if self.peek() == "mut":
                self.take()
            name = self.take()
            if self.peek() == ":":
                self.until("=")
            self.take("=")
            expr = self.expr(";")
            self.take(";")
            return ("let", name, expr)
        if tok == "for":
            self.take()
            header = self.until("{")
            return ("for", header, self.block())
        if tok == "match":
            self.take()
            if self.until("{") != ["tag"]:
                raise self.err("match on something other than the tag")
            self.take("{")
            arms = []
            while self.peek() != "}":
                pattern = self.until("=>")
                self.take("=>")
                arms.append((pattern, self.block()))
            self.take("}")
            return ("match", arms)
        if tok == "bail":
            self.take()
            self.take("!")
            args = self.until(";")
            self.take(";")
            return ("bail", args[1])
        if tok == "Ok":
            self.i = len(self.t)
            return ("end",)
        if tok == "unknown_tagged_fields":
            self.until(";")
            self.take(";")
            return ("noop",)
        if re.fullmatch(r"[a-z_][a-z0-9_]*", tok or "") and self.peek(1) == "=":
            name = self.take()
            self.take("=")
            expr = self.expr(";")
            self.take(";")
            return ("assign", name, expr)
        raise self.err("unknown statement")

    def expr(self, stop):
        tok = self.peek()
        if tok == "if":
            self.take()
            cond = self.until("{")
            self.take("{")
            then = self.expr("}")
            self.take("}")
            self.take("else")
            self.take("{")
            other = self.expr("}")
            self.take("}")
            return ("if", cond, then, other)
        if tok in ("types", "buf"):
            toks = self.until("?")
            self.take("?")
            return ("decode", "".join(toks))
        toks = self.until(stop)
        if any(t in ("buf", "decode", "types") for t in toks):
            raise self.err("an expression that reads, of unknown shape")
        return ("default", " ".join(toks))


# ---------------------------------------------------------------- emitting walkers


def option_inner(ty):
    m = re.fullmatch(r"Option<(.+)>", ty)
    return (True, m.group(1)) if m else (False, ty)


def vec_elem(ty):
    m = re.fullmatch(r"Vec<(.+)>", ty)
    if not m:
        raise GenError(f"array field of type {ty}")
    return m.group(1)


def null_arg(nullable):
    return "Null::Allowed" if nullable else "Null::Refused"


class Emitter:
    def __init__(self, module, structs, impls):
        self.module = module
        self.structs = structs
        self.impls = impls
        self.reached = []  # struct names in this module, in the order first reached

    def reach(self, name):
        if name not in self.impls:
            raise GenError(f"{self.module}: no decode impl for {name}")
        if name not in self.reached:
            self.reached.append(name)

    def label(self, struct, field):
        return f'"{struct}.{field}"'

    def primitive(self, kind, label, nullable):
        """A walker call for a non-array decoder `kind` (`String`, `Int32`, ...)."""
        if kind in FIXED_BYTES:
            return f"r.skip({FIXED_BYTES[kind]}, {label})?;"
        if kind in LENGTH_PREFIXED:
            return f"r.{LENGTH_PREFIXED[kind]}({label}, {null_arg(nullable)})?;"
        if kind in VARINTS:
            return f"r.{VARINTS[kind]}({label})?;"
        raise GenError(f"{self.module}: unknown decoder types::{kind}")

    def decode(self, struct, name, text):
        """The walker statement for `let <name> = <text>?` in `struct`'s decode."""
        if name == "num_tagged_fields":
            if text != "types::UnsignedVarInt.decode(buf)":
                raise GenError(f"{struct}: tagged field count read as {text}")
            return [f'let num_tagged_fields = r.uvarint("{struct} tagged fields")?;']
        if name in ("tag", "size"):
            if text != "types::UnsignedVarInt.decode(buf)":
                raise GenError(f"{struct}: tagged field {name} read as {text}")
            return [f'let {name} = r.uvarint("{struct} tagged field {name}")?;']
        if name == "unknown_value":
            if text != "buf.try_get_bytes(sizeasusize)":
                raise GenError(f"{struct}: unknown tagged field read as {text}")
            return [f'r.skip(size as usize, "{struct} unknown tagged field")?;']
        field = self.structs[struct].get(name)
        if field is None:
            raise GenError(f"{struct}: decodes {name}, which is not a field")
        nullable, inner = option_inner(field.ty)
        label = self.label(struct, name)
        m = re.fullmatch(r"types::(Compact)?Array\(types::(\w+)(\{version\})?\)\.decode\(buf\)", text)
        if m:
            compact, elem_kind, versioned = m.groups()
            call = "compact_array" if compact else "array"
            elem = vec_elem(inner)
            if elem_kind == "Struct":
                if not versioned:
                    raise GenError(f"{struct}.{name}: struct elements without a version")
                self.reach(elem)
                each = f"|r| {snake(elem)}(r, version)"
            else:
                elem_nullable, _ = option_inner(elem)
                each = f"|r| {self.primitive(elem_kind, label, elem_nullable)[:-2]}"
            return [f"r.{call}({label}, {null_arg(nullable)}, {each})?;"]
        if text == "types::Struct{version}.decode(buf)":
            if nullable:
                raise GenError(f"{struct}.{name}: an optional struct")
            self.reach(inner)
            return [f"{snake(inner)}(r, version)?;"]
        m = re.fullmatch(r"types::(\w+)\.decode\(buf\)", text)
        if m:
            return [self.primitive(m.group(1), label, nullable)]
        raise GenError(f"{struct}.{name}: unknown decode {text}")

    def expr(self, struct, name, e):
        kind = e[0]
        if kind == "default":
            return []
        if kind == "decode":
            return self.decode(struct, name, e[1])
        if kind == "if":
            return self.if_(" ".join(e[1]), self.expr(struct, name, e[2]), self.expr(struct, name, e[3]))
        raise GenError(f"{struct}: unknown expression {e}")

    def if_(self, cond, then, other):
        if not then and not other:
            return []
        if not then:
            return [f"if !({cond}) {{", *other, "}"]
        if not other:
            return [f"if {cond} {{", *then, "}"]
        return [f"if {cond} {{", *then, "} else {", *other, "}"]

    def stmts(self, struct, stmts):
        out = []
        for s in stmts:
            kind = s[0]
            if kind == "if":
                out += self.if_(" ".join(s[1]), self.stmts(struct, s[2]), self.stmts(struct, s[3]))
            elif kind in ("let", "assign"):
                out += self.expr(struct, s[1], s[2])
            elif kind == "for":
                header = " ".join(s[1])
                if header != "_ in 0 .. num_tagged_fields":
                    raise GenError(f"{struct}: unknown loop {header}")
                body = self.stmts(struct, s[2])
                if not any(b[0] == "match" for b in s[2]):
                    body = [line.replace("let tag =", "let _tag =") for line in body]
                out += ["for _ in 0..num_tagged_fields {", *body, "}"]
            elif kind == "match":
                out.append("match tag {")
                for pattern, body in s[1]:
                    out += [f"{' '.join(pattern)} => {{", *self.stmts(struct, body), "}"]
                out.append("}")
            elif kind == "bail":
                msg = s[1]
                if msg == '"specified version not supported by this message type"':
                    out.append(f'return Err(Refused::version("{struct}", version));')
                elif msg == '"Tag {} is not valid for version {}"':
                    out.append(f'return Err(Refused::tag("{struct}", tag, version));')
                else:
                    raise GenError(f"{struct}: unknown bail {msg}")
            elif kind in ("noop", "end"):
                pass
            else:
                raise GenError(f"{struct}: unknown statement {s}")
        return out

    def walk_fn(self, struct):
        toks = tokenize(self.impls[struct])
        p = Parser(toks, f"{self.module}::{struct}")
        stmts = []
        while p.peek() is not None:
            stmts.append(p.stmt())
        body = self.stmts(struct, stmts)
        return [
            f"/// Walks a `{struct}` as its `Decodable` impl reads it.",
            f"pub(crate) fn {snake(struct)}(r: &mut Walker<'_>, version: i16) -> Result<(), Refused> {{",
            *body,
            "Ok(())",
            "}",
        ]

    # ------------------------------------------------------------ test helpers

    def array_fields(self, struct):
        """(field, nullable, element type, element is a struct) of each array field."""
        out = []
        for f in self.structs[struct].values():
            nullable, inner = option_inner(f.ty)
            if not inner.startswith("Vec<"):
                continue
            elem = vec_elem(inner)
            out.append((f, nullable, elem, elem in self.impls))
        return out

    def sample_fn(self, struct):
        path = f"km::{self.module}::{struct}"
        body = []
        for f, nullable, elem, is_struct in self.array_fields(struct):
            if f.versions is None:
                continue
            lo, hi = f.versions
            item = f"{snake(elem)}(version)" if is_struct else "Default::default()"
            value = f"vec![{item}, {item}]"
            if nullable:
                value = f"Some({value})"
            body.append(f"if ({lo}..={hi}).contains(&version) {{ x.{f.name} = {value}; }}")
        if not body:
            return [f"pub(crate) fn {snake(struct)}(_version: i16) -> {path} {{", f"{path}::default()", "}"]
        return [
            f"pub(crate) fn {snake(struct)}(version: i16) -> {path} {{",
            f"let mut x = {path}::default();",
            *body,
            "x",
            "}",
        ]

    def reserved_fn(self, struct):
        path = f"km::{self.module}::{struct}"
        terms = []
        for f, nullable, elem, is_struct in self.array_fields(struct):
            v = "v" if nullable else f"x.{f.name}"
            inner = f"{v}.capacity()"
            if is_struct:
                inner += f" + {v}.iter().map({snake(elem)}).sum::<usize>()"
            if nullable:
                terms.append(f"x.{f.name}.as_ref().map_or(0, |v| {inner})")
            else:
                terms.append(inner)
        for name, f in self.structs[struct].items():
            nullable, inner = option_inner(f.ty)
            if inner in self.impls and not nullable and not inner.startswith("Vec<"):
                terms.append(f"{snake(inner)}(&x.{name})")
        arg = "x" if terms else "_x"
        return [
            f"pub(crate) fn {snake(struct)}({arg}: &{path}) -> usize {{",
            " + ".join(terms) if terms else "0",
            "}",
        ]


def module_for(api):
    return snake(api) + "_request"


def emit_module(module, path, top):
    text = open(path).read()
    structs = parse_structs(text)
    impls = parse_decode_impls(text)
    e = Emitter(module, structs, impls)
    e.reach(top)
    walk = []
    i = 0
    while i < len(e.reached):  # walk_fn may reach more structs
        walk += e.walk_fn(e.reached[i]) + [""]
        i += 1
    return e, walk


def generate(src):
    apis = supported_apis()
    messages = os.path.join(src, "src", "messages")
    out = [
        f"//! Generated by kafka/gen/bounds.py from kafka-protocol {CRATE_VERSION}, do not edit:",
        "//! re-run the generator instead (its header says how).",
        "//!",
        "//! One walk function per request type and nested struct of the APIs in `SUPPORTED`,",
        "//! and of `RequestHeader`, each mirroring the type's `Decodable` impl with the",
        "//! primitives of [`crate::bounds`].",
        "",
        "use kafka_protocol::messages::ApiKey;",
        "",
        "use crate::bounds::{Null, Refused, Walker};",
        "",
    ]
    modules = [("request_header", "RequestHeader", None)]
    modules += [(module_for(api), api + "Request", api) for api, _, _ in apis]
    emitters = []
    for module, top, api in modules:
        path = os.path.join(messages, module + ".rs")
        if not os.path.exists(path):
            raise GenError(f"{path} not found for {top}")
        e, walk = emit_module(module, path, top)
        emitters.append((module, top, api, e))
        out += [
            f"/// `{module}.rs`.",
            f"pub(crate) mod {module} {{",
            "use super::*;",
            "",
            *walk,
            "}",
            "",
        ]
    out += [
        "/// Walks the request header of `version` (1 or 2).",
        "pub(crate) fn request_header(r: &mut Walker<'_>, version: i16) -> Result<(), Refused> {",
        "request_header::request_header(r, version)",
        "}",
        "",
        "/// Walks the body of a request of `api` in `version`.",
        "pub(crate) fn request(api: ApiKey, r: &mut Walker<'_>, version: i16) -> Result<(), Refused> {",
        "match api {",
    ]
    for module, top, api, _ in emitters[1:]:
        out.append(f"ApiKey::{api} => {module}::{snake(top)}(r, version),")
    out += [
        "_ => Err(Refused::not_covered(api)),",
        "}",
        "}",
        "",
        "/// The APIs [`request`] walks.",
        "#[cfg(test)]",
        "pub(crate) const COVERED: &[ApiKey] = &[",
        *[f"ApiKey::{api}," for _, _, api, _ in emitters[1:]],
        "];",
        "",
        "/// Sample requests (two elements in every array their version has) and the",
        "/// capacities a decoded request reserves, for the tests.",
        "#[cfg(test)]",
        "#[allow(dead_code)]",
        "pub(crate) mod samples {",
        "use kafka_protocol::messages::{self as km, ApiKey, RequestKind};",
        "",
    ]
    for module, top, api, e in emitters:
        out += [f"pub(crate) mod {module} {{", "use super::km;", ""]
        for s in e.reached:
            out += e.sample_fn(s) + [""]
        out += ["/// Capacities reserved for the vectors of a decoded value, in elements.", "pub(crate) mod reserved {", "use super::km;", ""]
        for s in e.reached:
            out += e.reserved_fn(s) + [""]
        out += ["}", "}", ""]
    out += [
        "/// A sample request of `api` in `version`.",
        "pub(crate) fn request(api: ApiKey, version: i16) -> Option<RequestKind> {",
        "Some(match api {",
    ]
    for module, top, api, _ in emitters[1:]:
        out.append(f"ApiKey::{api} => RequestKind::{api}({module}::{snake(top)}(version)),")
    out += ["_ => return None,", "})", "}", ""]
    out += [
        "/// The capacities, in elements, reserved for the vectors of a decoded request.",
        "pub(crate) fn reserved(request: &RequestKind) -> Option<usize> {",
        "Some(match request {",
    ]
    for module, top, api, _ in emitters[1:]:
        out.append(f"RequestKind::{api}(x) => {module}::reserved::{snake(top)}(x),")
    out += ["_ => return None,", "})", "}", "}"]
    return "\n".join(out) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--src", help="kafka-protocol's source root (holding src/messages)")
    args = ap.parse_args()
    try:
        check_crate_version()
        text = generate(find_crate(args.src))
    except GenError as e:
        sys.exit(f"bounds.py: {e}")
    fmt = subprocess.run(["rustfmt", "--edition", "2024"], input=text, capture_output=True, text=True)
    if fmt.returncode != 0:
        sys.stderr.write(text)
        sys.exit(f"bounds.py: rustfmt refused the output:\n{fmt.stderr}")
    with open(OUT, "w") as f:
        f.write(fmt.stdout)
    print(f"wrote {os.path.relpath(OUT, ROOT)}")


if __name__ == "__main__":
    main()
