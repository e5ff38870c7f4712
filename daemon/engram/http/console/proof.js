// Audit inclusion proofs checked in the browser, as daemon/engram/audit/verify.py and
// daemon/engram/signing.py check them: nothing the server says about validity is trusted.
//
// 1. leaf hash = SHA-256(0x00 || the entry's canonical bytes), computed here from the bytes;
// 2. the RFC 9162 (section 2.1.3.2) walk of the audit path from that leaf to a root;
// 3. that root and tree size are the ones a signed checkpoint states (C2SP tlog-checkpoint:
//    "<origin>\n<size>\n<base64 root>\n" then optional extension lines);
// 4. the checkpoint note carries a valid Ed25519 signature by the verifier key
//    "<name>+<8 hex key id>+<base64(0x01 || 32-byte public key)>", whose key id is the first 4
//    bytes of SHA-256(name || 0x0A || 0x01 || public key), on a line "— <name> <base64(key id || signature)>".

const encoder = new TextEncoder();

export function fromBase64(text) {
  const binary = atob(text);
  const out = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i++) out[i] = binary.charCodeAt(i);
  return out;
}

export function toBase64(bytes) {
  let binary = "";
  for (const b of bytes) binary += String.fromCharCode(b);
  return btoa(binary);
}

function concat(...parts) {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) { out.set(p, at); at += p.length; }
  return out;
}

function equal(a, b) {
  if (a.length !== b.length) return false;
  let diff = 0;
  for (let i = 0; i < a.length; i++) diff |= a[i] ^ b[i];
  return diff === 0;
}

async function sha256(bytes) { return new Uint8Array(await crypto.subtle.digest("SHA-256", bytes)); }

export async function leafHash(canonical) { return sha256(concat(Uint8Array.of(0), canonical)); }
async function nodeHash(left, right) { return sha256(concat(Uint8Array.of(1), left, right)); }

// RFC 9162 2.1.3.2: the root the audit path leads to from leaf `index` of a tree of `size`, or
// null when the path does not fit the tree (too short, too long).
export async function rootFromProof(index, size, leaf, path) {
  if (!(index < size)) return null;
  let fn = index, sn = size - 1, r = leaf;
  for (const p of path) {
    if (sn === 0) return null;
    if (fn % 2 === 1 || fn === sn) {
      r = await nodeHash(p, r);
      if (fn % 2 === 0) {
        while (fn % 2 === 0 && fn !== 0) { fn = Math.floor(fn / 2); sn = Math.floor(sn / 2); }
      }
    } else {
      r = await nodeHash(r, p);
    }
    fn = Math.floor(fn / 2); sn = Math.floor(sn / 2);
  }
  return sn === 0 ? r : null;
}

export class ProofFailure extends Error {}

// The verifier key string parsed, its key id checked, the public key imported for WebCrypto.
export async function parseVerifierKey(vkey) {
  const first = vkey.indexOf("+"), second = vkey.indexOf("+", first + 1);
  if (first < 1 || second < 0) throw new ProofFailure("verifier key: not <name>+<key id>+<key>");
  const name = vkey.slice(0, first), idHex = vkey.slice(first + 1, second), data = fromBase64(vkey.slice(second + 1));
  if (!/^[0-9a-f]{8}$/.test(idHex)) throw new ProofFailure("verifier key: the key id is not 8 hex digits");
  if (data.length !== 33 || data[0] !== 0x01) throw new ProofFailure("verifier key: not 0x01 and 32 Ed25519 key bytes");
  const publicKey = data.slice(1);
  const digest = await sha256(concat(encoder.encode(name + "\n"), Uint8Array.of(0x01), publicKey));
  const keyId = digest.slice(0, 4);
  if (toHex(keyId) !== idHex) throw new ProofFailure("verifier key: its key id does not match its key");
  const key = await crypto.subtle.importKey("raw", publicKey, { name: "Ed25519" }, false, ["verify"]);
  return { name, keyId, key };
}

function toHex(bytes) { return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join(""); }

// The checkpoint's text, verified against the key; its origin, size and root.
export async function openCheckpoint(note, verifier) {
  const split = note.lastIndexOf("\n\n");
  if (split < 0) throw new ProofFailure("checkpoint: no blank line before the signatures");
  const text = note.slice(0, split + 1), block = note.slice(split + 2);
  if (!block.endsWith("\n")) throw new ProofFailure("checkpoint: unterminated signature lines");
  let signed = false;
  for (const line of block.slice(0, -1).split("\n")) {
    if (!line.startsWith("\u2014 ")) throw new ProofFailure("checkpoint: a signature line does not start with '\u2014 '");
    const [name, sig64] = line.slice(2).split(" ");
    if (name !== verifier.name || !sig64) continue;
    const raw = fromBase64(sig64);
    if (raw.length !== 68 || !equal(raw.slice(0, 4), verifier.keyId)) continue;  // another key's signature
    if (!(await crypto.subtle.verify({ name: "Ed25519" }, verifier.key, raw.slice(4), encoder.encode(text)))) {
      throw new ProofFailure(`checkpoint: invalid signature by ${name}+${toHex(verifier.keyId)}`);
    }
    signed = true;
  }
  if (!signed) throw new ProofFailure("checkpoint: no signature by the verifier key");
  const lines = text.slice(0, -1).split("\n");
  if (lines.length < 3 || !/^(0|[1-9][0-9]*)$/.test(lines[1])) throw new ProofFailure("checkpoint: not origin, size, root");
  return { origin: lines[0], size: Number(lines[1]), root: fromBase64(lines[2]) };
}

// Everything checked for one entry: its canonical bytes, the audit path from audit.prove, the
// signed checkpoint and the verifier key. Returns what was established; throws ProofFailure.
export async function verifyInclusion({ seq, canonical, proof, note, vkey, origin }) {
  const verifier = await parseVerifierKey(vkey);
  const checkpoint = await openCheckpoint(note, verifier);
  if (origin !== undefined && checkpoint.origin !== origin) throw new ProofFailure(`checkpoint: origin ${checkpoint.origin}, not ${origin}`);
  if (proof.leaf_index !== seq || proof.tree_size !== checkpoint.size) {
    throw new ProofFailure(`proof: for leaf ${proof.leaf_index} of ${proof.tree_size}, not ${seq} of ${checkpoint.size}`);
  }
  const leaf = await leafHash(canonical);
  const root = await rootFromProof(seq, checkpoint.size, leaf, proof.proof.map(fromBase64));
  if (root === null) throw new ProofFailure("proof: the audit path does not fit the tree size");
  if (!equal(root, checkpoint.root)) throw new ProofFailure("proof: the path leads to another root than the signed checkpoint's");
  // The signed root vouches for the bytes; the bytes must also say they are entry `seq` (so an
  // entry cannot be shown at another position than its own).
  let entry;
  try { entry = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(canonical)); } catch { entry = null; }
  if (entry === null || entry.seq !== seq) throw new ProofFailure(`entry: its bytes are not entry ${seq}`);
  return { size: checkpoint.size, root: toBase64(root), key: `${verifier.name}+${toHex(verifier.keyId)}`, leaf: toBase64(leaf) };
}
