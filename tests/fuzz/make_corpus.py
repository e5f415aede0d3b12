#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Writes the fuzzers' seed corpus into corpus/NAME/ (deterministic: same files every run).

The wire seeds come from the operation table: the codes and tags are read from
include/p11psk/wire.h and the rows (name, request fields) from common/ops.c, so a new
operation gets its seeds here without an edit. The files are committed; rerun after a wire,
table or handle format change:
    python3 tests/fuzz/make_corpus.py
"""
import hashlib
import os
import re
import shutil
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.join(HERE, "..", "..")
MAGIC = b"\xd1p11pk"


def read(path):
    with open(os.path.join(ROOT, path), encoding="utf-8") as f:
        return f.read()


def c_enum(text, prefix):
    """NAME -> value for every `PREFIXxxx = N` enumerator in text."""
    return {m.group(1): int(m.group(2), 0)
            for m in re.finditer(r"\b(%s\w+) = (0x[0-9a-fA-F]+|\d+)" % prefix, text)}


def c_define(text, name):
    return int(re.search(r"#define %s (\d+)" % name, text).group(1))


WIRE_H = read("include/p11psk/wire.h")
OPS = c_enum(WIRE_H, "P11PSK_OP_")
TAGS = c_enum(WIRE_H, "P11PSK_T_")
CONSTS = {"ANY": 0xFFFF, "P11PSK_WIRE_OUT_MAX": c_define(WIRE_H, "P11PSK_WIRE_OUT_MAX")}
WIRE_MAX = c_define(WIRE_H, "P11PSK_WIRE_MAX")


def table_rows():
    """(code, name, [(tag, required, minlen, maxlen, minval, maxval)]) per row of p11psk_ops."""
    src = read("common/ops.c")
    body = src[src.index("p11psk_ops[] = {"):]
    body = body[:body.index("\n};")]
    rows = re.findall(r'\{(P11PSK_OP_\w+), "([^"]+)", \w+, "[^"]*", \w+,\s*\{(.*?)\}\},',
                      body, re.S)
    if len(rows) != body.count('"') // 4:  # two strings per row
        raise SystemExit("make_corpus.py: cannot parse every row of p11psk_ops in common/ops.c")
    out = []
    for code, name, fields in rows:
        rules = []
        for kind, tag, a, b in re.findall(r"(REQ_U16|REQ|OPT)\((P11PSK_T_\w+), (\w+), (\w+)\)",
                                          fields):
            a, b = (CONSTS[v] if v in CONSTS else int(v, 0) for v in (a, b))
            if kind == "REQ_U16":
                rules.append((TAGS[tag], True, 2, 2, a, b))
            else:
                rules.append((TAGS[tag], kind == "REQ", a, b, 0, 0))
        out.append((OPS[code], name, rules))
    return out


def handle(htype, digest, kid, n):
    """Version 2 layout (include/p11psk/handle.h); the tag is a fixed stand-in: the decoder
    lays out bytes, only p11pskd with the token's handle key judges a tag."""
    if htype == 1:
        body = MAGIC + bytes([2, htype, digest, len(kid)]) + kid.ljust(16, b"\0")
        body += bytes(range(0x10, 0x20))  # tag
        return body + hashlib.sha256(body).digest()[:6]
    ref = hashlib.sha256(kid + bytes([digest])).digest()[: n - 9]
    return (MAGIC + bytes([2, htype, digest]) + ref).ljust(n, b"\0")


def field(tag, value):
    return bytes([tag]) + struct.pack(">H", len(value)) + value


def frame(code, *fields, version=1):
    body = bytes([version, code]) + b"".join(fields)
    return struct.pack(">I", len(body)) + body


PSK = handle(1, 0, bytes.fromhex("0a0b0c0d"), 48)
ES256 = handle(2, 1, bytes.fromhex("00112233445566778899aabbccddeeff"), 32)
ES384 = handle(2, 2, b"\x01", 48)

# A plausible value per request tag; a rule's size and value bounds win over it.
SAMPLE = {
    TAGS["P11PSK_T_DIGEST"]: b"\x01",
    TAGS["P11PSK_T_HANDLE"]: PSK,
    TAGS["P11PSK_T_PREFIX"]: b"tls13 ",
    TAGS["P11PSK_T_LABEL"]: b"c e traffic",
    TAGS["P11PSK_T_DATA"]: bytes(32),
    TAGS["P11PSK_T_IKM"]: bytes(48),
    TAGS["P11PSK_T_OTHER"]: bytes(32),
    TAGS["P11PSK_T_SEED"]: b"master secret" + bytes(64),
}


def sample(rule):
    tag, _, lo, hi, vlo, vhi = rule
    if vhi:
        return struct.pack(">H", min(max(32, vlo), vhi)) if lo == 2 else bytes([vlo] * lo)
    value = SAMPLE.get(tag, b"")
    return value[:hi].ljust(lo, b"\0")


def op_seeds():
    """Per row: a full request, one without its first required field, one with a field the
    row does not list."""
    seeds = {}
    for code, name, rules in table_rows():
        seeds[name] = frame(code, *(field(r[0], sample(r)) for r in rules))
        required = [r for r in rules if r[1]]
        if required:
            seeds[name + "-missing"] = frame(
                code, *(field(r[0], sample(r)) for r in rules if r is not required[0]))
        listed = {r[0] for r in rules}
        extra = min(t for t in TAGS.values() if t not in listed)
        seeds[name + "-extra-field"] = frame(
            code, *(field(r[0], sample(r)) for r in rules), field(extra, b"\x00"))
    return seeds


PING = OPS["P11PSK_OP_PING"]
wire = dict(op_seeds())
wire.update({
    "pong": frame(0x00, field(TAGS["P11PSK_T_INFO"], b"p11pskd 0.1.0")),
    "es-expand": frame(OPS["P11PSK_OP_TLS13_EXPAND"], field(1, b"\x01"), field(2, ES256),
                       field(3, b"tls13 "), field(4, b"c hs traffic"), field(5, bytes(32)),
                       field(9, b"\x00\x20")),
    "es384-extract": frame(OPS["P11PSK_OP_TLS13_EXTRACT"], field(1, b"\x02"), field(2, ES384),
                           field(3, b"tls13 "), field(4, b"derived"), field(6, bytes(48))),
    "error": frame(0x05, field(11, b"\x00\x00\x00\x30"), field(12, b"C_DigestKey failed")),
    "bad-version": frame(PING, version=7),
    "duplicate": frame(OPS["P11PSK_OP_TLS13_EARLY"], field(1, b"\x01"), field(1, b"\x02")),
    "unknown-tag": frame(PING, field(0x7f, b"\x00")),
    "field-past-end": bytes.fromhex("00000006011001002001"),
    "short-body": bytes.fromhex("0000000101"),
    "oversized": bytes.fromhex("7fffffff01"),
    "max-body": frame(OPS["P11PSK_OP_TLS12_PRF"], field(5, bytes(WIRE_MAX - 2 - 3))),
    "empty": b"",
})

handles = {  # first byte 0x01: decoded as given; 0x00: check value recomputed
    "psk-binary": b"\x01" + PSK,
    "psk-hex": b"\x01" + PSK.hex().encode(),
    "psk-hex-upper": b"\x01" + PSK.hex().upper().encode(),
    "es-sha256": b"\x01" + ES256,
    "es-sha384": b"\x01" + ES384,
    "es-hex-refused": b"\x01" + ES256.hex().encode(),
    "bad-check": b"\x01" + PSK[:-1] + bytes([PSK[-1] ^ 1]),
    "bad-version": b"\x00" + PSK[:6] + b"\x03" + PSK[7:],
    "version-1": b"\x00" + PSK[:6] + b"\x01" + PSK[7:32],
    "bad-idlen": b"\x00" + PSK[:9] + b"\x11" + PSK[10:],
    "padding": b"\x00" + PSK[:24] + b"\x01" + PSK[25:],
    "short": b"\x01" + MAGIC + b"\x01",
    "long": b"\x01" + PSK + b"\x00" * 20,
    "not-a-handle": b"\x01" + b"0123456789abcdef0123456789abcdef",
    "hex-bad-char": b"\x01" + b"d1703131706b" + b"g" * 84,
}

premaster = {
    "plain-handle": struct.pack(">H", 32) + bytes(32) + struct.pack(">H", len(PSK)) + PSK,
    "plain-hex-handle": struct.pack(">H", 64) + bytes(64) + struct.pack(">H", 96)
    + PSK.hex().encode(),
    "ecdhe-handle": struct.pack(">H", 32) + bytes(range(32)) + struct.pack(">H", len(PSK)) + PSK,
    "raw-key": struct.pack(">H", 16) + bytes(16) + struct.pack(">H", 16) + b"k" * 16,
    "empty-parts": bytes(4),
    "short": b"\x00\x01\x00",
    "other-too-long": b"\xff\xff" + bytes(8),
    "psk-too-long": struct.pack(">H", 1) + b"\x00" + b"\xff\xff" + bytes(4),
    "trailing": struct.pack(">H", 1) + b"\x00" + struct.pack(">H", 1) + b"\x00\x00",
}

with open(os.path.join(ROOT, "conf", "p11pskd.conf"), "rb") as f:
    sample_conf = f.read()
config = {
    "sample": sample_conf,
    "test": b"""module = /usr/lib/softhsm/libsofthsm2.so
token = pkcs11:token=p11psk-test
pin-source = file:/tmp/pin
socket = /tmp/p11psk.sock
log-level = debug
allow * uid=0
""",
    "token-uri-pin": b"token = pkcs11:token=p11psk?pin-source=file:/etc/p11psk/pin\n",
    "acl": b"allow web-* uid=0 gid=0\nallow mqtt-*   gid=root\nallow *\nallow x uid=nobody-such\n",
    "policy": b"allow-psk-ke = yes\nreadable-keys=off\ndigests = sha256,SHA384\nrate-limit = 100\n",
    "limits": b"threads = 4\nmax-connections = 1024\nmax-connections-per-peer = 256\n"
    b"request-timeout-ms = 10000\ncache = on\ncache-ttl = 60\ncache-size = 100\n",
    "admin": b"allow-status * uid=0\nallow-admin * gid=0\nallow-status\n",
    "socket": b"socket-mode = 0600\nsocket-group = 0\nsocket-group = root\n",
    "comments": b"# c\n  \n\tmodule=x # trailing\nmodule = a#b\n",
    "no-newline": b"log-level = warn",
    "malformed": b"module\n",
    "unknown": b"frobnicate = 1\n",
    "empty-value": b"module =\n",
    "long-line": b"module = /" + b"a" * 5000 + b"\n",
    "gid-overflow": b"socket-group = 4294967296\n",
    "gid-max": b"socket-group = 4294967295\n",  # was accepted as gid (gid_t)-1
    "nul": b"module = a\0b\nsocket = /x\n",
    "empty": b"",
}

for name, files in (("wire", wire), ("handle", handles), ("premaster", premaster),
                    ("config", config)):
    d = os.path.join(HERE, "corpus", name)
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    for fname, data in files.items():
        with open(os.path.join(d, fname), "wb") as f:
            f.write(data)
