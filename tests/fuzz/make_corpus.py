#!/usr/bin/env python3
"""Writes the fuzzers' seed corpus into corpus/NAME/ (deterministic: same files every run).

The files are committed; rerun after a wire or handle format change:
    python3 tests/fuzz/make_corpus.py
"""
import hashlib
import os
import shutil
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
MAGIC = b"\xd1p11pk"


def handle(htype, digest, kid, n):
    body = MAGIC + bytes([1, htype, digest, len(kid)]) + kid.ljust(16, b"\0")
    body = body.ljust(n - 6, b"\0")
    return body + hashlib.sha256(body).digest()[:6]


def field(tag, value):
    return bytes([tag]) + struct.pack(">H", len(value)) + value


def frame(code, *fields, version=1):
    body = bytes([version, code]) + b"".join(fields)
    return struct.pack(">I", len(body)) + body


PSK = handle(1, 0, bytes.fromhex("0a0b0c0d"), 32)
ES256 = handle(2, 1, bytes.fromhex("00112233445566778899aabbccddeeff"), 32)
ES384 = handle(2, 2, b"\x01", 48)

wire = {
    "ping": frame(0x01),
    "pong": frame(0x00, field(13, b"p11pskd 0.1.0")),
    "early": frame(0x10, field(1, b"\x01"), field(2, PSK)),
    "expand": frame(0x11, field(1, b"\x01"), field(2, ES256), field(3, b"tls13 "),
                    field(4, b"c hs traffic"), field(5, bytes(32)), field(9, b"\x00\x20")),
    "extract": frame(0x12, field(1, b"\x02"), field(2, ES384), field(3, b"tls13 "),
                     field(4, b"derived"), field(6, bytes(48))),
    "prf": frame(0x20, field(1, b"\x01"), field(2, PSK), field(7, bytes(32)),
                 field(8, b"master secret" + bytes(64)), field(9, b"\x00\x30")),
    "error": frame(0x05, field(11, b"\x00\x00\x00\x30"), field(12, b"C_DigestKey failed")),
    "bad-version": frame(0x01, version=7),
    "duplicate": frame(0x10, field(1, b"\x01"), field(1, b"\x02")),
    "unknown-tag": frame(0x01, field(0x7f, b"\x00")),
    "field-past-end": bytes.fromhex("00000006011001002001"),
    "short-body": bytes.fromhex("0000000101"),
    "oversized": bytes.fromhex("7fffffff01"),
    "max-body": frame(0x20, field(5, bytes(8192 - 2 - 3))),
    "empty": b"",
}

handles = {  # first byte 0x01: decoded as given; 0x00: check value recomputed
    "psk-binary": b"\x01" + PSK,
    "psk-hex": b"\x01" + PSK.hex().encode(),
    "psk-hex-upper": b"\x01" + PSK.hex().upper().encode(),
    "es-sha256": b"\x01" + ES256,
    "es-sha384": b"\x01" + ES384,
    "es-hex-refused": b"\x01" + ES256.hex().encode(),
    "bad-check": b"\x01" + PSK[:-1] + bytes([PSK[-1] ^ 1]),
    "bad-version": b"\x00" + PSK[:6] + b"\x02" + PSK[7:],
    "bad-idlen": b"\x00" + PSK[:9] + b"\x11" + PSK[10:],
    "padding": b"\x00" + PSK[:28] + b"\x01" + PSK[29:],
    "short": b"\x01" + MAGIC + b"\x01",
    "long": b"\x01" + PSK + b"\x00" * 20,
    "not-a-handle": b"\x01" + b"0123456789abcdef0123456789abcdef",
    "hex-bad-char": b"\x01" + b"d1703131706b" + b"g" * 52,
}

premaster = {
    "plain-handle": struct.pack(">H", 32) + bytes(32) + struct.pack(">H", 32) + PSK,
    "plain-hex-handle": struct.pack(">H", 64) + bytes(64) + struct.pack(">H", 64)
    + PSK.hex().encode(),
    "ecdhe-handle": struct.pack(">H", 32) + bytes(range(32)) + struct.pack(">H", 32) + PSK,
    "raw-key": struct.pack(">H", 16) + bytes(16) + struct.pack(">H", 16) + b"k" * 16,
    "empty-parts": bytes(4),
    "short": b"\x00\x01\x00",
    "other-too-long": b"\xff\xff" + bytes(8),
    "psk-too-long": struct.pack(">H", 1) + b"\x00" + b"\xff\xff" + bytes(4),
    "trailing": struct.pack(">H", 1) + b"\x00" + struct.pack(">H", 1) + b"\x00\x00",
}

with open(os.path.join(HERE, "..", "..", "conf", "p11pskd.conf"), "rb") as f:
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
