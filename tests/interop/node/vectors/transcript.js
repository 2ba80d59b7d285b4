// One Node reader (TCP client, Noise initiator) syncing a Node writer (TCP server, Noise
// responder) over real TCP on 127.0.0.1: 3 blocks at connect time, 2 appended while connected,
// then close. Records the bytes each way, the Noise split keys, and every frame decoded.
//
// What would differ between runs is made fixed, in memory only (nothing in node_modules changes):
// * the Noise ephemeral key pairs: noise-curve-ed's n-th generateKeyPair() without a seed uses
//   seedFrom('noise-ephemeral-<n>') (0 = the initiator's, 1 = the responder's);
// * the secretstream headers libsodium draws at random in init_push: the n-th is the first 24
//   bytes of seedFrom('secretstream-header-<n>'). init_pull with that header sets up exactly the
//   state init_push would have (libsodium does the same hchacha20 + nonce copy in both);
// * TCP chunking and which direction's bytes arrive first are timing, not protocol: `events`
//   holds one entry per wire frame, per phase the initiator's frames then the responder's.
//   Each phase starts only once the connection has been quiet for a while.
const os = require('os')
const fs = require('fs')
const net = require('net')
const path = require('path')
const sodium = require('sodium-universal')
const curve = require('noise-curve-ed')
const crypto = require('hypercore-crypto')
const c = require('compact-encoding')
const NoiseSecretStream = require('@hyperswarm/secret-stream')
const { Pull } = require('sodium-secretstream')
const m = require('hypercore/lib/messages')
const Hypercore = require('hypercore')
const { hex, seedFrom, chatMessage } = require('./common')

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))

// Patches the three sources of randomness above; returns the logs and an undo function.
function fixRandomness () {
  const ephemerals = []
  const headers = []
  const sessionKeys = {}
  const origGen = curve.generateKeyPair
  const origPush = sodium.crypto_secretstream_xchacha20poly1305_init_push
  const origSetup = NoiseSecretStream.prototype._setupSecretStream
  curve.generateKeyPair = function (privKey) {
    if (privKey) return origGen(privKey)
    const label = 'noise-ephemeral-' + ephemerals.length
    const seed = seedFrom(label)
    const kp = origGen(seed)
    ephemerals.push({ label, seed: hex(seed), public_key: hex(kp.publicKey) })
    return kp
  }
  sodium.crypto_secretstream_xchacha20poly1305_init_push = function (state, header, key) {
    const label = 'secretstream-header-' + headers.length
    header.set(seedFrom(label).subarray(0, header.byteLength))
    headers.push({ label, header: hex(header) })
    sodium.crypto_secretstream_xchacha20poly1305_init_pull(state, header, key)
  }
  // Records the split keys and handshake hash of each side.
  NoiseSecretStream.prototype._setupSecretStream = function (tx, rx, hash, publicKey, remotePublicKey) {
    sessionKeys[this.isInitiator ? 'initiator' : 'responder'] = {
      tx: hex(tx), rx: hex(rx), handshake_hash: hex(hash),
      public_key: hex(publicKey), remote_public_key: hex(remotePublicKey)
    }
    return origSetup.call(this, tx, rx, hash, publicKey, remotePublicKey)
  }
  const undo = () => {
    curve.generateKeyPair = origGen
    sodium.crypto_secretstream_xchacha20poly1305_init_push = origPush
    NoiseSecretStream.prototype._setupSecretStream = origSetup
  }
  return { ephemerals, headers, sessionKeys, undo }
}

// Splits a byte stream into its 3-byte-length-prefixed wire frames (prefix included).
function splitFrames (raw, where) {
  const frames = []
  let off = 0
  while (off < raw.length) {
    const len = raw[off] | (raw[off + 1] << 8) | (raw[off + 2] << 16)
    if (off + 3 + len > raw.length) throw new Error('a frame is cut at the end of ' + where)
    frames.push(raw.subarray(off, off + 3 + len))
    off += 3 + len
  }
  return frames
}

async function transcript () {
  const fixed = fixRandomness()
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'hyperpi-vectors-tx-'))
  const writerKP = crypto.keyPair(seedFrom('writer'))
  const initStatic = NoiseSecretStream.keyPair(seedFrom('initiator-static'))
  const respStatic = NoiseSecretStream.keyPair(seedFrom('responder-static'))

  const W = new Hypercore(path.join(tmp, 'w'), { keyPair: writerKP, valueEncoding: 'json' })
  await W.ready()
  for (let i = 0; i < 3; i++) await W.append(chatMessage(i))
  const R = new Hypercore(path.join(tmp, 'r'), W.key, { valueEncoding: 'json' })
  await R.ready()

  const phases = [] // { name, i2r: [Buffer], r2i: [Buffer] }
  let lastTraffic = Date.now()
  // Copied at once: secret-stream decrypts the very same buffer in place.
  const record = (dir) => (d) => { phases[phases.length - 1][dir].push(Buffer.from(d)); lastTraffic = Date.now() }
  const phase = (name) => phases.push({ name, i2r: [], r2i: [] })
  // Resolves once nothing has moved either way for `ms`.
  const quiet = async (ms = 300) => { do await sleep(ms); while (Date.now() - lastTraffic < ms) }

  const server = net.createServer((s) => {
    s.on('data', record('i2r'))
    s.pipe(W.replicate(false, { keyPair: respStatic })).pipe(s)
  })
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve))

  phase('connect+handshake+initial-sync (reader: wait for first append; get(0..2))')
  // R.update() before the peer is added can resolve `false` at once; the reader upgrades
  // eagerly on the writer's sync anyway, so wait for 'append'.
  const firstAppend = new Promise((resolve) => R.once('append', resolve))
  const sock = net.connect(server.address().port, '127.0.0.1')
  sock.on('data', record('r2i'))
  sock.pipe(R.replicate(true, { keyPair: initStatic })).pipe(sock)

  await firstAppend
  const got = []
  for (let i = 0; i < R.length; i++) got.push(await R.get(i))
  await quiet()

  phase('live: writer appends 2 blocks while connected; reader gets them')
  const appended = new Promise((resolve) => R.on('append', () => { if (R.length >= 5) resolve() }))
  await W.append([chatMessage(3), chatMessage(4)])
  await appended
  for (let i = 3; i < 5; i++) got.push(await R.get(i))
  await quiet()

  phase('shutdown: reader closes core, then sockets end')
  await R.close()
  await quiet(200)
  await W.close()
  sock.end()
  await quiet(200)
  await new Promise((resolve) => server.close(resolve))
  fs.rmSync(tmp, { recursive: true, force: true })
  fixed.undo()

  const events = []
  for (const p of phases) {
    events.push({ seq: events.length, phase: p.name })
    for (const dir of ['i2r', 'r2i']) {
      for (const f of splitFrames(Buffer.concat(p[dir]), dir + ' in phase ' + p.name)) {
        events.push({ seq: events.length, dir, hex: hex(f) })
      }
    }
  }

  const out = {
    description: 'Node hypercore 11 reader (TCP client, Noise initiator) replicating a default (non-compat) core from a Node writer (TCP server, Noise responder). Writer has 3 blocks at connect time, appends 2 more while connected.',
    writer: {
      seed: hex(seedFrom('writer')),
      public_key: hex(writerKP.publicKey),
      core_key: hex(W.key),
      discovery_key: hex(W.discoveryKey),
      manifest_hash_equals_key: true
    },
    noise_static: {
      initiator: { seed: hex(seedFrom('initiator-static')), public_key: hex(initStatic.publicKey) },
      responder: { seed: hex(seedFrom('responder-static')), public_key: hex(respStatic.publicKey) }
    },
    noise_ephemeral_calls_in_order: fixed.ephemerals,
    secretstream_headers_in_order: fixed.headers,
    session_keys: fixed.sessionKeys,
    reader_received_values: got,
    events
  }
  out.analysis = analyse(out)
  return out
}

// ---- offline analysis: split frames, decrypt, decode ----------------------------
function analyse (t) {
  const dirs = { i2r: [], r2i: [] }
  for (const e of t.events) if (e.dir) dirs[e.dir].push(Buffer.from(e.hex, 'hex'))
  const result = {}
  for (const dir of ['i2r', 'r2i']) {
    const raw = Buffer.concat(dirs[dir])
    const frames = splitFrames(raw, dir).map((f) => f.subarray(3))
    const sender = dir === 'i2r' ? 'initiator' : 'responder'
    const receiver = dir === 'i2r' ? 'responder' : 'initiator'
    const rxKey = Buffer.from(t.session_keys[receiver].rx, 'hex').subarray(0, 32)
    const handshakeCount = sender === 'initiator' ? 2 : 1 // initiator sends msg1+msg3, responder msg2
    const out = []
    let pull = null
    const mux = new MuxDecoder()
    frames.forEach((f, i) => {
      const entry = { i, length: f.length, frame_hex: hex(f) }
      if (i < handshakeCount) {
        entry.kind = 'noise-handshake-' + (sender === 'initiator' ? (i === 0 ? 'msg1 (-> e)' : 'msg3 (-> s, se)') : 'msg2 (<- e, ee, s, es)')
      } else if (i === handshakeCount) {
        entry.kind = 'secretstream-id+header'
        entry.stream_id = hex(f.subarray(0, 32))
        entry.header = hex(f.subarray(32))
        pull = new Pull(Buffer.from(rxKey))
        pull.init(f.subarray(32))
      } else {
        const plain = pull.next(f)
        entry.kind = plain.length === 0 ? 'keepalive (empty)' : 'protomux'
        entry.plaintext_hex = hex(plain)
        if (plain.length) entry.decoded = mux.decode(plain)
      }
      out.push(entry)
    })
    result[dir] = { total_bytes: raw.length, frames: out }
  }
  return result
}

const wireNames = ['sync', 'request', 'cancel', 'data', 'noData', 'want', 'unwant', 'bitfield', 'range', 'extension']
const wireEnc = wireNames.map((n) => m.wire[n])

function jsonable (v) {
  return JSON.parse(JSON.stringify(v, (k, x) => {
    if (x && x.type === 'Buffer' && Array.isArray(x.data)) return Buffer.from(x.data).toString('hex')
    if (x instanceof Uint32Array) return Array.from(x)
    return x
  }))
}

class MuxDecoder {
  constructor () { this.remote = new Map() } // remote channel id -> protocol
  decode (buf) {
    const state = { buffer: buf, start: 0, end: buf.length }
    const channel = c.uint.decode(state)
    return this._msg(channel, state)
  }

  _msg (channel, state) {
    const type = c.uint.decode(state)
    if (channel === 0) {
      if (type === 0) {
        const msgs = []
        const end = state.end
        let ch = c.uint.decode(state)
        while (state.start < end) {
          const len = c.uint.decode(state)
          if (len === 0) { ch = c.uint.decode(state); continue }
          const sub = { buffer: state.buffer, start: state.start, end: state.start + len }
          msgs.push(this._msg(ch, sub))
          state.start += len
        }
        return { control: 'batch', messages: msgs }
      }
      if (type === 1) {
        const id = c.uint.decode(state)
        const protocol = c.string.decode(state)
        const key = c.optionalBuffer.decode(state)
        this.remote.set(id, protocol)
        const hs = protocol === 'hypercore/alpha' ? m.wire.handshake.decode(state) : hex(state.buffer.subarray(state.start, state.end))
        return { control: 'open', channel: id, protocol, id: hex(key), handshake: jsonable(hs) }
      }
      if (type === 2) return { control: 'reject', channel: c.uint.decode(state) }
      if (type === 3) return { control: 'close', channel: c.uint.decode(state) }
      return { control: 'unknown-' + type }
    }
    const enc = wireEnc[type]
    const value = enc ? enc.decode(state) : null
    return { channel, type, name: wireNames[type] || 'unknown', message: jsonable(value) }
  }
}

module.exports = { transcript }
