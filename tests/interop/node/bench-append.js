// Append benchmark, Node side: N small JSON chat messages in batches, with hypercore 11.
// Usage: node bench-append.js <storage dir> <total> <batch>; prints one JSON line.
const Hypercore = require('hypercore')

async function main () {
  const [dir, total = '100000', batch = '1000'] = process.argv.slice(2)
  const n = Number(total)
  const size = Number(batch)
  const core = new Hypercore(dir)
  await core.ready()
  const messages = []
  for (let i = 0; i < n; i++) {
    messages.push(Buffer.from(JSON.stringify({ type: 'chat', text: 'message number ' + i, time: 1700000000000 + i, nick: 'bench' })))
  }
  const started = process.hrtime.bigint()
  for (let i = 0; i < n; i += size) {
    await core.append(messages.slice(i, i + size))
  }
  const seconds = Number(process.hrtime.bigint() - started) / 1e9
  const length = core.length
  await core.close()
  console.log(JSON.stringify({ blocks: length, seconds, rate: length / seconds }))
}

main().catch((err) => { console.error(err); process.exit(1) })
