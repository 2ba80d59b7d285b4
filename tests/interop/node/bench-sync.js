// Sync benchmark peer. Two modes, both replicating over plain TCP (see peer-net.js):
//   node bench-sync.js serve STORAGE COUNT --listen H:P   fills a feed with COUNT small chat blocks
//        (once), prints {"key": hex} on stdout, then serves it
//   node bench-sync.js fetch KEYHEX STORAGE --connect H:P  downloads the whole feed and prints
//        {"blocks": n, "seconds": s} measured from the first connection to the last block stored
const Hypercore = require('hypercore')
const { parseArgs, replicateOverTcp } = require('./peer-net')

async function serve (storage, count, opts) {
  const core = new Hypercore(storage, { compat: opts.compat })
  await core.ready()
  const batch = []
  for (let i = core.length; i < count; i++) {
    batch.push(Buffer.from(JSON.stringify({ type: 'chat', text: 'message ' + i, time: 1700000000000 + i, nick: 'bench' })))
    if (batch.length === 1000) await core.append(batch.splice(0))
  }
  if (batch.length) await core.append(batch)
  replicateOverTcp(core, opts)
  console.log(JSON.stringify({ key: core.key.toString('hex'), length: core.length }))
}

async function fetch (keyHex, storage, opts) {
  const core = new Hypercore(storage, Buffer.from(keyHex, 'hex'))
  await core.ready()
  const started = process.hrtime.bigint()
  replicateOverTcp(core, opts)
  await core.update({ wait: true })
  await core.download({ start: 0, end: core.length }).done()
  const seconds = Number(process.hrtime.bigint() - started) / 1e9
  // The reader's own RocksDB work (reads, writes, batches): it depends on the blocks, not on
  // which writer sent them, and it is most of a Node reader's CPU (tests/bench/bench_sync.py).
  const { gets, puts, readBatches, writeBatches } = core.state.storage.store.rocks.stats
  console.log(JSON.stringify({ blocks: core.length, seconds, storage: { gets, puts, readBatches, writeBatches } }))
  await core.close()
  process.exit(0)
}

const opts = parseArgs(process.argv.slice(2))
const [mode, a, b] = opts.rest
const run = mode === 'serve' ? serve(a, Number(b), opts) : fetch(a, b, opts)
run.catch((err) => { console.error(err); process.exit(1) })
