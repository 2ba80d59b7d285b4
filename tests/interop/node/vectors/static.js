// The deterministic vectors without a network: constants, keys, manifests, the Merkle tree and
// signatures at several lengths, proofs with their wire encodings, and message encodings.
// Every key comes from a fixed seed and Ed25519 signatures are deterministic.
const os = require('os')
const fs = require('fs')
const path = require('path')
const Hypercore = require('hypercore')
const crypto = require('hypercore-crypto')
const sodium = require('sodium-universal')
const c = require('compact-encoding')
const flat = require('flat-tree')
const caps = require('hypercore/lib/caps')
const m = require('hypercore/lib/messages')
const Verifier = require('hypercore/lib/verifier')
const { MerkleTree } = require('hypercore/lib/merkle-tree')
const { hex, seedFrom, nodeJSON, chatMessage } = require('./common')

function blake2b (outLen, data, key) {
  const out = Buffer.alloc(outLen)
  if (key) sodium.crypto_generichash(out, data, key)
  else sodium.crypto_generichash(out, data)
  return out
}

function constants () {
  const [TREE, REPLICATE_INITIATOR, REPLICATE_RESPONDER, MANIFEST, DEFAULT_NAMESPACE, DEFAULT_ENCRYPTION] =
    crypto.namespace('hypercore', 6)
  const [NS_INITIATOR, NS_RESPONDER, NS_SEND] = crypto.namespace('hyperswarm/secret-stream', 3)
  return {
    note: 'namespace(name, i) = BLAKE2b-256( BLAKE2b-256(utf8(name)) || byte(i) )',
    hypercore_namespace_base: hex(blake2b(32, Buffer.from('hypercore'))),
    hypercore: {
      TREE: hex(TREE),
      REPLICATE_INITIATOR: hex(REPLICATE_INITIATOR),
      REPLICATE_RESPONDER: hex(REPLICATE_RESPONDER),
      MANIFEST: hex(MANIFEST),
      DEFAULT_NAMESPACE: hex(DEFAULT_NAMESPACE),
      DEFAULT_ENCRYPTION: hex(DEFAULT_ENCRYPTION)
    },
    secret_stream_namespace_base: hex(blake2b(32, Buffer.from('hyperswarm/secret-stream'))),
    secret_stream: {
      NS_INITIATOR: hex(NS_INITIATOR),
      NS_RESPONDER: hex(NS_RESPONDER),
      NS_SEND: hex(NS_SEND)
    },
    noise_protocol_name: 'Noise_XX_Ed25519_ChaChaPoly_BLAKE2b'
  }
}

function keyVectors () {
  const seeds = [
    { label: 'zero', seed: Buffer.alloc(32, 0) },
    { label: 'ones', seed: Buffer.alloc(32, 1) },
    { label: 'counting', seed: Buffer.from(Array.from({ length: 32 }, (_, i) => i)) },
    { label: 'writer', seed: seedFrom('writer') },
    { label: 'alice-noise', seed: seedFrom('alice-noise') }
  ]
  return seeds.map(({ label, seed }) => {
    const kp = crypto.keyPair(seed)
    const manifest = Verifier.defaultSignerManifest(kp.publicKey)
    const manifestBytes = Verifier.encodeManifest(manifest)
    const manifestHash = Verifier.manifestHash(manifest)
    // noise-curve-ed DH scalar: clamp(SHA512(seed)[0:32])
    const h = Buffer.alloc(64)
    sodium.crypto_hash_sha512(h, kp.secretKey.subarray(0, 32))
    h[0] &= 248; h[31] &= 127; h[31] |= 64
    return {
      label,
      seed: hex(seed),
      ed25519_public_key: hex(kp.publicKey),
      ed25519_secret_key_libsodium: hex(kp.secretKey),
      noise_dh_scalar: hex(h.subarray(0, 32)),
      default_core_key: hex(Hypercore.key(kp.publicKey)),
      default_discovery_key: hex(crypto.discoveryKey(manifestHash)),
      compat_core_key: hex(Hypercore.key(kp.publicKey, { compat: true })),
      compat_discovery_key: hex(crypto.discoveryKey(kp.publicKey)),
      default_manifest: {
        fields: {
          version: 1, hash: 'blake2b', allowPatch: false, quorum: 1,
          signers: [{ signature: 'ed25519', namespace: hex(caps.DEFAULT_NAMESPACE), publicKey: hex(kp.publicKey) }],
          prologue: null, linked: null, userData: null
        },
        encoded: hex(manifestBytes),
        hash_input: hex(Buffer.concat([caps.MANIFEST, manifestBytes])),
        hash: hex(manifestHash)
      },
    }
  })
}

async function allNodes (core, length) {
  const nodes = []
  for (let i = 0; i < 2 * length - 1; i++) {
    const n = await MerkleTree.get(core.state, i)
    if (n) nodes.push(nodeJSON(n))
  }
  return nodes
}

async function treeVectors (compat) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'hyperpi-vectors-'))
  const seed = seedFrom('writer')
  const keyPair = crypto.keyPair(seed)
  // NOTE: the public Hypercore constructor passes `compat: opts.compat === true` to Core,
  // so the DEFAULT is non-compat (key = manifest hash). compat must be requested explicitly.
  const opts = { keyPair }
  if (compat) opts.compat = true
  const core = new Hypercore(dir, opts)
  await core.ready()

  const blocks = []
  const schedule = [1, 1, 1, 2, 3] // -> lengths 1, 2, 3, 5, 8
  const states = []
  let i = 0
  for (const n of schedule) {
    const batch = []
    for (let j = 0; j < n; j++) batch.push(Buffer.from(JSON.stringify(chatMessage(i++))))
    for (const b of batch) blocks.push(b)
    await core.append(batch)

    const length = core.length
    const roots = await MerkleTree.getRoots(core.state, length)
    const treeHash = crypto.tree(roots)
    const signature = core.state.signature
    const fork = core.fork
    const signableCompat = caps.treeSignableCompat(treeHash, length, fork, false)
    const signable = caps.treeSignable(core.key, treeHash, length, fork)
    const st = {
      length,
      fork,
      byteLength: core.byteLength,
      appended_in_this_step: n,
      leaf_hashes: blocks.map((b) => hex(crypto.data(b))),
      nodes: await allNodes(core, length),
      root_indexes: flat.fullRoots(2 * length),
      roots: roots.map(nodeJSON),
      tree_hash: hex(treeHash),
      signature: hex(signature)
    }
    if (compat) {
      st.signable = hex(signableCompat)
      st.signable_layout = 'TREE(32) || tree_hash(32) || u64le(length) || u64le(fork)'
      st.signature_valid = crypto.verify(signableCompat, signature, keyPair.publicKey)
    } else {
      const inflated = c.decode(m.multiSignature, signature)
      st.signable = hex(signable)
      st.signable_layout = 'TREE(32) || manifest_hash(32) || tree_hash(32) || u64le(length) || u64le(fork)'
      st.multisig_decoded = {
        proofs: inflated.proofs.map((p) => ({ signer: p.signer, signature: hex(p.signature), patch: p.patch })),
        patch: inflated.patch.map(nodeJSON)
      }
      st.signature_valid = crypto.verify(signable, inflated.proofs[0].signature, keyPair.publicKey)
    }
    states.push(st)
  }

  const out = {
    mode: compat ? 'compat/legacy (`new Hypercore(dir, { keyPair, compat: true })`): key = ed25519 public key' : 'DEFAULT (`new Hypercore(dir, { keyPair })`): key = manifest hash',
    writer_seed: hex(seed),
    public_key: hex(keyPair.publicKey),
    key: hex(core.key),
    discovery_key: hex(core.discoveryKey),
    manifest_encoded: hex(Verifier.encodeManifest(core.manifest)),
    manifest_hash: hex(Verifier.manifestHash(core.manifest)),
    compat_flag: core.core.compat,
    blocks: blocks.map((b, i) => ({ index: i, utf8: b.toString(), hex: hex(b), leaf_hash: hex(crypto.data(b)) })),
    states
  }

  const proofs = await proofVectors(core)

  await core.close()
  fs.rmSync(dir, { recursive: true, force: true })
  return { tree: out, proofs }
}

function encodeData (id, p) {
  return {
    request: id,
    fork: p.fork,
    block: p.block,
    hash: p.hash,
    seek: p.seek,
    upgrade: p.upgrade,
    manifest: p.manifest
  }
}

function proofJSON (p) {
  return {
    fork: p.fork,
    block: p.block && { index: p.block.index, value_hex: hex(p.block.value), nodes: p.block.nodes.map(nodeJSON) },
    hash: p.hash && { index: p.hash.index, nodes: p.hash.nodes.map(nodeJSON) },
    seek: p.seek && { bytes: p.seek.bytes, nodes: p.seek.nodes.map(nodeJSON) },
    upgrade: p.upgrade && {
      start: p.upgrade.start,
      length: p.upgrade.length,
      nodes: p.upgrade.nodes.map(nodeJSON),
      additionalNodes: p.upgrade.additionalNodes.map(nodeJSON),
      signature: hex(p.upgrade.signature)
    },
    manifest: p.manifest
  }
}

async function proofVectors (core) {
  // core is at length 8 here
  const cases = [
    { name: 'fresh reader: upgrade 0..8 only', req: { id: 1, fork: 0, block: null, hash: null, seek: null, upgrade: { start: 0, length: 8 }, manifest: false, priority: 0 } },
    { name: 'fresh reader: block 7 + upgrade 0..8', req: { id: 2, fork: 0, block: { index: 7, nodes: 0 }, hash: null, seek: null, upgrade: { start: 0, length: 8 }, manifest: false, priority: 0 } },
    { name: 'reader at length 8 holding only root 7: block 0 with nodes=3', req: { id: 3, fork: 0, block: { index: 0, nodes: 3 }, hash: null, seek: null, upgrade: null, manifest: false, priority: 0 } },
    { name: 'reader at length 8 holding node 11 (e.g. after the block 0 proof): block 5 with nodes=2 (leaf 10 -> 9 -> 11)', req: { id: 4, fork: 0, block: { index: 5, nodes: 2 }, hash: null, seek: null, upgrade: null, manifest: false, priority: 0 } },
    { name: 'reader at length 8 that already has leaf 6: block 6 with nodes=0', req: { id: 5, fork: 0, block: { index: 6, nodes: 0 }, hash: null, seek: null, upgrade: null, manifest: false, priority: 0 } },
    { name: 'live update: reader at length 5 (roots 3,8) upgrades 5..8', req: { id: 6, fork: 0, block: null, hash: null, seek: null, upgrade: { start: 5, length: 3 }, manifest: false, priority: 0 } },
    { name: 'reader asks upgrade 0..5 while writer is at 8: additionalNodes extend it to 8', req: { id: 7, fork: 0, block: null, hash: null, seek: null, upgrade: { start: 0, length: 5 }, manifest: false, priority: 0 } },
    { name: 'live update with block: reader at length 5 wants block 6 + upgrade 5..8', req: { id: 8, fork: 0, block: { index: 6, nodes: 0 }, hash: null, seek: null, upgrade: { start: 5, length: 3 }, manifest: false, priority: 0 } },
    { name: 'upgrade 0..3 (odd length, writer at 8)', req: { id: 9, fork: 0, block: null, hash: null, seek: null, upgrade: { start: 0, length: 3 }, manifest: false, priority: 0 } }
  ]
  const out = []
  for (const cs of cases) {
    const r = cs.req
    const p = await core.proof({ block: r.block, hash: r.hash, seek: r.seek, upgrade: r.upgrade && { ...r.upgrade } })
    out.push({
      name: cs.name,
      request: { ...r, block: r.block, upgrade: r.upgrade },
      request_encoded: hex(c.encode(m.wire.request, r)),
      proof: proofJSON(p),
      data_encoded: hex(c.encode(m.wire.data, encodeData(r.id, p)))
    })
  }
  return out
}

function messageVectors (key) {
  const cap = Buffer.alloc(32, 0xab)
  const ex = []
  const add = (type, enc, value) => ex.push({ type, value: JSON.parse(JSON.stringify(value, (k, v) => (v && v.type === 'Buffer' ? Buffer.from(v.data).toString('hex') : v))), encoded: hex(c.encode(enc, value)) })
  add('handshake', m.wire.handshake, { seeks: true, capability: cap })
  add('sync', m.wire.sync, { fork: 0, length: 3, remoteLength: 0, canUpgrade: true, uploading: true, downloading: false, hasManifest: false, allowPush: false })
  add('sync', m.wire.sync, { fork: 0, length: 300, remoteLength: 70000, canUpgrade: true, uploading: true, downloading: true, hasManifest: true, allowPush: true })
  add('request', m.wire.request, { id: 1, fork: 0, block: null, hash: null, seek: null, upgrade: { start: 0, length: 3 }, manifest: false, priority: 0 })
  add('request', m.wire.request, { id: 2, fork: 0, block: { index: 1, nodes: 2 }, hash: null, seek: null, upgrade: null, manifest: true, priority: 1 })
  add('request', m.wire.request, { id: 3, fork: 1, block: null, hash: { index: 4, nodes: 1 }, seek: { bytes: 100, padding: 0 }, upgrade: null, manifest: false, priority: 0 })
  add('cancel', m.wire.cancel, { request: 5 })
  add('noData', m.wire.noData, { request: 4, reason: 0 })
  add('noData', m.wire.noData, { request: 4, reason: 1 })
  add('want', m.wire.want, { start: 0, length: 2097152, any: false })
  add('want', m.wire.want, { start: 0, length: 128, any: true })
  add('unwant', m.wire.unwant, { start: 0, length: 2097152, any: false })
  add('bitfield', m.wire.bitfield, { start: 0, bitfield: new Uint32Array([0x0000001f]) })
  add('range', m.wire.range, { drop: false, start: 0, length: 3 })
  add('range', m.wire.range, { drop: false, start: 7, length: 1 })
  add('range', m.wire.range, { drop: true, start: 10, length: 20 })
  add('extension', m.wire.extension, { name: 'my-ext', message: Buffer.from('hi') })
  return ex
}

function primitiveVectors () {
  const ex = []
  for (const n of [0, 1, 0xfc, 0xfd, 0xffff, 0x10000, 0xffffffff, 0x100000000, 2 ** 52]) {
    ex.push({ enc: 'uint', value: n, encoded: hex(c.encode(c.uint, n)) })
  }
  ex.push({ enc: 'uint64 (fixed 8 bytes LE)', value: 300, encoded: hex(c.encode(c.uint64, 300)) })
  ex.push({ enc: 'string', value: 'hypercore/alpha', encoded: hex(c.encode(c.string, 'hypercore/alpha')) })
  ex.push({ enc: 'buffer', value: '0102', encoded: hex(c.encode(c.buffer, Buffer.from([1, 2]))) })
  ex.push({ enc: 'optionalBuffer', value: null, encoded: hex(c.encode(c.optionalBuffer, null)) })
  ex.push({ enc: 'uint32array', value: [1, 0x80000000], encoded: hex(c.encode(c.uint32array, new Uint32Array([1, 0x80000000]))) })
  return ex
}

async function staticVectors () {
  const def = await treeVectors(false)
  const compat = await treeVectors(true)
  return {
    constants: constants(),
    compact_encoding: primitiveVectors(),
    keys: keyVectors(),
    tree_default: def.tree,
    tree_compat: compat.tree,
    proofs_default_length8: def.proofs,
    proofs_compat_length8: compat.proofs,
    wire_messages: messageVectors()
  }
}

module.exports = { staticVectors }
