// A real @hyperswarm/secret-stream peer for hyperpi's tests: it echoes every message back.
//
//   node secret-stream-echo.js listen <initiator|responder>        (prints {"event":"listening","port":N})
//   node secret-stream-echo.js connect <port> <initiator|responder>
//
// Prints one JSON line per event: listening, handshake (keys and hash, hex), message (hex),
// close (with the error message, if any). Serves one connection, then exits.
const net = require('net')
const NoiseSecretStream = require('@hyperswarm/secret-stream')

const [mode, a, b] = process.argv.slice(2)
const print = (o) => process.stdout.write(JSON.stringify(o) + '\n')

function run (socket, isInitiator) {
  const stream = new NoiseSecretStream(isInitiator, socket, { keepAlive: 5000 })
  stream.on('handshake', () => {
    print({
      event: 'handshake',
      publicKey: stream.publicKey.toString('hex'),
      remotePublicKey: stream.remotePublicKey.toString('hex'),
      handshakeHash: stream.handshakeHash.toString('hex')
    })
  })
  stream.on('data', (data) => {
    print({ event: 'message', hex: data.toString('hex') })
    stream.write(data)
  })
  stream.on('error', (err) => print({ event: 'error', message: err.message }))
  stream.on('close', () => {
    print({ event: 'close' })
    process.exit(0)
  })
}

if (mode === 'listen') {
  const server = net.createServer((socket) => {
    server.close()
    run(socket, a === 'initiator')
  })
  server.listen(0, '127.0.0.1', () => print({ event: 'listening', port: server.address().port }))
} else if (mode === 'connect') {
  const socket = net.connect(Number(a), '127.0.0.1')
  run(socket, b === 'initiator')
} else {
  console.error('usage: secret-stream-echo.js listen <role> | connect <port> <role>')
  process.exit(2)
}
