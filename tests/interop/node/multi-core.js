// Three cores over one replication stream (one TCP connection), for the interop tests.
//   node multi-core.js write DIR N [--listen H:P | --connect H:P]
//     creates cores DIR/0, DIR/1, DIR/2 with N blocks each ("core C block B"), prints their
//     keys (hex) one per line, then serves all three on each connection. Each stdin line
//     appends one more block to every core and prints "appended LENGTH".
//   node multi-core.js read DIR KEY0 KEY1 KEY2 N [--listen H:P | --connect H:P]
//     replicates the three cores on one stream, prints "core C: VALUE" for blocks 0..N-1 of
//     each, then exits 0.
const Hypercore = require('hypercore')
const net = require('net')
const readline = require('readline')
const { parseArgs } = require('./peer-net')

function replicateAll (cores, opts) {
  const attach = (socket, isInitiator) => {
    const stream = cores[0].replicate(isInitiator)
    for (const core of cores.slice(1)) core.replicate(stream) // the same stream: one connection
    stream.pipe(socket).pipe(stream)
    stream.on('error', (err) => console.error('replication stream closed: ' + err.message))
    socket.on('error', () => {})
  }
  if (opts.listen) {
    const server = net.createServer((socket) => attach(socket, opts.role === null ? false : opts.role))
    server.listen(opts.listen.port, opts.listen.host, () => {
      const a = server.address()
      console.error(`listening ${a.address}:${a.port}`)
    })
  }
  for (const peer of opts.connect) attach(net.connect(peer.port, peer.host), opts.role === null ? true : opts.role)
}

async function write (opts) {
  const [dir, n] = opts.rest
  const cores = [0, 1, 2].map((c) => new Hypercore(`${dir}/${c}`))
  for (const [c, core] of cores.entries()) {
    await core.ready()
    const blocks = []
    for (let b = core.length; b < Number(n); b++) blocks.push(Buffer.from(`core ${c} block ${b}`))
    if (blocks.length) await core.append(blocks)
    console.log(core.key.toString('hex'))
  }
  replicateAll(cores, opts)
  for await (const _ of readline.createInterface({ input: process.stdin })) { // eslint-disable-line no-unused-vars
    let length = 0
    for (const [c, core] of cores.entries()) length = (await core.append(Buffer.from(`core ${c} block ${core.length}`))).length
    console.log('appended ' + length)
  }
}

async function read (opts) {
  const [dir, k0, k1, k2, n] = opts.rest
  const cores = [k0, k1, k2].map((key, c) => new Hypercore(`${dir}/${c}`, Buffer.from(key, 'hex')))
  await Promise.all(cores.map((core) => core.ready()))
  replicateAll(cores, opts)
  await Promise.all(cores.map(async (core, c) => {
    for (let b = 0; b < Number(n); b++) console.log(`core ${c}: ${(await core.get(b)).toString()}`)
  }))
  process.exit(0)
}

const opts = parseArgs(process.argv.slice(3))
const mode = process.argv[2] === 'read' ? read : write
mode(opts).catch((err) => { console.error(err); process.exit(1) })
