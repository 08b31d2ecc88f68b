// A WOPR peer written with nothing but Node's built-in crypto, signing as
// WOPR's P2P plugin does (src/identity.ts: signMessage, rotateIdentity,
// createInviteToken): Ed25519 keys as base64 SPKI/PKCS#8 DER, signatures
// over JSON.stringify of the object before `sig` is appended.
//
// Usage: node wopr_peer.mjs <keygen|sign|rotate|invite|verify|post>, one
// JSON object on stdin, one on stdout. tests/p2p_format.rs drives it.
import {
  createPrivateKey,
  createPublicKey,
  generateKeyPairSync,
  randomBytes,
  sign,
  verify,
} from "node:crypto";
import { readFileSync } from "node:fs";
import https from "node:https";

const der = { publicKeyEncoding: { type: "spki", format: "der" }, privateKeyEncoding: { type: "pkcs8", format: "der" } };

function privateKey(base64) {
  return createPrivateKey({ key: Buffer.from(base64, "base64"), format: "der", type: "pkcs8" });
}

function publicKey(base64) {
  return createPublicKey({ key: Buffer.from(base64, "base64"), format: "der", type: "spki" });
}

function publicOf(base64Private) {
  return createPublicKey(privateKey(base64Private)).export({ type: "spki", format: "der" }).toString("base64");
}

/** WOPR's signMessage: `{...msg, sig}` over JSON.stringify(msg). */
function signed(base64Private, msg) {
  const sig = sign(null, Buffer.from(JSON.stringify(msg)), privateKey(base64Private)).toString("base64");
  return { ...msg, sig };
}

/** WOPR's verifySignature: re-serializes what it parsed, without sig. */
function verifies(msg, key) {
  const { sig, ...payload } = msg;
  try {
    return verify(null, Buffer.from(JSON.stringify(payload)), publicKey(key), Buffer.from(sig, "base64"));
  } catch {
    return false;
  }
}

/** A message as WOPR makes one, stamped when it is sent: `{v, type, from,
 * ts, nonce, ...fields}` (tests/e2e_p2p.rs, whose pod may start minutes
 * after the test wrote its input). */
function stamped(input) {
  return {
    v: 2,
    type: input.type,
    from: publicOf(input.privateKey),
    ts: Date.now(),
    nonce: randomBytes(16).toString("hex"),
    ...input.fields,
  };
}

/** POSTs `message` (or a message `stamped` now), signed, to `url`. */
function post(input) {
  const text = JSON.stringify(signed(input.privateKey, input.message ?? stamped(input)));
  const url = new URL(input.url);
  return new Promise((resolve, reject) => {
    const request = https.request(
      url,
      {
        method: "POST",
        ca: readFileSync(input.caFile),
        headers: { "content-type": "application/json", "content-length": Buffer.byteLength(text) },
      },
      (response) => {
        const chunks = [];
        response.on("data", (chunk) => chunks.push(chunk));
        response.on("end", () => {
          const body = Buffer.concat(chunks).toString();
          let parsed;
          try {
            parsed = JSON.parse(body);
          } catch {
            parsed = body;
          }
          resolve({ status: response.statusCode, body: parsed });
        });
      },
    );
    request.on("error", reject);
    request.end(text);
  });
}

const commands = {
  keygen() {
    const { publicKey, privateKey } = generateKeyPairSync("ed25519", der);
    return { publicKey: publicKey.toString("base64"), privateKey: privateKey.toString("base64") };
  },
  sign(input) {
    return { signed: JSON.stringify(signed(input.privateKey, input.message)) };
  },
  rotate(input) {
    const { publicKey: encPub } = generateKeyPairSync("x25519", der);
    const rotation = {
      v: 1,
      type: "key-rotation",
      oldSignPub: publicOf(input.oldPrivateKey),
      newSignPub: input.newPublicKey,
      newEncryptPub: encPub.toString("base64"),
      reason: input.reason,
      effectiveAt: input.effectiveAt,
      gracePeriodMs: input.gracePeriodMs,
    };
    return { keyRotation: signed(input.oldPrivateKey, rotation) };
  },
  invite(input) {
    const token = {
      v: 1,
      iss: publicOf(input.privateKey),
      sub: input.sub,
      ses: input.ses,
      cap: input.cap,
      exp: input.exp,
      nonce: input.nonce,
    };
    const text = JSON.stringify(signed(input.privateKey, token));
    return { token: `wop1://${Buffer.from(text).toString("base64url")}` };
  },
  verify(input) {
    if (input.token !== undefined) {
      if (!input.token.startsWith("wop1://")) return { ok: false };
      const invite = JSON.parse(Buffer.from(input.token.slice(7), "base64url").toString());
      return { ok: verifies(invite, invite.iss), invite };
    }
    return { ok: verifies(JSON.parse(input.signed), input.publicKey) };
  },
  post,
};

const command = commands[process.argv[2]];
if (!command) {
  console.error(`usage: node wopr_peer.mjs <${Object.keys(commands).join("|")}> < input.json`);
  process.exit(2);
}
try {
  const input = JSON.parse(readFileSync(0, "utf8") || "{}");
  process.stdout.write(`${JSON.stringify(await command(input))}\n`);
} catch (error) {
  console.error(`wopr_peer.mjs ${process.argv[2]}: ${error.cause?.message ?? error.message}`);
  process.exit(1);
}
