// What the client scenarios share: the messages they write, the exact checks of what
// they read back, and the consumer-group scenario, which runs group members as child
// processes of the client's own script (so one can be SIGKILLed).

import { spawn } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { createInterface } from 'node:readline'

const children = new Set()

export function fail (why) {
  console.error(`FAIL: ${why}`)
  for (const c of children) {
    if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL')
  }
  process.exit(1)
}

export function check (cond, why) {
  if (!cond) fail(typeof why === 'function' ? why() : why)
}

export function say (line) {
  process.stdout.write(line + '\n')
}

export function sleep (ms) {
  return new Promise(resolve => setTimeout(resolve, ms))
}

export function newTopic (prefix) {
  return `${prefix}-${randomBytes(4).toString('hex')}`
}

/** Resolves with the promise's value, or fails the scenario after `ms`. */
export async function within (ms, what, promise) {
  let timer
  const timeout = new Promise((_resolve, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: no answer within ${ms} ms`)), ms)
  })
  try {
    return await Promise.race([promise, timeout])
  } finally {
    clearTimeout(timer)
  }
}

export async function waitFor (what, timeoutMs, cond, detail = () => '') {
  const deadline = Date.now() + timeoutMs
  while (Date.now() < deadline) {
    if (cond()) return Date.now()
    await sleep(50)
  }
  fail(`timed out after ${timeoutMs} ms waiting for ${what}${detail() ? `; ${detail()}` : ''}`)
}

// --- the messages --------------------------------------------------------------------

/**
 * Message `i` of a scenario: a key (null for every 7th), a value of varying length
 * (null for every 97th, empty for every 89th), and headers with binary values.
 * `tag` keeps messages of different scenarios apart.
 */
export function message (i, tag) {
  const key = i % 7 === 0 ? null : Buffer.from(`key-${i % 40}`)
  let value
  if (i % 97 === 0) value = null
  else if (i % 89 === 0) value = Buffer.alloc(0)
  else value = Buffer.from(`${tag}-value-${i}-${'x'.repeat(i % 300)}`)
  const headers = [
    ['seq', Buffer.from(String(i))],
    ['bin', Buffer.from([0, 1, 0xfe, 0xff, i & 0xff, (i >> 8) & 0xff])]
  ]
  if (i % 5 === 0) headers.push(['empty', Buffer.alloc(0)])
  return { key, value, headers }
}

/** The sequence number a consumed record carries in its `seq` header. */
export function seqOf (record) {
  const h = record.headers.find(([k]) => k === 'seq')
  check(h, () => `record at ${record.partition}/${record.offset} has no seq header: ${show(record)}`)
  return Number(h[1].toString())
}

const hex = b => (b === null || b === undefined ? 'null' : `0x${Buffer.from(b).toString('hex')}`)

export function show (r) {
  return `{partition ${r.partition}, offset ${r.offset}, key ${hex(r.key)}, value ${hex(r.value)?.slice(0, 40)}, ` +
    `headers ${JSON.stringify((r.headers || []).map(([k, v]) => [k, hex(v)]))}}`
}

const sameBytes = (a, b) =>
  (a === null || a === undefined) ? (b === null || b === undefined)
    : (b !== null && b !== undefined && Buffer.compare(Buffer.from(a), Buffer.from(b)) === 0)

/** Whether a consumed record has exactly the key, value and headers of message i. */
export function sameContent (record, i, tag) {
  const want = message(i, tag)
  if (!sameBytes(record.key, want.key) || !sameBytes(record.value, want.value)) return false
  if (record.headers.length !== want.headers.length) return false
  return want.headers.every(([k, v], j) => record.headers[j][0] === k && sameBytes(record.headers[j][1], v))
}

/**
 * Placements from a producer's answer: `sent` lists the sequence numbers of one
 * produce call in the order they were given to the client, `partitionOf(i)` where the
 * client put message i, `baseOffsets` the base offset the broker answered for each
 * partition. Within one produce request the messages of a partition form one batch in
 * their order, so message j of partition p is at base offset + j.
 */
export function placeBatch (placed, sent, partitionOf, baseOffsets) {
  const next = new Map()
  for (const i of sent) {
    const p = partitionOf(i)
    check(baseOffsets.has(p), () => `the producer's answer has no offset for partition ${p} (message ${i})`)
    const j = next.get(p) ?? 0
    next.set(p, j + 1)
    check(!placed.has(i), `message ${i} produced twice`)
    placed.set(i, { partition: p, offset: baseOffsets.get(p) + j })
  }
}

/**
 * The exact check of everything read back from a topic written only by this scenario:
 * every message produced is read once, at the partition and offset its producer was
 * told, byte-identical, in offset order within each partition, each partition's
 * offsets 0..n-1 without gaps, each key on one partition.
 */
export function checkReadBack (label, placed, got, tag) {
  check(got.length === placed.size, () => {
    const read = new Set(got.map(seqOf))
    const missing = [...placed.keys()].filter(i => !read.has(i))
    return `${label}: read ${got.length} records, ${placed.size} were produced; ${missing.length} never read ` +
      `(e.g. ${missing.slice(0, 5).map(i => `${i} at ${placed.get(i).partition}/${placed.get(i).offset}`).join(', ')})`
  })
  const seen = new Set()
  const last = new Map()
  const perPartition = new Map()
  const keyPartition = new Map()
  for (const r of got) {
    const i = seqOf(r)
    check(placed.has(i), () => `${label}: read message ${i}, which was never produced: ${show(r)}`)
    check(!seen.has(i), () => `${label}: message ${i} read twice: ${show(r)}`)
    seen.add(i)
    check(sameContent(r, i, tag), () => `${label}: message ${i} differs: read ${show(r)}, produced ${show({ partition: '?', offset: '?', ...message(i, tag) })}`)
    const want = placed.get(i)
    check(want.partition === r.partition && want.offset === r.offset,
      () => `${label}: message ${i} read at partition ${r.partition} offset ${r.offset}, the producer was told partition ${want.partition} offset ${want.offset}`)
    check(!last.has(r.partition) || last.get(r.partition) < r.offset,
      () => `${label}: partition ${r.partition}: offset ${r.offset} read after ${last.get(r.partition)}`)
    last.set(r.partition, r.offset)
    perPartition.set(r.partition, (perPartition.get(r.partition) ?? 0) + 1)
    if (r.key !== null && r.key !== undefined) {
      const k = Buffer.from(r.key).toString()
      check(!keyPartition.has(k) || keyPartition.get(k) === r.partition,
        () => `${label}: key ${k} on partitions ${keyPartition.get(k)} and ${r.partition}`)
      keyPartition.set(k, r.partition)
    }
  }
  for (const [p, n] of perPartition) {
    check(last.get(p) === n - 1, () => `${label}: partition ${p} holds ${n} records but its last offset is ${last.get(p)}`)
  }
  say(`${label}: ${got.length} records byte-identical (keys, values, headers), each at the partition and offset ` +
    `its producer was told, in order in each of ${perPartition.size} partitions (${[...perPartition.entries()].sort((a, b) => a[0] - b[0]).map(([p, n]) => `${p}:${n}`).join(' ')}), ` +
    `${keyPartition.size} keys each on one partition`)
}

/** Records `(api, version)` pairs a client used and prints them once per scenario. */
export class ApiUse {
  constructor () { this.used = new Map() }
  add (api, version) {
    if (!this.used.has(api)) this.used.set(api, new Set())
    this.used.get(api).add(version)
  }

  print (client) {
    const list = [...this.used.entries()].sort((a, b) => a[0].localeCompare(b[0]))
      .map(([api, vs]) => `${api} v${[...vs].sort((a, b) => a - b).join('/')}`)
    say(`${client}: API versions used: ${list.join(', ')}`)
  }
}

// --- consumer groups -----------------------------------------------------------------

export const GROUP_PARTITIONS = 6
export const SESSION_MS = 6000

/**
 * A member's line on stdout: one JSON object per event.
 *   {kind: 'assign', generation, partitions}   after each join and sync
 *   {kind: 'msg', partition, offset, key, value, headers}   each record (hex)
 *   {kind: 'error', error}   anything the client reported as an error
 *   {kind: 'closed'}   after a clean stop (SIGTERM): committed, left the group
 */
export function memberSay (name, kind, fields = {}) {
  say(JSON.stringify({ kind, member: name, t: Date.now(), ...fields }))
}

export function recordJson (r) {
  return {
    partition: r.partition,
    offset: Number(r.offset),
    key: r.key === null || r.key === undefined ? null : Buffer.from(r.key).toString('hex'),
    value: r.value === null || r.value === undefined ? null : Buffer.from(r.value).toString('hex'),
    headers: r.headers.map(([k, v]) => [k, v === null || v === undefined ? null : Buffer.from(v).toString('hex')])
  }
}

function recordFromJson (e) {
  const b = x => (x === null ? null : Buffer.from(x, 'hex'))
  return { partition: e.partition, offset: e.offset, key: b(e.key), value: b(e.value), headers: e.headers.map(([k, v]) => [k, b(v)]) }
}

/**
 * The consumer-group scenario, the same for every client. `c` gives the client's parts:
 *   script           this client's script (members run it in `group-member` mode)
 *   createTopic(topic, partitions)
 *   produce(topic, from, count, tag) -> Map seq -> {partition, offset}
 *   committed(group, topic) -> [committed offset of each partition]
 *   endOffsets(topic) -> [end offset of each partition]
 *   readAsNewMember(topic, group, count) -> records a new member of the group reads
 *                    (it stops once `count` are read and a little more time has passed)
 */
export async function groupScenario (bootstrap, c) {
  const topic = newTopic(`${c.name}-group`)
  const group = newTopic(`${c.name}-g`)
  const tag = 'group'
  await c.createTopic(topic, GROUP_PARTITIONS)
  const placed = await c.produce(topic, 0, 3000, tag)

  const events = []
  const procs = new Map()
  const killed = new Set()
  const start = name => {
    const proc = spawn(process.execPath, [c.script, bootstrap, 'group-member', topic, group, name],
      { stdio: ['ignore', 'pipe', 'pipe'] })
    children.add(proc)
    procs.set(name, proc)
    proc.once('exit', (code, signal) => {
      if (!killed.has(name)) {
        // Let its last lines arrive, then fail with them.
        setTimeout(() => fail(`member ${name} exited by itself (${code ?? signal}); its output:\n  ` +
          events.filter(e => e.member === name && e.kind !== 'msg').map(e => e.line ?? JSON.stringify(e)).join('\n  ')), 200)
      }
    })
    for (const [stream, kind] of [[proc.stdout, 'json'], [proc.stderr, 'stderr']]) {
      createInterface({ input: stream }).on('line', line => {
        let e
        if (kind === 'json') {
          try { e = JSON.parse(line) } catch { e = null }
        }
        // Node.js's own warnings are not the client's errors; anything else a member
        // prints outside its JSON lines (a stack trace) is.
        const other = kind === 'stderr' && line.startsWith('(node:') ? 'warning' : 'output'
        events.push(e ?? { kind: other, member: name, t: Date.now(), line })
      })
    }
  }
  const others = () => events.filter(e => e.kind !== 'msg').slice(-30).map(e => JSON.stringify(e)).join('\n  ')
  // Each generation's assignments as the members reported them.
  const generations = () => {
    const g = new Map()
    for (const e of events) {
      if (e.kind !== 'assign') continue
      if (!g.has(e.generation)) g.set(e.generation, new Map())
      g.get(e.generation).set(e.member, e.partitions)
    }
    return g
  }
  // The newest generation in which exactly `members` hold every partition, each some.
  // Newest, not first: when a member is slow to start, the first generation can be
  // formed by the other two alone (m1 and m2 sharing all 6 before m0 joins), and that
  // early generation must not hide the one formed after m0 is killed.
  const spreadAmong = members => {
    for (const [gen, m] of [...generations()].sort((x, y) => y[0] - x[0])) {
      if (m.size !== members.length || !members.every(x => m.has(x) && m.get(x).length > 0)) continue
      const all = [...m.values()].flat().sort((a, b) => a - b)
      if (all.length === GROUP_PARTITIONS && all.every((p, i) => p === i)) return { gen, m }
    }
    return null
  }
  const consumedSeqs = () => new Set(events.filter(e => e.kind === 'msg').map(e => seqOf(recordFromJson(e))))
  const noErrors = () => {
    const bad = events.filter(e => e.kind === 'error' || e.kind === 'output')
    check(bad.length === 0, () => `a member reported errors:\n  ${bad.slice(0, 10).map(e => JSON.stringify(e)).join('\n  ')}`)
  }

  // Waits, failing at once when a member reports an error.
  const wait = (what, ms, cond, detail) => waitFor(what, ms, () => { noErrors(); return cond() }, detail)

  const t0 = Date.now()
  for (const name of ['m0', 'm1', 'm2']) start(name)
  await wait('3 members to share the 6 partitions', 30000, () => spreadAmong(['m0', 'm1', 'm2']), others)
  const three = spreadAmong(['m0', 'm1', 'm2'])
  say(`${c.name} group: 3 members share ${GROUP_PARTITIONS} partitions in generation ${three.gen}: ` +
    `${[...three.m.entries()].sort().map(([m, ps]) => `${m} ${JSON.stringify(ps)}`).join(', ')} ` +
    `(${((Date.now() - t0) / 1000).toFixed(1)} s after starting)`)
  await wait('the first 3000 records to be consumed', 30000, () => consumedSeqs().size >= 3000,
    () => `${consumedSeqs().size} consumed; ${others()}`)
  noErrors()

  // SIGKILL a member: no LeaveGroup; only its session timeout tells the coordinator.
  const victim = 'm0'
  killed.add(victim)
  procs.get(victim).kill('SIGKILL')
  await new Promise(resolve => procs.get(victim).exitCode !== null || procs.get(victim).signalCode !== null ? resolve() : procs.get(victim).once('exit', resolve))
  const tKill = Date.now()
  await wait('the two survivors to hold all 6 partitions', SESSION_MS * 3,
    () => { const s = spreadAmong(['m1', 'm2']); return s && s.gen > three.gen }, others)
  const two = spreadAmong(['m1', 'm2'])
  const moved = three.m.get(victim)
  say(`${c.name} group: after a SIGKILL of ${victim}, its partitions ${JSON.stringify(moved)} moved to the others in ` +
    `${((Date.now() - tKill) / 1000).toFixed(1)} s (session timeout ${SESSION_MS / 1000} s): generation ${two.gen}: ` +
    `${[...two.m.entries()].sort().map(([m, ps]) => `${m} ${JSON.stringify(ps)}`).join(', ')}`)

  for (const [i, p] of await c.produce(topic, 3000, 3000, tag)) placed.set(i, p)
  await wait('all 6000 records to be consumed', 30000, () => consumedSeqs().size >= 6000,
    () => `${consumedSeqs().size} consumed; ${others()}`)
  // A clean stop: each survivor commits what it read and leaves the group.
  for (const name of ['m1', 'm2']) {
    killed.add(name)
    procs.get(name).kill('SIGTERM')
  }
  await waitFor('the survivors to stop', 30000,
    () => ['m1', 'm2'].every(n => procs.get(n).exitCode !== null || procs.get(n).signalCode !== null), others)
  for (const name of ['m1', 'm2']) {
    check(procs.get(name).exitCode === 0, () => `${name} exited with ${procs.get(name).exitCode ?? procs.get(name).signalCode}; ${others()}`)
    check(events.some(e => e.kind === 'closed' && e.member === name), () => `${name} did not report a clean close; ${others()}`)
  }
  noErrors()

  // No partition held by two members in one generation.
  for (const [gen, m] of generations()) {
    const owner = new Map()
    for (const [member, ps] of m) {
      for (const p of ps) {
        check(!owner.has(p), () => `generation ${gen}: partition ${p} assigned to ${owner.get(p)} and ${member}`)
        owner.set(p, member)
      }
    }
  }
  // Every record consumed, each exactly as produced and where its producer was told;
  // records the victim read but had not committed may be read again by its successor.
  const byMember = new Map()
  for (const e of events.filter(e => e.kind === 'msg')) {
    const r = recordFromJson(e)
    const i = seqOf(r)
    const want = placed.get(i)
    check(want, () => `${e.member} read message ${i}, which was never produced`)
    check(sameContent(r, i, tag), () => `${e.member}: message ${i} differs: ${show(r)}`)
    check(want.partition === r.partition && want.offset === r.offset,
      () => `${e.member}: message ${i} at ${r.partition}/${r.offset}, the producer was told ${want.partition}/${want.offset}`)
    byMember.set(e.member, (byMember.get(e.member) ?? 0) + 1)
  }
  const consumed = consumedSeqs()
  const missing = [...placed.keys()].filter(i => !consumed.has(i))
  check(missing.length === 0, () => `${missing.length} records never consumed, e.g. ${missing.slice(0, 5)}`)
  const total = [...byMember.values()].reduce((a, b) => a + b, 0)
  say(`${c.name} group: all 6000 records consumed exactly as produced (${[...byMember.entries()].sort().map(([m, n]) => `${m} ${n}`).join(', ')}; ` +
    `${total - 6000} read again after the kill); no partition assigned to two members in any of generations ` +
    `${[...generations().keys()].sort((a, b) => a - b).join(', ')}`)

  // The survivors committed everything: the committed offsets are the ends.
  const committed = await c.committed(group, topic)
  const ends = await c.endOffsets(topic)
  check(JSON.stringify(committed) === JSON.stringify(ends), `committed offsets ${JSON.stringify(committed)}, end offsets ${JSON.stringify(ends)}`)
  say(`${c.name} group: committed offsets are the ends: ${JSON.stringify(committed)}`)

  // A new member resumes from the committed offsets: it reads exactly what comes after.
  const after = await c.produce(topic, 6000, 600, tag)
  const t1 = Date.now()
  const got = await c.readAsNewMember(topic, group, 600)
  checkReadBackSubset(`${c.name} group resume`, after, got, tag)
  say(`${c.name} group: a new member of the group read exactly the 600 records produced after the commit ` +
    `(${((Date.now() - t1) / 1000).toFixed(1)} s including a wait for more)`)
}

/** Like checkReadBack, for records appended to partitions that held others before. */
export function checkReadBackSubset (label, placed, got, tag) {
  check(got.length === placed.size, () => `${label}: read ${got.length} records, expected exactly the ${placed.size} produced last` +
    (got.length ? `; first read ${show(got[0])}` : ''))
  const seen = new Set()
  const last = new Map()
  for (const r of got) {
    const i = seqOf(r)
    const want = placed.get(i)
    check(want, () => `${label}: read message ${i}, which is not one of the ${placed.size} produced last: ${show(r)}`)
    check(!seen.has(i), () => `${label}: message ${i} read twice`)
    seen.add(i)
    check(sameContent(r, i, tag), () => `${label}: message ${i} differs: ${show(r)}`)
    check(want.partition === r.partition && want.offset === r.offset,
      () => `${label}: message ${i} at ${r.partition}/${r.offset}, the producer was told ${want.partition}/${want.offset}`)
    check(!last.has(r.partition) || last.get(r.partition) < r.offset, () => `${label}: partition ${r.partition} out of order`)
    last.set(r.partition, r.offset)
  }
}

/** An error with every error it wraps (client errors nest: aggregate, response, protocol). */
export function describeError (e, depth = 0) {
  if (e === null || e === undefined) return String(e)
  if (typeof e !== 'object') return String(e)
  const pad = '\n' + '  '.repeat(depth + 1)
  const fields = ['type', 'code', 'apiId', 'apiCode', 'serverErrorMessage', 'path']
    .filter(k => e[k] !== undefined && e[k] !== null).map(k => `${k}=${e[k]}`)
  let out = `${depth === 0 && e.stack ? e.stack : `${e.name ?? 'Error'}: ${e.message}`}${fields.length ? ` [${fields.join(' ')}]` : ''}`
  if (depth < 4) {
    for (const inner of [...(Array.isArray(e.errors) ? e.errors : []), e.cause, e.originalError].filter(Boolean)) {
      out += pad + describeError(inner, depth + 1).split('\n').join(pad)
    }
  }
  return out
}

/** Runs `main(args)` of a client script; any exception fails the scenario. */
export function run (main) {
  main(process.argv.slice(2)).then(() => process.exit(0), e => fail(describeError(e)))
}
