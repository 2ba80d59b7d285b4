// Proof generation by real hypercore 11 for many requests, for hyperpi to compare against.
// stdin: {"seed": hex, "compat": bool, "steps": [{"append": [hex...], "requests": [req...]}]}
// where req = {block: {index, nodes}|null, hash: {index, nodes}|null, upgrade: {start, length}|null}.
// stdout: one JSON array per step: the proof, or {"error": code} where Node refuses.
const Hypercore = require('hypercore')
const crypto = require('hypercore-crypto')

const hex = (b) => Buffer.from(b).toString('hex')
const nodes = (list) => list.map((n) => ({ index: n.index, size: n.size, hash: hex(n.hash) }))

async function main () {
  const input = JSON.parse(require('fs').readFileSync(0, 'utf8'))
  const keyPair = crypto.keyPair(Buffer.from(input.seed, 'hex'))
  const core = new Hypercore(process.argv[2], { keyPair, compat: input.compat === true })
  await core.ready()
  const out = []
  for (const step of input.steps) {
    await core.append(step.append.map((b) => Buffer.from(b, 'hex')))
    const results = []
    for (const r of step.requests) {
      try {
        const p = await core.proof({ block: r.block, hash: r.hash, seek: null, upgrade: r.upgrade && { ...r.upgrade } })
        if (p.block) p.block.value = await core.get(p.block.index, { wait: false })
        results.push({
          fork: p.fork,
          block: p.block && { index: p.block.index, value: hex(p.block.value), nodes: nodes(p.block.nodes) },
          hash: p.hash && { index: p.hash.index, nodes: nodes(p.hash.nodes) },
          upgrade: p.upgrade && {
            start: p.upgrade.start,
            length: p.upgrade.length,
            nodes: nodes(p.upgrade.nodes),
            additionalNodes: nodes(p.upgrade.additionalNodes),
            signature: hex(p.upgrade.signature)
          }
        })
      } catch (err) {
        results.push({ error: err.code || err.message })
      }
    }
    out.push(results)
  }
  await core.close()
  console.log(JSON.stringify(out))
}

main().catch((err) => { console.error(err); process.exit(1) })
