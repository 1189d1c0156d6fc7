// A real ATProto network for conformance tests: @atproto/dev-env's PLC and PDS
// (TypeScript reference implementations) on fixed loopback ports. Prints one JSON
// line when ready; on the stdin line "scenario" it drives every kind of repo and
// account event and prints a JSON line when done; "quit" shuts down.
const { TestNetworkNoAppView } = require('@atproto/dev-env')
const { AtpAgent } = require('@atproto/api')
const readline = require('readline')

const emit = (value) => process.stdout.write(JSON.stringify(value) + '\n')

async function account(net, name) {
  const agent = new AtpAgent({ service: net.pds.url })
  await agent.createAccount({ handle: `${name}.test`, email: `${name}@test.invalid`, password: `${name}-password` })
  return agent
}

const post = (agent, text) =>
  agent.com.atproto.repo.createRecord({
    repo: agent.session.did,
    collection: 'app.bsky.feed.post',
    record: { $type: 'app.bsky.feed.post', text, createdAt: new Date().toISOString() },
  })

async function scenario(net) {
  const alice = await account(net, 'alice')
  const bob = await account(net, 'bob')
  const carol = await account(net, 'carol')
  const posts = []
  for (let i = 0; i < 5; i++) posts.push((await post(alice, `alice post ${i}`)).data)
  for (let i = 0; i < 3; i++) await post(bob, `bob post ${i}`)
  await bob.com.atproto.repo.createRecord({
    repo: bob.session.did,
    collection: 'app.bsky.feed.like',
    record: { $type: 'app.bsky.feed.like', subject: posts[0], createdAt: new Date().toISOString() },
  })
  await carol.com.atproto.repo.createRecord({
    repo: carol.session.did,
    collection: 'app.bsky.graph.follow',
    record: { $type: 'app.bsky.graph.follow', subject: alice.session.did, createdAt: new Date().toISOString() },
  })
  // create, then update (putRecord on an existing key)
  for (const text of ['first bio', 'second bio']) {
    await alice.com.atproto.repo.putRecord({
      repo: alice.session.did,
      collection: 'app.bsky.actor.profile',
      rkey: 'self',
      record: { $type: 'app.bsky.actor.profile', description: text },
    })
  }
  await alice.com.atproto.repo.deleteRecord({
    repo: alice.session.did,
    collection: 'app.bsky.feed.post',
    rkey: posts[1].uri.split('/').pop(),
  })
  // several ops in one commit
  await bob.com.atproto.repo.applyWrites({
    repo: bob.session.did,
    writes: [0, 1, 2, 3, 4].map((i) => ({
      $type: 'com.atproto.repo.applyWrites#create',
      collection: 'app.bsky.feed.post',
      value: { $type: 'app.bsky.feed.post', text: `batch ${i}`, createdAt: new Date().toISOString() },
    })),
  })
  await carol.com.atproto.identity.updateHandle({ handle: 'carol2.test' })
  await bob.com.atproto.server.deactivateAccount({})
  await bob.com.atproto.server.activateAccount()
  await post(bob, 'bob is back')
  // a moderation takedown through the PDS admin API (emits #account takendown)
  await net.pds.getClient().com.atproto.admin.updateSubjectStatus(
    {
      subject: { $type: 'com.atproto.admin.defs#repoRef', did: carol.session.did },
      takedown: { applied: true, ref: 'conformance' },
    },
    { encoding: 'application/json', headers: net.pds.adminAuthHeaders() },
  )
  return { dids: [alice.session.did, bob.session.did, carol.session.did] }
}

async function main() {
  const net = await TestNetworkNoAppView.create({
    plc: { port: Number(process.env.PLC_PORT) },
    pds: { port: Number(process.env.PDS_PORT) },
  })
  emit({ ready: true, plc: net.plc.url, pds: net.pds.url })
  const lines = readline.createInterface({ input: process.stdin })
  for await (const line of lines) {
    const command = line.trim()
    if (command === 'scenario') {
      try {
        emit({ scenario: 'done', ...(await scenario(net)) })
      } catch (err) {
        emit({ scenario: 'failed', error: String(err && err.stack ? err.stack : err) })
      }
    } else if (command === 'quit') {
      break
    }
  }
  await net.close()
  process.exit(0)
}

main().catch((err) => {
  emit({ fatal: String(err && err.stack ? err.stack : err) })
  process.exit(1)
})
