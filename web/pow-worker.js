// levee proof-of-work worker: finds a nonce such that SHA-256(seed ‖ decimal(nonce)) starts
// with `difficulty` zero bits (docs/protocol.md, "Proof of work"), off the page's main thread.
//
//   page → worker: { seed, difficulty, start? }
//   worker → page: { type: "progress", tried, ms }       about every 150 ms
//                  { type: "done", nonce, tried, ms, engine }
//                  { type: "error", message }
//
// Hashes with SubtleCrypto, many digests in flight at once (each digest is a promise, so
// batching is what makes it fast). Where SubtleCrypto is missing (a page served over plain
// http from a non-local address is not a secure context) a small SHA-256 in JavaScript does
// the same work.
'use strict';

const BATCH = 256;          // digests in flight at once
const PROGRESS_MS = 150;

const encoder = new TextEncoder();

function leadingZeroBits(bytes) {
  let n = 0;
  for (let i = 0; i < bytes.length; i += 1) {
    const b = bytes[i];
    if (b === 0) {
      n += 8;
    } else {
      return n + Math.clz32(b) - 24;
    }
  }
  return n;
}

/** The message for `nonce`: the seed's bytes followed by the nonce in decimal. */
function message(seedBytes, nonce) {
  const digits = encoder.encode(String(nonce));
  const m = new Uint8Array(seedBytes.length + digits.length);
  m.set(seedBytes, 0);
  m.set(digits, seedBytes.length);
  return m;
}

// ------------------------------------------------------------------ SHA-256 in JavaScript

const K = new Uint32Array([
  0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
  0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
  0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
  0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
  0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
  0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
  0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
  0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
]);
const W = new Uint32Array(64);

/** SHA-256 of `bytes` (a Uint8Array), as 32 bytes. */
function sha256(bytes) {
  const len = bytes.length;
  const blocks = Math.ceil((len + 9) / 64);
  const padded = new Uint8Array(blocks * 64);
  padded.set(bytes);
  padded[len] = 0x80;
  const bits = len * 8;
  const dv = new DataView(padded.buffer);
  dv.setUint32(padded.length - 8, Math.floor(bits / 0x100000000));
  dv.setUint32(padded.length - 4, bits >>> 0);
  let h0 = 0x6a09e667; let h1 = 0xbb67ae85; let h2 = 0x3c6ef372; let h3 = 0xa54ff53a;
  let h4 = 0x510e527f; let h5 = 0x9b05688c; let h6 = 0x1f83d9ab; let h7 = 0x5be0cd19;
  for (let off = 0; off < padded.length; off += 64) {
    for (let i = 0; i < 16; i += 1) W[i] = dv.getUint32(off + i * 4);
    for (let i = 16; i < 64; i += 1) {
      const a = W[i - 15];
      const b = W[i - 2];
      const s0 = ((a >>> 7) | (a << 25)) ^ ((a >>> 18) | (a << 14)) ^ (a >>> 3);
      const s1 = ((b >>> 17) | (b << 15)) ^ ((b >>> 19) | (b << 13)) ^ (b >>> 10);
      W[i] = (W[i - 16] + s0 + W[i - 7] + s1) | 0;
    }
    let a = h0; let b = h1; let c = h2; let d = h3; let e = h4; let f = h5; let g = h6; let h = h7;
    for (let i = 0; i < 64; i += 1) {
      const S1 = ((e >>> 6) | (e << 26)) ^ ((e >>> 11) | (e << 21)) ^ ((e >>> 25) | (e << 7));
      const ch = (e & f) ^ (~e & g);
      const t1 = (h + S1 + ch + K[i] + W[i]) | 0;
      const S0 = ((a >>> 2) | (a << 30)) ^ ((a >>> 13) | (a << 19)) ^ ((a >>> 22) | (a << 10));
      const maj = (a & b) ^ (a & c) ^ (b & c);
      const t2 = (S0 + maj) | 0;
      h = g; g = f; f = e; e = (d + t1) | 0;
      d = c; c = b; b = a; a = (t1 + t2) | 0;
    }
    h0 = (h0 + a) | 0; h1 = (h1 + b) | 0; h2 = (h2 + c) | 0; h3 = (h3 + d) | 0;
    h4 = (h4 + e) | 0; h5 = (h5 + f) | 0; h6 = (h6 + g) | 0; h7 = (h7 + h) | 0;
  }
  const out = new Uint8Array(32);
  const odv = new DataView(out.buffer);
  [h0, h1, h2, h3, h4, h5, h6, h7].forEach((v, i) => odv.setUint32(i * 4, v >>> 0));
  return out;
}

// ------------------------------------------------------------------ the search

const subtle = (self.crypto && self.crypto.subtle) || null;

async function solve(seed, difficulty, start) {
  const seedBytes = encoder.encode(seed);
  const t0 = performance.now();
  let lastProgress = t0;
  let nonce = start;
  let tried = 0;
  for (;;) {
    if (subtle) {
      const batch = [];
      for (let i = 0; i < BATCH; i += 1) batch.push(subtle.digest('SHA-256', message(seedBytes, nonce + i)));
      const hashes = await Promise.all(batch);
      for (let i = 0; i < BATCH; i += 1) {
        if (leadingZeroBits(new Uint8Array(hashes[i])) >= difficulty) {
          return { nonce: nonce + i, tried: tried + i + 1, ms: performance.now() - t0, engine: 'SubtleCrypto' };
        }
      }
    } else {
      for (let i = 0; i < BATCH; i += 1) {
        if (leadingZeroBits(sha256(message(seedBytes, nonce + i))) >= difficulty) {
          return { nonce: nonce + i, tried: tried + i + 1, ms: performance.now() - t0, engine: 'JavaScript' };
        }
      }
    }
    nonce += BATCH;
    tried += BATCH;
    const now = performance.now();
    if (now - lastProgress >= PROGRESS_MS) {
      lastProgress = now;
      self.postMessage({ type: 'progress', tried, ms: now - t0 });
      // Let the page's terminate() and other messages through between batches.
      await new Promise((r) => setTimeout(r, 0));
    }
    if (nonce > Number.MAX_SAFE_INTEGER - BATCH) throw new Error('no nonce found');
  }
}

self.onmessage = async (ev) => {
  const { seed, difficulty, start } = ev.data || {};
  if (typeof seed !== 'string' || !Number.isInteger(difficulty) || difficulty < 0 || difficulty > 64) {
    self.postMessage({ type: 'error', message: 'bad challenge' });
    return;
  }
  try {
    const r = await solve(seed, difficulty, Number.isSafeInteger(start) && start >= 0 ? start : 0);
    self.postMessage({ type: 'done', ...r });
  } catch (e) {
    self.postMessage({ type: 'error', message: String((e && e.message) || e) });
  }
};

// For tests in node: `sha256` and `leadingZeroBits` without a worker.
if (typeof module !== 'undefined' && module.exports) module.exports = { sha256, leadingZeroBits, message };
