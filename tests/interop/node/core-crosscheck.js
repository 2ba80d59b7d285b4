// Cross-check for hyperpi's core: append the given batches with real hypercore 11 from a
// seed and print, after each append, what hyperpi must reproduce byte for byte.
// Usage: echo '{"seed": hex, "compat": bool, "batches": [[hex, ...], ...]}' | node core-crosscheck.js DIR
const Hypercore = require('hypercore')
const crypto = require('hypercore-crypto')
const { MerkleTree } = require('hypercore/lib/merkle-tree')

const hex = (b) => Buffer.from(b).toString('hex')

async function main () {
  const input = JSON.parse(require('fs').readFileSync(0, 'utf8'))
  const keyPair = crypto.keyPair(Buffer.from(input.seed, 'hex'))
  const core = new Hypercore(process.argv[2], { keyPair, compat: input.compat === true })
  await core.ready()
  const states = []
  for (const batch of input.batches) {
    await core.append(batch.map((b) => Buffer.from(b, 'hex')))
    const roots = await MerkleTree.getRoots(core.state, core.length)
    states.push({
      length: core.length,
      byteLength: core.byteLength,
      roots: roots.map((n) => ({ index: n.index, size: n.size, hash: hex(n.hash) })),
      treeHash: hex(crypto.tree(roots)),
      signature: hex(core.state.signature)
    })
  }
  const out = { key: hex(core.key), discoveryKey: hex(core.discoveryKey), publicKey: hex(keyPair.publicKey), states }
  await core.close()
  console.log(JSON.stringify(out))
}

main().catch((err) => { console.error(err); process.exit(1) })
