// Helpers shared by the vector generators (make-vectors.js). Modules come from this folder's
// node_modules, i.e. exactly the versions package-lock.json pins.
const sodium = require('sodium-universal')

const hex = (b) => (b == null ? null : Buffer.from(b.buffer ? Buffer.from(b.buffer, b.byteOffset, b.byteLength) : b).toString('hex'))

// The installed versions of every module whose bytes end up in the vectors. Node's own version
// is left out: it does not change a byte, and the freshness test must pass on any Node 20.
function versions () {
  const out = {}
  for (const p of ['hypercore', '@hyperswarm/secret-stream', 'protomux', 'compact-encoding',
    'hypercore-crypto', 'noise-handshake', 'noise-curve-ed', 'flat-tree', 'sodium-secretstream',
    'sodium-native', 'hypercore-storage']) {
    out[p] = require(p + '/package.json').version
  }
  return out
}

// Deterministic 32-byte seeds from a label: BLAKE2b-256("hcnotes-seed:" + label). The prefix is
// the one the first vectors used, kept so that every seed (and so every key) stays the same.
function seedFrom (label) {
  const out = Buffer.alloc(32)
  sodium.crypto_generichash(out, Buffer.from('hcnotes-seed:' + label))
  return out
}

function nodeJSON (n) {
  return { index: n.index, size: n.size, hash: hex(n.hash) }
}

function chatMessage (i) {
  const who = ['alice', 'bob', 'carol'][i % 3]
  return { type: 'chat', from: who, text: 'message #' + i + ' from ' + who, ts: 1700000000000 + i * 1000 }
}

module.exports = { hex, versions, seedFrom, nodeJSON, chatMessage }
