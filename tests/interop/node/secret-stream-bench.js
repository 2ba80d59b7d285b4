// secret-stream throughput peer for tests/bench/bench_wire.py, over loopback TCP.
//   node secret-stream-bench.js recv COUNT          listens (Noise responder), prints {"port": N},
//        then {"messages": COUNT, "seconds": s} timed from the first message to the last
//   node secret-stream-bench.js send PORT COUNT SIZE  connects (Noise initiator) and writes
//        COUNT messages of SIZE bytes, honouring backpressure, then ends
const net = require('net')
const NoiseSecretStream = require('@hyperswarm/secret-stream')

const [mode, ...args] = process.argv.slice(2)
const print = (o) => process.stdout.write(JSON.stringify(o) + '\n')

if (mode === 'recv') {
  const count = Number(args[0])
  const server = net.createServer((socket) => {
    server.close()
    const stream = new NoiseSecretStream(false, socket)
    let n = 0
    let started = 0n
    stream.on('data', () => {
      if (n++ === 0) started = process.hrtime.bigint()
      if (n === count) {
        print({ messages: n, seconds: Number(process.hrtime.bigint() - started) / 1e9 })
        stream.destroy()
        process.exit(0)
      }
    })
    stream.on('error', () => {})
  })
  server.listen(0, '127.0.0.1', () => print({ port: server.address().port }))
} else if (mode === 'send') {
  const [port, count, size] = args.map(Number)
  const stream = new NoiseSecretStream(true, net.connect(port, '127.0.0.1'))
  const payload = Buffer.alloc(size, 7)
  let sent = 0
  function pump () {
    while (sent < count) {
      sent++
      if (!stream.write(payload)) return stream.once('drain', pump)
    }
    stream.end()
  }
  stream.on('error', () => {})
  stream.on('close', () => process.exit(0))
  stream.opened.then(pump)
} else {
  console.error('usage: secret-stream-bench.js recv COUNT | send PORT COUNT SIZE')
  process.exit(2)
}
