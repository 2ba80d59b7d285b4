// The tutorial's writer: holds the feed's secret key and appends each stdin line as a chat
// message. Usage: node single-chat.js STORAGE [--nick N] [--compat] [--listen H:P] [--connect H:P]
// Prints the feed key (z-base-32) on the first stdout line, then "appended N" per message.
const Hypercore = require('hypercore')
const id = require('hypercore-id-encoding')
const readline = require('readline')
const { parseArgs, replicateOverTcp } = require('./peer-net')

async function main () {
  const opts = parseArgs(process.argv.slice(2))
  const core = new Hypercore(opts.rest[0] || './writer-storage', { valueEncoding: 'json', compat: opts.compat })
  await core.ready()
  console.log(id.encode(core.key))
  replicateOverTcp(core, opts)
  const lines = readline.createInterface({ input: process.stdin })
  for await (const text of lines) {
    const { length } = await core.append({ type: 'chat', text, time: Date.now(), nick: opts.nick })
    console.log('appended ' + length)
  }
}

main().catch((err) => { console.error(err); process.exit(1) })
