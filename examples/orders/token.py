"""Prints a JWT for a customer of the shop example, signed with HS256 with the
secret in SHOP_JWT_SECRET, valid for an hour. Standard library only.

    TOKEN=$(python3 examples/orders/token.py ada)
"""

import base64
import hashlib
import hmac
import json
import os
import sys
import time


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


customer = sys.argv[1] if len(sys.argv) > 1 else "ada"
header = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
claims = b64(
    json.dumps(
        {
            "sub": customer,
            "iss": "https://shop.example",
            "aud": "agentstream",
            "exp": int(time.time()) + 3600,
        }
    ).encode()
)
signing_input = f"{header}.{claims}".encode()
secret = os.environ["SHOP_JWT_SECRET"].encode()
signature = b64(hmac.new(secret, signing_input, hashlib.sha256).digest())
print(f"{header}.{claims}.{signature}")
