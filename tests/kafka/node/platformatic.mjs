// @platformatic/kafka (pure JavaScript; speaks the API versions of Kafka 3.5 to 4.x)
// against a ringmq Kafka listener. Run by tests/kafka_node.rs:
//
//   node platformatic.mjs BOOTSTRAP admin|roundtrip|idempotent|group|timestamps
//   node platformatic.mjs BOOTSTRAP group-member TOPIC GROUP NAME   (a child of `group`)
//
// Each scenario prints what it checked and exits non-zero with FAIL: and the reason on
// the first mismatch.

import { randomBytes } from 'node:crypto'
import { fileURLToPath } from 'node:url'
import {
  Admin, Consumer, ConfigResourceTypes, FetchIsolationLevels, IncrementalAlterConfigOperationTypes,
  ListOffsetTimestamps, MessagesStreamFallbackModes, MessagesStreamModes, Producer, ProduceAcks,
  compressionsAlgorithms, connectionsApiChannel, defaultPartitioner, kListApis, protocolAPIsById
} from '@platformatic/kafka'
import * as platformatic from '@platformatic/kafka'
import {
  ApiUse, check, checkReadBack, fail, groupScenario, memberSay, message, newTopic, placeBatch,
  recordJson, run, say, SESSION_MS, sleep, within
} from './common.mjs'

const SCRIPT = fileURLToPath(import.meta.url)
const apiUse = new ApiUse()
// Requests sent and not yet answered, so that a failure (the client's "Request timed
// out" names no request) says which request on which connection the broker left
// unanswered.
const unanswered = new Map()
const started = Date.now()
connectionsApiChannel.start.subscribe(ctx => {
  if (ctx?.apiKey !== undefined) apiUse.add(protocolAPIsById[ctx.apiKey], ctx.apiVersion)
  if (ctx?.connection && ctx.correlationId !== undefined) unanswered.set(ctx, Date.now())
})
connectionsApiChannel.asyncStart.subscribe(ctx => unanswered.delete(ctx))
process.on('exit', code => {
  if (code === 0 || unanswered.size === 0) return
  const now = Date.now()
  for (const [ctx, at] of unanswered) {
    process.stderr.write(`unanswered: ${protocolAPIsById[ctx.apiKey]} v${ctx.apiVersion} correlation id ${ctx.correlationId} ` +
      `on connection ${ctx.connection.socket?.localPort ?? '?'} -> ${ctx.connection.host}:${ctx.connection.port}, ` +
      `sent ${at - started} ms after start, ${now - at} ms ago\n`)
  }
})

const base = (bootstrap, clientId) => ({ clientId, bootstrapBrokers: [bootstrap] })

/** Every code, id and message in a client error and the errors it wraps. */
function errorText (e, depth = 0) {
  if (!e || depth > 5) return ''
  const parts = [e.code, e.apiId, e.message, e.serverErrorMessage]
  for (const inner of [e.cause, ...(e.errors ?? [])]) parts.push(errorText(inner, depth + 1))
  return parts.filter(Boolean).join(' | ')
}

async function expectError (what, code, fn) {
  let err = null
  try {
    await fn()
  } catch (e) {
    err = e
  }
  check(err !== null, `${what}: succeeded, expected ${code}`)
  check(errorText(err).includes(code), () => `${what}: expected ${code}, got ${errorText(err)}`)
}

/**
 * The version the client uses for each API: the highest it implements within the
 * range the broker advertises (as the client's own choice in Base[kGetApi]).
 */
async function negotiated (client) {
  const apis = await new Promise((resolve, reject) => client[kListApis]((e, a) => (e ? reject(e) : resolve(a))))
  const out = {}
  for (const { name, minVersion, maxVersion } of apis) {
    const fn = name.slice(0, 1).toLowerCase() + name.slice(1)
    for (let v = maxVersion; v >= minVersion; v--) {
      if (platformatic[`${fn}V${v}`]) {
        out[name] = { version: v, broker: `${minVersion}-${maxVersion}` }
        break
      }
    }
    if (!out[name]) out[name] = { version: null, broker: `${minVersion}-${maxVersion}` }
  }
  return out
}

// --- producing and reading back ------------------------------------------------------

/**
 * A producer whose partitioner is the client's for keyed messages (murmur2) and round
 * robin for the rest, remembering where each message went.
 */
function recordingProducer (bootstrap, partitions, options = {}) {
  const chosen = new Map()
  let next = 0
  const producer = new Producer({
    ...base(bootstrap, `plt-producer-${randomBytes(3).toString('hex')}`),
    autocreateTopics: false,
    partitioner: (m, key) => {
      const raw = key ? defaultPartitioner(m, key) : next++
      chosen.set(m.seq, raw % partitions)
      return raw
    },
    ...options
  })
  return { producer, chosen }
}

/**
 * Produces messages from..from+count-1 with `tag`, `perSend` per send() call, one send
 * at a time; returns where each went (seq -> {partition, offset}) from the answers.
 */
async function produce (bootstrap, topic, partitions, from, count, tag, { compression, perSend = 250, rp = null } = {}) {
  const own = rp === null
  const { producer, chosen } = rp ?? recordingProducer(bootstrap, partitions)
  const placed = new Map()
  for (let start = from; start < from + count; start += perSend) {
    const seqs = []
    const messages = []
    for (let i = start; i < Math.min(from + count, start + perSend); i++) {
      const m = message(i, tag)
      seqs.push(i)
      messages.push({
        seq: i,
        topic,
        key: m.key ?? undefined,
        value: m.value,
        headers: new Map(m.headers.map(([k, v]) => [Buffer.from(k), v]))
      })
    }
    const answer = await producer.send({ messages, acks: ProduceAcks.ALL, ...(compression ? { compression } : {}) })
    const bases = new Map()
    for (const o of answer.offsets ?? []) {
      check(o.topic === topic, () => `produce answer for topic ${o.topic}`)
      bases.set(o.partition, Number(o.offset))
    }
    placeBatch(placed, seqs, i => chosen.get(i), bases)
  }
  if (own) await producer.close()
  return placed
}

function toRecord (partition, offset, r) {
  return {
    partition,
    offset: Number(offset),
    key: r.key ?? null,
    value: r.value ?? null,
    headers: r.headers.map(([k, v]) => [Buffer.from(k).toString(), v ?? null])
  }
}

/**
 * Reads partitions 0..partitions-1 of a topic from offset 0 to their ends with the
 * client's fetch API (no group): the records, and the batches as stored.
 */
async function readAll (bootstrap, topic, partitions) {
  const consumer = new Consumer({
    ...base(bootstrap, 'plt-reader'),
    groupId: `unused-${randomBytes(4).toString('hex')}`,
    isolationLevel: FetchIsolationLevels.READ_UNCOMMITTED
  })
  const md = await consumer.metadata({ topics: [topic], forceUpdate: true })
  const t = md.topics.get(topic)
  check(t && t.partitionsCount === partitions, () => `metadata of ${topic}: ${t?.partitionsCount} partitions, expected ${partitions}`)
  const ends = (await consumer.listOffsets({ topics: [topic], timestamp: ListOffsetTimestamps.LATEST })).get(topic).map(Number)
  // Fetch names topics by id from v13 on, by name before (the client's fetch() puts
  // whatever it is given in that field).
  const fetchVersion = (await negotiated(consumer)).Fetch.version
  const topicField = fetchVersion >= 13 ? t.id : topic
  const next = Array(partitions).fill(0)
  const records = []
  const batches = []
  const deadline = Date.now() + 40000
  while (next.some((o, p) => o < ends[p])) {
    check(Date.now() < deadline, () => `reading ${topic}: at ${JSON.stringify(next)} of ${JSON.stringify(ends)} after 40 s`)
    const wanted = [...next.keys()].filter(p => next[p] < ends[p])
    const leader = t.partitions[wanted[0]].leader
    const res = await consumer.fetch({
      node: leader,
      maxWaitTime: 500,
      topics: [{
        topicId: topicField,
        partitions: wanted.map(p => ({ partition: p, fetchOffset: BigInt(next[p]), partitionMaxBytes: 1 << 20, currentLeaderEpoch: -1, lastFetchedEpoch: -1 }))
      }]
    })
    for (const tr of res.responses) {
      for (const pr of tr.partitions) {
        check(pr.errorCode === 0, () => `fetch ${topic}/${pr.partitionIndex}: error ${pr.errorCode}`)
        const p = pr.partitionIndex
        check(Number(pr.highWatermark) === ends[p], () => `fetch ${topic}/${p}: high watermark ${pr.highWatermark}, ListOffsets said ${ends[p]}`)
        for (const batch of pr.records ?? []) {
          const first = Number(batch.firstOffset)
          if (first + batch.lastOffsetDelta < next[p]) continue
          batches.push({ partition: p, first, count: batch.records.length, codec: batch.attributes & 7, last: first + batch.lastOffsetDelta, producerId: batch.producerId, producerEpoch: batch.producerEpoch, firstSequence: batch.firstSequence })
          for (const r of batch.records) {
            const offset = first + r.offsetDelta
            if (offset < next[p]) continue
            records.push({ ...toRecord(p, offset, r), timestamp: batch.firstTimestamp + r.timestampDelta })
          }
          next[p] = Math.max(next[p], first + batch.lastOffsetDelta + 1)
        }
      }
    }
  }
  await consumer.close()
  return { records, batches, fetchVersion }
}

// --- scenarios -------------------------------------------------------------------------

async function admin (bootstrap) {
  const a = new Admin(base(bootstrap, 'plt-admin'))
  const versions = await negotiated(a)
  say(`platformatic: versions it uses against this broker: ${['ApiVersions', 'Metadata', 'Produce', 'Fetch', 'ListOffsets', 'CreateTopics', 'DeleteTopics', 'CreatePartitions', 'InitProducerId', 'FindCoordinator', 'JoinGroup', 'SyncGroup', 'Heartbeat', 'LeaveGroup', 'OffsetCommit', 'OffsetFetch', 'DescribeConfigs', 'IncrementalAlterConfigs']
    .map(n => `${n} ${versions[n] ? `v${versions[n].version ?? 'none'} (broker ${versions[n].broker})` : 'not offered'}`).join(', ')}`)
  const topic = newTopic('plt-admin')
  const [created] = await a.createTopics({
    topics: [topic],
    partitions: 3,
    replicas: 1,
    configs: [{ name: 'retention.ms', value: '3600000' }, { name: 'segment.bytes', value: '16777216' }]
  })
  check(created.name === topic && created.partitions === 3 && created.replicas === 1,
    () => `createTopics answered ${JSON.stringify(created)}`)
  check(/^[0-9a-f-]{36}$/.test(created.id) && created.id !== '00000000-0000-0000-0000-000000000000',
    () => `createTopics answered topic id ${created.id}`)
  check(created.configuration['retention.ms'] === '3600000' && created.configuration['segment.bytes'] === '16777216',
    () => `createTopics answered configs ${JSON.stringify(created.configuration)} (v5+ answers the topic's configs)`)
  check((await a.listTopics()).includes(topic), `listTopics lacks ${topic}`)
  const md = await a.metadata({ topics: [topic], forceUpdate: true })
  const t = md.topics.get(topic)
  check(t.id === created.id && t.partitionsCount === 3 && t.partitions.every(p => p.leader === 0 && p.replicas.length === 1),
    () => `metadata of ${topic}: ${JSON.stringify(t, (_k, v) => (typeof v === 'bigint' ? String(v) : v))}`)
  const broker = md.brokers.get(0)
  check(broker && `${broker.host}:${broker.port}` === bootstrap, () => `metadata brokers: ${JSON.stringify([...md.brokers.entries()])}`)
  await expectError('creating an existing topic', 'TOPIC_ALREADY_EXISTS', () => a.createTopics({ topics: [topic], partitions: 1, replicas: 1 }))
  await expectError('a topic with retention.ms=soon', 'INVALID_CONFIG',
    () => a.createTopics({ topics: [newTopic('plt-bad')], partitions: 1, replicas: 1, configs: [{ name: 'retention.ms', value: 'soon' }] }))
  const describe = async () => {
    const [d] = await a.describeConfigs({ resources: [{ resourceType: ConfigResourceTypes.TOPIC, resourceName: topic, configurationKeys: ['retention.ms', 'segment.bytes'] }] })
    return Object.fromEntries(d.configs.map(c => [c.name, c.value]))
  }
  let cfg = await describe()
  check(cfg['retention.ms'] === '3600000' && cfg['segment.bytes'] === '16777216', () => `describeConfigs: ${JSON.stringify(cfg)}`)
  await a.incrementalAlterConfigs({
    resources: [{
      resourceType: ConfigResourceTypes.TOPIC,
      resourceName: topic,
      configs: [
        { name: 'retention.ms', configOperation: IncrementalAlterConfigOperationTypes.SET, value: '7200000' },
        { name: 'segment.bytes', configOperation: IncrementalAlterConfigOperationTypes.DELETE, value: null }
      ]
    }]
  })
  cfg = await describe()
  check(cfg['retention.ms'] === '7200000' && cfg['segment.bytes'] !== '16777216', () => `after incrementalAlterConfigs: ${JSON.stringify(cfg)}`)
  say(`platformatic admin: created ${topic} (3 partitions, 2 configs, id ${created.id}), listed it, metadata (leader 0, ` +
    'the same topic id), duplicate refused (TOPIC_ALREADY_EXISTS), bad config refused (INVALID_CONFIG), configs described, ' +
    'altered incrementally (SET and DELETE)')
  await a.createPartitions({ topics: [{ name: topic, count: 5 }] })
  const md5 = await a.metadata({ topics: [topic], forceUpdate: true })
  check(md5.topics.get(topic).partitionsCount === 5, () => `after createPartitions to 5: ${md5.topics.get(topic).partitionsCount}`)
  await expectError('lowering the partition count to 2', 'INVALID_PARTITIONS', () => a.createPartitions({ topics: [{ name: topic, count: 2 }] }))
  const producer = new Producer({ ...base(bootstrap, 'plt-admin-producer'), autocreateTopics: false })
  const answer = await producer.send({ messages: [{ topic, partition: 4, value: Buffer.from('on a new partition') }], acks: ProduceAcks.ALL })
  check(answer.offsets?.length === 1 && answer.offsets[0].partition === 4 && answer.offsets[0].offset === 0n,
    () => `produce to partition 4: ${JSON.stringify(answer, (_k, v) => (typeof v === 'bigint' ? String(v) : v))}`)
  await producer.close()
  await a.deleteTopics({ topics: [topic] })
  check(!(await a.listTopics()).includes(topic), 'deleted topic still listed')
  await expectError('deleting a deleted topic', 'UNKNOWN_TOPIC_OR_PARTITION', () => a.deleteTopics({ topics: [topic] }))
  await a.close()
  say('platformatic admin: raised partitions 3 -> 5 (a record on partition 4 at offset 0), refused 5 -> 2 (INVALID_PARTITIONS), ' +
    'deleted the topic, deleting it again refused (UNKNOWN_TOPIC_OR_PARTITION)')
}

async function roundtrip (bootstrap) {
  const a = new Admin(base(bootstrap, 'plt-roundtrip'))
  // The codecs this client has without native add-ons (zstd needs a Node.js with zlib's zstd).
  const codecs = ['none', 'gzip', 'snappy', 'lz4', 'zstd'].filter(c => compressionsAlgorithms[c].available)
  for (const codec of codecs) {
    const topic = newTopic(`plt-${codec}`)
    await a.createTopics({ topics: [topic], partitions: 4, replicas: 1 })
    const n = 3000
    const placed = await produce(bootstrap, topic, 4, 0, n, codec, { compression: codec === 'none' ? undefined : codec })
    const { records, batches } = await readAll(bootstrap, topic, 4)
    checkReadBack(`platformatic ${codec}`, placed, records, codec)
    // Stored as sent: every batch compressed with the codec it was produced with.
    const bits = codec === 'none' ? 0 : compressionsAlgorithms[codec].bitmask
    check(batches.every(b => b.codec === bits), () => `batches stored with codecs ${[...new Set(batches.map(b => b.codec))]}, produced with ${bits}`)
  }
  if (!compressionsAlgorithms.zstd.available) say(`platformatic: zstd not tested: this Node.js (${process.version}) has no zstd in zlib`)
  await a.close()
}

async function idempotent (bootstrap) {
  const a = new Admin(base(bootstrap, 'plt-idempotent'))
  const topic = newTopic('plt-idem')
  await a.createTopics({ topics: [topic], partitions: 1, replicas: 1 })
  const p1 = recordingProducer(bootstrap, 1, { idempotent: true })
  const p2 = recordingProducer(bootstrap, 1, { idempotent: true })
  const [a1, a2] = await Promise.all([
    produce(bootstrap, topic, 1, 0, 1500, 'idem', { rp: p1, perSend: 50 }),
    produce(bootstrap, topic, 1, 100000, 1500, 'idem', { rp: p2, perSend: 50 })
  ])
  const placed = new Map([...a1, ...a2])
  const ids = [p1.producer.producerId, p2.producer.producerId]
  check(ids[0] !== undefined && ids[1] !== undefined && ids[0] !== ids[1], `producer ids ${ids}`)
  let { records, batches } = await readAll(bootstrap, topic, 1)
  checkReadBack('platformatic two idempotent producers', placed, records, 'idem')
  // Producer 1 restarts: closed, and a new instance (a new producer id) goes on.
  const epoch1 = p1.producer.producerEpoch
  await p1.producer.close()
  const p3 = recordingProducer(bootstrap, 1, { idempotent: true })
  for (const [i, p] of await produce(bootstrap, topic, 1, 1500, 500, 'idem', { rp: p3, perSend: 50 })) placed.set(i, p)
  for (const [i, p] of await produce(bootstrap, topic, 1, 101500, 500, 'idem', { rp: p2, perSend: 50 })) placed.set(i, p)
  const id3 = p3.producer.producerId
  check(id3 !== ids[0] && id3 !== ids[1], `the restarted producer got id ${id3}, already used by ${ids}`)
  const producers = new Map([[ids[0], epoch1], [ids[1], p2.producer.producerEpoch], [id3, p3.producer.producerEpoch]])
  await p2.producer.close()
  await p3.producer.close()
  ;({ records, batches } = await readAll(bootstrap, topic, 1))
  checkReadBack('platformatic idempotent after a producer restart', placed, records, 'idem')
  // Each stored batch carries its producer's id, epoch and sequence: 0, 50, 100, ...
  const nextSeq = new Map()
  for (const b of batches) {
    check(producers.has(b.producerId) && producers.get(b.producerId) === b.producerEpoch,
      () => `batch at ${b.first}: producer ${b.producerId} epoch ${b.producerEpoch}, expected one of ${[...producers.entries()].join(' ')}`)
    const want = nextSeq.get(b.producerId) ?? 0
    check(b.firstSequence === want, () => `batch at ${b.first} of producer ${b.producerId}: sequence ${b.firstSequence}, expected ${want}`)
    nextSeq.set(b.producerId, want + b.count)
  }
  const order = records.map(r => Number(r.headers[0][1].toString()) >= 100000)
  const switches = order.filter((b, j) => j > 0 && b !== order[j - 1]).length
  await a.close()
  say(`platformatic idempotent: ${batches.length} batches, each with its producer's id, epoch and next sequence ` +
    `(${[...nextSeq.entries()].map(([id, n]) => `${id}: ${n}`).join(', ')}); the log switches producers ${switches} times`)
  say('platformatic idempotent: 2 producers x 1500 at once, then one restarted: 4000 records, each stored once, in each producer\'s order')
}

async function timestamps (bootstrap) {
  const a = new Admin(base(bootstrap, 'plt-timestamps'))
  const topic = newTopic('plt-ts')
  await a.createTopics({ topics: [topic], partitions: 2, replicas: 1 })
  const first = BigInt(Date.now() - 1_000_000)
  // 30 records on partition 0, 1 s apart, in three produce requests; record 20 carries
  // the largest timestamp (CreateTime need not grow with the offset).
  const ts = i => (i === 20 ? first + 500_000n : first + BigInt(i) * 1000n)
  const producer = new Producer({ ...base(bootstrap, 'plt-ts-producer'), autocreateTopics: false })
  for (let s = 0; s < 30; s += 10) {
    const messages = []
    for (let i = s; i < s + 10; i++) messages.push({ topic, partition: 0, value: Buffer.from(`ts-${i}`), timestamp: ts(i) })
    const answer = await producer.send({ messages, acks: ProduceAcks.ALL })
    check(answer.offsets[0].offset === BigInt(s), () => `produce answer offset ${answer.offsets[0].offset}, expected ${s}`)
  }
  await producer.close()
  const lookup = async (partition, timestamp) => {
    const [t] = await a.listOffsets({ topics: [{ name: topic, partitions: [{ partitionIndex: partition, timestamp }] }] })
    return t.partitions[0]
  }
  // [timestamp asked, offset and timestamp Kafka answers, what]
  const cases = [
    [first - 5000n, 0, ts(0), 'before the first record'],
    [first, 0, ts(0), 'the first record\'s timestamp'],
    [first + 10_000n, 10, ts(10), 'record 10\'s timestamp'],
    [first + 10_500n, 11, ts(11), 'between records 10 and 11'],
    [first + 25_500n, 20, ts(20), 'after record 25 but below record 20\'s'],
    [first + 500_000n, 20, ts(20), 'the largest timestamp (record 20)'],
    [first + 600_000n, -1, -1n, 'after every record: none']
  ]
  for (const [t, offset, timestamp, what] of cases) {
    const got = await lookup(0, t)
    check(got.offset === BigInt(offset) && got.timestamp === timestamp,
      () => `ListOffsets for ${what} (t = first + ${t - first} ms): offset ${got.offset}, timestamp ${got.timestamp}; expected offset ${offset}, timestamp ${timestamp}`)
  }
  const empty = await lookup(1, first)
  check(empty.offset === -1n, () => `ListOffsets by timestamp on an empty partition: offset ${empty.offset}, expected -1`)
  const earliest = await lookup(0, ListOffsetTimestamps.EARLIEST)
  const latest = await lookup(0, ListOffsetTimestamps.LATEST)
  check(earliest.offset === 0n && latest.offset === 30n, () => `earliest ${earliest.offset}, latest ${latest.offset}`)
  // KIP-734 (ListOffsets v7): -3 asks for the record with the largest timestamp.
  const v = (await negotiated(a)).ListOffsets
  let maxTs = `not asked: the broker's ListOffsets goes to v${v.broker.split('-')[1]}, -3 needs v7`
  if (v.version >= 7) {
    const got = await lookup(0, -3n)
    check(got.offset === 20n && got.timestamp === ts(20), () => `ListOffsets -3 (max timestamp): offset ${got.offset}, timestamp ${got.timestamp}; expected 20, ${ts(20)}`)
    maxTs = 'max timestamp (-3): record 20'
  }
  await a.close()
  say(`platformatic timestamps (ListOffsets v${v.version}): ${cases.length} lookups by timestamp answered the first record at or ` +
    `after each with its timestamp, -1 after the last; an empty partition -1; earliest 0, latest 30; ${maxTs}`)
}

async function group (bootstrap) {
  const a = new Admin(base(bootstrap, 'plt-group'))
  const partitionsOf = new Map()
  await groupScenario(bootstrap, {
    name: 'platformatic',
    script: SCRIPT,
    createTopic: async (topic, partitions) => {
      partitionsOf.set(topic, partitions)
      await a.createTopics({ topics: [topic], partitions, replicas: 1 })
    },
    produce: (topic, from, count, tag) => produce(bootstrap, topic, partitionsOf.get(topic), from, count, tag),
    committed: async (groupId, topic) => {
      const [g] = await a.listConsumerGroupOffsets({ groups: [groupId] })
      const t = g.topics.find(x => x.name === topic)
      check(t, () => `no committed offsets for ${topic}: ${JSON.stringify(g, (_k, v) => (typeof v === 'bigint' ? String(v) : v))}`)
      return t.partitions.sort((x, y) => x.partitionIndex - y.partitionIndex).map(p => Number(p.committedOffset))
    },
    endOffsets: async topic => {
      const [t] = await a.listOffsets({ topics: [{ name: topic, partitions: [...Array(partitionsOf.get(topic)).keys()].map(p => ({ partitionIndex: p, timestamp: -1n })) }] })
      return t.partitions.sort((x, y) => x.partitionIndex - y.partitionIndex).map(p => Number(p.offset))
    },
    readAsNewMember: async (topic, groupId, count) => {
      const consumer = new Consumer({ ...base(bootstrap, 'plt-resume'), groupId, sessionTimeout: SESSION_MS, heartbeatInterval: 500, maxWaitTime: 300 })
      const stream = await consumer.consume({
        topics: [topic], mode: MessagesStreamModes.COMMITTED, fallbackMode: MessagesStreamFallbackModes.EARLIEST, autocommit: false
      })
      const got = []
      let enough = null
      let failed = null
      stream.on('data', m => {
        got.push(toRecord(m.partition, m.offset, { key: m.key, value: m.value, headers: [...m.headers.entries()] }))
        if (got.length >= count && enough === null) enough = Date.now()
      })
      stream.on('error', e => { failed = e })
      const deadline = Date.now() + 40000
      while ((enough === null || Date.now() - enough < 1000) && Date.now() < deadline && !failed) await sleep(50)
      check(!failed, () => `the new member's stream failed: ${errorText(failed)}`)
      await stream.close()
      await consumer.close()
      return got
    }
  })
  await a.close()
}

/**
 * One member of a group (a child of `group`): reports each assignment with its
 * generation, and every record; commits what it has read every 200 ms, one commit at a
 * time. SIGTERM stops it: it closes its stream, commits, and leaves the group.
 */
async function groupMember (bootstrap, topic, groupId, name) {
  const consumer = new Consumer({
    ...base(bootstrap, name),
    groupId,
    sessionTimeout: SESSION_MS,
    heartbeatInterval: 500,
    rebalanceTimeout: 20000,
    maxWaitTime: 300,
    autocommit: false
  })
  // The last record read on each partition, not yet committed: its commit function.
  const pending = new Map()
  consumer.on('consumer:group:join', p => {
    const mine = (p.assignments ?? []).find(x => x.topic === topic)?.partitions ?? []
    for (const partition of [...pending.keys()]) if (!mine.includes(partition)) pending.delete(partition)
    memberSay(name, 'assign', { generation: p.generationId, partitions: [...mine].sort((x, y) => x - y) })
  })
  consumer.on('consumer:heartbeat:error', p => memberSay(name, 'log', { message: 'heartbeat error', error: errorText(p.error) }))
  // Commits one after another: a commit must not overtake an older one of the same
  // partition (the older offset would be the one left committed).
  let committing = Promise.resolve()
  const commit = () => {
    committing = committing.then(async () => {
      const commits = [...pending.values()]
      pending.clear()
      for (const c of commits) {
        try {
          await c()
        } catch (e) {
          memberSay(name, 'log', { message: 'commit failed', error: errorText(e) })
        }
      }
    })
    return committing
  }
  const stream = await consumer.consume({
    topics: [topic], mode: MessagesStreamModes.COMMITTED, fallbackMode: MessagesStreamFallbackModes.EARLIEST, autocommit: false
  })
  stream.on('data', m => {
    memberSay(name, 'msg', recordJson(toRecord(m.partition, m.offset, { key: m.key, value: m.value, headers: [...m.headers.entries()] })))
    pending.set(m.partition, m.commit)
  })
  stream.on('error', e => memberSay(name, 'error', { error: errorText(e) }))
  const timer = setInterval(commit, 200)
  let stopping = false
  process.on('SIGTERM', async () => {
    if (stopping) return
    stopping = true
    clearInterval(timer)
    await stream.close()
    await commit()
    await consumer.close()
    memberSay(name, 'closed')
    process.exit(0)
  })
  await new Promise(() => {})
}

run(async ([bootstrap, scenario, ...args]) => {
  if (!bootstrap || !scenario) fail('usage: platformatic.mjs BOOTSTRAP admin|roundtrip|idempotent|group|timestamps')
  const scenarios = { admin, roundtrip, idempotent, group, timestamps }
  if (scenario === 'group-member') {
    await groupMember(bootstrap, ...args)
    return
  }
  check(scenarios[scenario], `unknown scenario ${scenario}`)
  await within(75000, `platformatic ${scenario}`, scenarios[scenario](bootstrap))
  apiUse.print('platformatic')
})
