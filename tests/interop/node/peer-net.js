// Plain-TCP stand-in for Hyperswarm in the tutorial scripts: the LAN tests and the README use
// --listen HOST:PORT (TCP server) or --connect HOST:PORT (TCP client). By default the dialler is the
// Noise initiator; --initiator / --responder force a role so every combination can be tested.
const net = require('net')

function parseArgs (argv) {
  const opts = { listen: null, connect: [], role: null, rest: [], exitAfter: 0, json: false, compat: false, nick: 'node' }
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]
    if (a === '--listen') opts.listen = hostPort(argv[++i])
    else if (a === '--connect') opts.connect.push(hostPort(argv[++i]))
    else if (a === '--initiator') opts.role = true
    else if (a === '--responder') opts.role = false
    else if (a === '--exit-after') opts.exitAfter = Number(argv[++i])
    else if (a === '--json') opts.json = true
    else if (a === '--compat') opts.compat = true
    else if (a === '--nick') opts.nick = argv[++i]
    else opts.rest.push(a)
  }
  return opts
}

function hostPort (s) {
  const i = s.lastIndexOf(':')
  return { host: s.slice(0, i) || '127.0.0.1', port: Number(s.slice(i + 1)) }
}

function attach (core, socket, isInitiator) {
  const stream = core.replicate(isInitiator)
  stream.pipe(socket).pipe(stream)
  stream.on('error', (err) => console.error('replication stream closed: ' + err.message))
  socket.on('error', () => {})
}

// Replicate `core` over every TCP connection made or accepted per the options.
// Prints "listening HOST:PORT" on stderr once a server is bound (port 0 picks one).
function replicateOverTcp (core, opts) {
  if (opts.listen) {
    const server = net.createServer((socket) => attach(core, socket, opts.role === null ? false : opts.role))
    server.listen(opts.listen.port, opts.listen.host, () => {
      const a = server.address()
      console.error(`listening ${a.address}:${a.port}`)
    })
  }
  for (const peer of opts.connect) {
    const socket = net.connect(peer.port, peer.host)
    attach(core, socket, opts.role === null ? true : opts.role)
  }
}

module.exports = { parseArgs, replicateOverTcp }
