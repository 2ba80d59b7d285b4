// The tutorial's viewer: opens the feed by key (z-base-32 or hex), replicates it and prints
// every message, old ones first, then live ones. Usage:
// node single-chat-viewer.js KEY STORAGE [--json] [--exit-after N] [--listen H:P] [--connect H:P]
const Hypercore = require('hypercore')
const id = require('hypercore-id-encoding')
const { parseArgs, replicateOverTcp } = require('./peer-net')

async function main () {
  const opts = parseArgs(process.argv.slice(2))
  const [keyText, storage] = opts.rest
  const core = new Hypercore(storage || './reader-storage', id.decode(keyText), { valueEncoding: 'json' })
  await core.ready()
  replicateOverTcp(core, opts)
  let seen = 0
  for await (const msg of core.createReadStream({ live: true })) {
    console.log(opts.json ? JSON.stringify(msg) : `<${msg.nick}> ${msg.text}`)
    if (opts.exitAfter && ++seen >= opts.exitAfter) process.exit(0)
  }
}

main().catch((err) => { console.error(err); process.exit(1) })
