// A validating firehose consumer: @atproto/sync's Firehose (the reference client)
// reading SERVICE from cursor 0, checking every commit's signature and MST proof
// against identities from PLC_URL. Prints one JSON line per event or error and a
// summary when no event arrived for IDLE_MS. Exit code 1 on any validation error.
const { Firehose, MemoryRunner } = require('@atproto/sync')
const { IdResolver, MemoryCache } = require('@atproto/identity')

const service = process.env.SERVICE
const idleMs = Number(process.env.IDLE_MS || 4000)
const idResolver = new IdResolver({ plcUrl: process.env.PLC_URL, didCache: new MemoryCache(), fetch: globalThis.fetch })
const emit = (value) => process.stdout.write(JSON.stringify(value) + '\n')

const counts = {}
let errors = 0
let lastSeq = null
let lastActivity = Date.now()

const firehose = new Firehose({
  idResolver,
  service,
  runner: new MemoryRunner({ startCursor: 0 }),
  // Handles are *.test names that no resolver can verify here; commits are still authenticated.
  unauthenticatedHandles: true,
  handleEvent: async (evt) => {
    lastActivity = Date.now()
    counts[evt.event] = (counts[evt.event] || 0) + 1
    lastSeq = evt.seq
    const line = { valid: evt.event, seq: evt.seq, did: evt.did }
    if (evt.uri) line.uri = evt.uri.toString()
    if (evt.rev) line.rev = evt.rev
    if (evt.event === 'account') line.status = evt.status || (evt.active ? 'active' : 'inactive')
    emit(line)
  },
  onError: (err) => {
    lastActivity = Date.now()
    errors += 1
    emit({ error: String(err && err.message ? err.message : err), cause: String(err && err.cause ? err.cause : '') })
  },
})

firehose.start()
const timer = setInterval(async () => {
  if (Date.now() - lastActivity < idleMs) return
  clearInterval(timer)
  emit({ summary: true, counts, errors, lastSeq })
  await Promise.race([firehose.destroy(), new Promise((resolve) => setTimeout(resolve, 1000))])
  process.exit(errors > 0 ? 1 : 0)
}, 250)
