"""A WOPR peer written with the `cryptography` package, signing as WOPR's
P2P plugin does (src/identity.ts: signMessage, rotateIdentity,
createInviteToken) but with Python's JSON: json.dumps with compact
separators, which escapes non-ASCII as \\uXXXX where Node writes UTF-8.

Usage: python3 wopr_peer.py <keygen|sign|rotate|invite|verify|post>, one
JSON object on stdin, one on stdout. tests/p2p_format.rs drives it.
"""

import base64
import json
import ssl
import sys
import urllib.error
import urllib.request

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
    load_der_private_key,
    load_der_public_key,
)


def dumps(value):
    return json.dumps(value, separators=(",", ":"))


def b64(data):
    return base64.b64encode(data).decode()


def spki(public_key):
    return b64(public_key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo))


def private_key(text):
    return load_der_private_key(base64.b64decode(text, validate=True), password=None)


def signed(private_text, message):
    """WOPR's signMessage: {...msg, sig} over the text of msg."""
    sig = b64(private_key(private_text).sign(dumps(message).encode()))
    return {**message, "sig": sig}


def verifies(message, key_text):
    """WOPR's verifySignature: over the object without sig, re-serialized
    as JSON.stringify would (UTF-8, not \\uXXXX)."""
    payload = {name: value for name, value in message.items() if name != "sig"}
    text = json.dumps(payload, separators=(",", ":"), ensure_ascii=False)
    try:
        key = load_der_public_key(base64.b64decode(key_text, validate=True))
        key.verify(base64.b64decode(message["sig"], validate=True), text.encode())
        return True
    except (InvalidSignature, ValueError, KeyError, TypeError, AttributeError):
        return False


def keygen(_):
    key = Ed25519PrivateKey.generate()
    return {
        "publicKey": spki(key.public_key()),
        "privateKey": b64(key.private_bytes(Encoding.DER, PrivateFormat.PKCS8, NoEncryption())),
    }


def sign(request):
    return {"signed": dumps(signed(request["privateKey"], request["message"]))}


def rotate(request):
    old = request["oldPrivateKey"]
    rotation = {
        "v": 1,
        "type": "key-rotation",
        "oldSignPub": spki(private_key(old).public_key()),
        "newSignPub": request["newPublicKey"],
        "newEncryptPub": spki(X25519PrivateKey.generate().public_key()),
        "reason": request["reason"],
        "effectiveAt": request["effectiveAt"],
        "gracePeriodMs": request["gracePeriodMs"],
    }
    return {"keyRotation": signed(old, rotation)}


def invite(request):
    key = request["privateKey"]
    token = {
        "v": 1,
        "iss": spki(private_key(key).public_key()),
        "sub": request["sub"],
        "ses": request["ses"],
        "cap": request["cap"],
        "exp": request["exp"],
        "nonce": request["nonce"],
    }
    text = dumps(signed(key, token)).encode()
    return {"token": "wop1://" + base64.urlsafe_b64encode(text).decode().rstrip("=")}


def verify(request):
    if "token" in request:
        token = request["token"]
        if not token.startswith("wop1://"):
            return {"ok": False}
        encoded = token[len("wop1://"):]
        parsed = json.loads(base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)))
        return {"ok": verifies(parsed, parsed.get("iss")), "invite": parsed}
    return {"ok": verifies(json.loads(request["signed"]), request["publicKey"])}


def post(request):
    text = dumps(signed(request["privateKey"], request["message"])).encode()
    context = ssl.create_default_context(cafile=request["caFile"])
    http = urllib.request.Request(
        request["url"], data=text, method="POST", headers={"content-type": "application/json"}
    )
    try:
        with urllib.request.urlopen(http, context=context, timeout=30) as response:
            status, body = response.status, response.read()
    except urllib.error.HTTPError as error:
        status, body = error.code, error.read()
    body = body.decode()
    try:
        body = json.loads(body)
    except ValueError:
        pass
    return {"status": status, "body": body}


COMMANDS = {
    "keygen": keygen,
    "sign": sign,
    "rotate": rotate,
    "invite": invite,
    "verify": verify,
    "post": post,
}


def main():
    if len(sys.argv) != 2 or sys.argv[1] not in COMMANDS:
        sys.exit(f"usage: python3 wopr_peer.py <{'|'.join(COMMANDS)}> < input.json")
    command = sys.argv[1]
    try:
        request = json.loads(sys.stdin.read() or "{}")
        print(dumps(COMMANDS[command](request)))
    except Exception as error:  # one clear line, not a traceback
        reason = getattr(error, "reason", None) or error
        sys.exit(f"wopr_peer.py {command}: {reason}")


if __name__ == "__main__":
    main()
