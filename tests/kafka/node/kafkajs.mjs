// KafkaJS (pure JavaScript) against a ringmq Kafka listener. Run by tests/kafka_node.rs:
//
//   node kafkajs.mjs BOOTSTRAP admin|roundtrip|idempotent|group|timestamps
//   node kafkajs.mjs BOOTSTRAP group-member TOPIC GROUP NAME   (a child of `group`)
//
// Each scenario prints what it checked and exits non-zero with FAIL: and the reason on
// the first mismatch.

import { fileURLToPath } from 'node:url'
import kafkajs from 'kafkajs'
import {
  ApiUse, check, checkReadBack, fail, groupScenario, memberSay, message, newTopic,
  placeBatch, recordJson, run, say, SESSION_MS, sleep, within
} from './common.mjs'

const { Kafka, CompressionTypes, ConfigResourceTypes, Partitioners, logLevel } = kafkajs
const SCRIPT = fileURLToPath(import.meta.url)
const apiUse = new ApiUse()

function kafka (bootstrap, clientId, extra = {}) {
  return new Kafka({
    clientId,
    brokers: [bootstrap],
    logLevel: logLevel.WARN,
    ...extra
  })
}

function track (client) {
  client.on(client.events.REQUEST, e => apiUse.add(e.payload.apiName, e.payload.apiVersion))
  return client
}

/** Every error type and message in a KafkaJS error and the errors it wraps. */
function errorText (e, depth = 0) {
  if (!e || depth > 5) return ''
  const parts = [e.type, e.name, e.message]
  for (const inner of [e.originalError, e.cause, ...(e.errors ?? [])]) parts.push(errorText(inner, depth + 1))
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

function headersOf (m) {
  return Object.entries(m.headers ?? {}).map(([k, v]) => [k, v])
}

function toRecord (partition, m) {
  return { partition, offset: Number(m.offset), key: m.key, value: m.value, headers: headersOf(m) }
}

// --- producing and reading back ------------------------------------------------------

/** A producer that remembers which partition its partitioner chose for each message. */
function recordingProducer (client, idempotent = false) {
  const chosen = new Map()
  const producer = track(client.producer({
    idempotent,
    maxInFlightRequests: idempotent ? 1 : undefined,
    allowAutoTopicCreation: false,
    createPartitioner: () => {
      const inner = Partitioners.DefaultPartitioner()
      return args => {
        const p = inner(args)
        chosen.set(Number(args.message.headers.seq.toString()), p)
        return p
      }
    }
  }))
  return { producer, chosen }
}

/**
 * Produces messages from..from+count-1 with `tag`, `perSend` per send() call, one send
 * at a time; returns where each went (seq -> {partition, offset}) from the answers.
 */
async function produce (client, topic, from, count, tag, { compression = CompressionTypes.None, perSend = 250, rp = null } = {}) {
  const own = rp === null
  const { producer, chosen } = rp ?? recordingProducer(client)
  if (own) await producer.connect()
  const placed = new Map()
  for (let start = from; start < from + count; start += perSend) {
    const seqs = []
    const messages = []
    for (let i = start; i < Math.min(from + count, start + perSend); i++) {
      const m = message(i, tag)
      seqs.push(i)
      messages.push({ key: m.key, value: m.value, headers: Object.fromEntries(m.headers) })
    }
    const answer = await producer.send({ topic, messages, acks: -1, compression })
    const bases = new Map()
    for (const a of answer) {
      check(a.topicName === topic && a.errorCode === 0, () => `produce answer ${JSON.stringify(a)}`)
      bases.set(a.partition, Number(a.baseOffset))
    }
    placeBatch(placed, seqs, i => chosen.get(i), bases)
  }
  if (own) await producer.disconnect()
  return placed
}

/**
 * Reads every record of a topic with a consumer group of its own from the beginning,
 * until `count` are read and then one more second passes (so extra records show).
 */
async function readAll (client, topic, count, groupId = newTopic('read')) {
  const consumer = track(client.consumer({ groupId, maxWaitTimeInMs: 300, sessionTimeout: 10000 }))
  consumer.on(consumer.events.CRASH, e => fail(`reading ${topic}: the consumer crashed: ${errorText(e.payload.error)}`))
  await consumer.connect()
  await consumer.subscribe({ topics: [topic], fromBeginning: true })
  const got = []
  let enough = null
  await consumer.run({
    autoCommit: false,
    eachBatch: async ({ batch }) => {
      for (const m of batch.messages) got.push(toRecord(batch.partition, m))
      if (got.length >= count && enough === null) enough = Date.now()
    }
  })
  const deadline = Date.now() + 40000
  while ((enough === null || Date.now() - enough < 1000) && Date.now() < deadline) await sleep(50)
  await consumer.disconnect()
  return got
}

// --- scenarios -------------------------------------------------------------------------

async function admin (bootstrap) {
  const client = kafka(bootstrap, 'kafkajs-admin')
  const a = track(client.admin())
  await a.connect()
  const topic = newTopic('kjs-admin')
  const created = await a.createTopics({
    topics: [{
      topic,
      numPartitions: 3,
      replicationFactor: 1,
      configEntries: [{ name: 'retention.ms', value: '3600000' }, { name: 'segment.bytes', value: '16777216' }]
    }]
  })
  check(created === true, `createTopics answered ${created}, expected true`)
  check((await a.listTopics()).includes(topic), `listTopics lacks ${topic}`)
  const md = await a.fetchTopicMetadata({ topics: [topic] })
  const parts = md.topics[0].partitions.map(p => p.partitionId).sort()
  check(md.topics[0].name === topic && JSON.stringify(parts) === '[0,1,2]', () => `metadata of ${topic}: ${JSON.stringify(md)}`)
  check(md.topics[0].partitions.every(p => p.partitionErrorCode === 0 && p.leader === 0 && p.replicas.length === 1),
    () => `partition metadata: ${JSON.stringify(md.topics[0].partitions)}`)
  const cluster = await a.describeCluster()
  check(cluster.brokers.length === 1 && `${cluster.brokers[0].host}:${cluster.brokers[0].port}` === bootstrap,
    () => `describeCluster: ${JSON.stringify(cluster)}`)
  // Requests that must be refused, from a client that neither retries nor logs them.
  const noRetry = track(kafka(bootstrap, 'kafkajs-admin-once', { retry: { retries: 0 }, logLevel: logLevel.NOTHING }).admin())
  await noRetry.connect()
  // Creating it again: TOPIC_ALREADY_EXISTS, which KafkaJS answers with false.
  check(await noRetry.createTopics({ topics: [{ topic, numPartitions: 1 }] }) === false, 'creating an existing topic did not answer false')
  await expectError('a topic with retention.ms=soon', 'INVALID_CONFIG', () => noRetry.createTopics({
    topics: [{ topic: newTopic('kjs-bad'), numPartitions: 1, configEntries: [{ name: 'retention.ms', value: 'soon' }] }]
  }))
  const described = await a.describeConfigs({
    includeSynonyms: false,
    resources: [{ type: ConfigResourceTypes.TOPIC, name: topic, configNames: ['retention.ms', 'segment.bytes'] }]
  })
  const entries = Object.fromEntries(described.resources[0].configEntries.map(e => [e.configName, e.configValue]))
  check(described.resources[0].errorCode === 0 && entries['retention.ms'] === '3600000' && entries['segment.bytes'] === '16777216',
    () => `describeConfigs: ${JSON.stringify(described.resources)}`)
  say(`kafkajs admin: created ${topic} with 3 partitions and 2 configs, listed it, metadata (leader 0), describeCluster, ` +
    'duplicate refused (TOPIC_ALREADY_EXISTS), bad config refused (INVALID_CONFIG), configs described')
  await a.createPartitions({ topicPartitions: [{ topic, count: 5 }] })
  const md5 = await a.fetchTopicMetadata({ topics: [topic] })
  check(md5.topics[0].partitions.length === 5, () => `after createPartitions to 5: ${md5.topics[0].partitions.length} partitions`)
  await expectError('lowering the partition count to 2', 'INVALID_PARTITIONS', () => noRetry.createPartitions({ topicPartitions: [{ topic, count: 2 }] }))
  // The new partitions take records.
  const producer = track(client.producer({ createPartitioner: Partitioners.DefaultPartitioner, allowAutoTopicCreation: false }))
  await producer.connect()
  const answer = await producer.send({ topic, acks: -1, messages: [{ partition: 4, value: Buffer.from('on a new partition') }] })
  check(answer[0].partition === 4 && answer[0].baseOffset === '0' && answer[0].errorCode === 0, () => `produce to partition 4: ${JSON.stringify(answer)}`)
  await producer.disconnect()
  await a.deleteTopics({ topics: [topic] })
  check(!(await a.listTopics()).includes(topic), 'deleted topic still listed')
  await expectError('deleting a deleted topic', 'UNKNOWN_TOPIC_OR_PARTITION', () => noRetry.deleteTopics({ topics: [topic] }))
  await noRetry.disconnect()
  await a.disconnect()
  say('kafkajs admin: raised partitions 3 -> 5 (a record on partition 4 at offset 0), refused 5 -> 2 (INVALID_PARTITIONS), ' +
    'deleted the topic, deleting it again refused (UNKNOWN_TOPIC_OR_PARTITION)')
}

async function roundtrip (bootstrap) {
  const client = kafka(bootstrap, 'kafkajs-roundtrip')
  const a = track(client.admin())
  await a.connect()
  // KafkaJS compresses with gzip itself; its other codecs are plug-ins.
  for (const [name, compression] of [['none', CompressionTypes.None], ['gzip', CompressionTypes.GZIP]]) {
    const topic = newTopic(`kjs-${name}`)
    await a.createTopics({ topics: [{ topic, numPartitions: 4 }] })
    const n = 3000
    const placed = await produce(client, topic, 0, n, name, { compression })
    const got = await readAll(client, topic, n)
    checkReadBack(`kafkajs ${name}`, placed, got, name)
  }
  await a.disconnect()
}

async function idempotent (bootstrap) {
  const client = kafka(bootstrap, 'kafkajs-idempotent')
  const a = track(client.admin())
  await a.connect()
  const topic = newTopic('kjs-idem')
  await a.createTopics({ topics: [{ topic, numPartitions: 1 }] })
  // Two idempotent producers at once, each with its own producer id, one partition.
  const p1 = recordingProducer(client, true)
  const p2 = recordingProducer(client, true)
  await p1.producer.connect()
  await p2.producer.connect()
  const [a1, a2] = await Promise.all([
    produce(client, topic, 0, 1500, 'idem', { rp: p1, perSend: 50 }),
    produce(client, topic, 100000, 1500, 'idem', { rp: p2, perSend: 50 })
  ])
  const placed = new Map([...a1, ...a2])
  let got = await readAll(client, topic, 3000)
  checkReadBack('kafkajs two idempotent producers', placed, got, 'idem')
  // Producer 1 restarts: closed, and a new instance (a new producer id) goes on.
  await p1.producer.disconnect()
  const p3 = recordingProducer(client, true)
  await p3.producer.connect()
  for (const [i, p] of await produce(client, topic, 1500, 500, 'idem', { rp: p3, perSend: 50 })) placed.set(i, p)
  for (const [i, p] of await produce(client, topic, 101500, 500, 'idem', { rp: p2, perSend: 50 })) placed.set(i, p)
  await p2.producer.disconnect()
  await p3.producer.disconnect()
  got = await readAll(client, topic, 4000)
  checkReadBack('kafkajs idempotent after a producer restart', placed, got, 'idem')
  // Each producer's records in its order.
  for (const [from, to] of [[0, 2000], [100000, 102000]]) {
    const offs = [...placed.entries()].filter(([i]) => i >= from && i < to).sort((x, y) => x[0] - y[0]).map(([, p]) => p.offset)
    check(offs.every((o, j) => j === 0 || o > offs[j - 1]), `records of the producer starting at ${from} are not in its order`)
  }
  const order = [...placed.entries()].sort((x, y) => x[1].offset - y[1].offset).map(([i]) => i >= 100000)
  const switches = order.filter((b, j) => j > 0 && b !== order[j - 1]).length
  await a.disconnect()
  say(`kafkajs idempotent: the log switches between the two producers ${switches} times`)
  say('kafkajs idempotent: 2 producers x 1500 at once, then one restarted: 4000 records, each stored once, in each producer\'s order')
}

async function timestamps (bootstrap) {
  const client = kafka(bootstrap, 'kafkajs-timestamps')
  const a = track(client.admin())
  await a.connect()
  const topic = newTopic('kjs-ts')
  await a.createTopics({ topics: [{ topic, numPartitions: 2 }] })
  const base = Date.now() - 1_000_000
  // 30 records on partition 0, 1 s apart, in three produce requests; record 20 carries
  // the largest timestamp (CreateTime need not grow with the offset).
  const ts = i => (i === 20 ? base + 500_000 : base + i * 1000)
  const producer = track(client.producer({ createPartitioner: Partitioners.DefaultPartitioner, allowAutoTopicCreation: false }))
  await producer.connect()
  for (let s = 0; s < 30; s += 10) {
    const messages = []
    for (let i = s; i < s + 10; i++) messages.push({ partition: 0, value: Buffer.from(`ts-${i}`), timestamp: String(ts(i)) })
    const answer = await producer.send({ topic, acks: -1, messages })
    check(Number(answer[0].baseOffset) === s, () => `produce answer ${JSON.stringify(answer)}`)
  }
  await producer.disconnect()
  // KafkaJS answers "no record at or after t" (-1 from the broker) with the end offset.
  const cases = [
    [base - 5000, 0, 'before the first record'],
    [base, 0, 'the first record\'s timestamp'],
    [base + 10_000, 10, 'record 10\'s timestamp'],
    [base + 10_500, 11, 'between records 10 and 11'],
    [base + 25_500, 20, 'after record 25 but below record 20\'s'],
    [base + 29_000, 20, 'record 29\'s timestamp, below record 20\'s'],
    [base + 500_000, 20, 'the largest timestamp (record 20)'],
    [base + 600_000, 30, 'after every record (end offset)']
  ]
  for (const [t, want, what] of cases) {
    const got = await a.fetchTopicOffsetsByTimestamp(topic, t)
    const p0 = got.find(p => p.partition === 0)
    const p1 = got.find(p => p.partition === 1)
    check(p0 && Number(p0.offset) === want, () => `offset for timestamp ${t - base} ms after the first (${what}): ${JSON.stringify(got)}, expected ${want}`)
    check(p1 && Number(p1.offset) === 0, () => `empty partition 1 for timestamp ${t - base}: ${JSON.stringify(got)}, expected 0`)
  }
  const water = await a.fetchTopicOffsets(topic)
  const w0 = water.find(p => p.partition === 0)
  check(w0.low === '0' && w0.high === '30', () => `watermarks ${JSON.stringify(water)}`)
  await a.disconnect()
  say(`kafkajs timestamps: ${cases.length} lookups by timestamp found the first record at or after each (${cases.map(c => c[1]).join(', ')}); watermarks 0..30`)
}

async function group (bootstrap) {
  const client = kafka(bootstrap, 'kafkajs-group')
  const a = track(client.admin())
  await a.connect()
  await groupScenario(bootstrap, {
    name: 'kafkajs',
    script: SCRIPT,
    createTopic: async (topic, partitions) => {
      check(await a.createTopics({ topics: [{ topic, numPartitions: partitions }] }), `could not create ${topic}`)
    },
    produce: (topic, from, count, tag) => produce(client, topic, from, count, tag),
    committed: async (groupId, topic) => {
      const [t] = await a.fetchOffsets({ groupId, topics: [topic] })
      return t.partitions.sort((x, y) => x.partition - y.partition).map(p => Number(p.offset))
    },
    endOffsets: async topic => (await a.fetchTopicOffsets(topic)).sort((x, y) => x.partition - y.partition).map(p => Number(p.high)),
    readAsNewMember: (topic, groupId, count) => readAll(client, topic, count, groupId)
  })
  await a.disconnect()
}

/**
 * One member of a group (a child of `group`): reports each assignment with its
 * generation, and every record; KafkaJS commits after each batch. SIGTERM stops it:
 * it finishes its batch, commits, and leaves the group.
 */
async function groupMember (bootstrap, topic, groupId, name) {
  const logCreator = () => ({ level, log }) => {
    if (log.message === 'Received assignment') {
      memberSay(name, 'assign', { generation: log.generationId, partitions: [...(log.memberAssignment[topic] ?? [])].sort((x, y) => x - y) })
    } else if (level <= logLevel.WARN) {
      memberSay(name, 'log', { level, message: log.message, error: log.error })
    }
  }
  const client = new Kafka({ clientId: name, brokers: [bootstrap], logLevel: logLevel.DEBUG, logCreator })
  const consumer = client.consumer({
    groupId,
    sessionTimeout: SESSION_MS,
    heartbeatInterval: 500,
    rebalanceTimeout: 20000,
    maxWaitTimeInMs: 300
  })
  consumer.on(consumer.events.CRASH, e => memberSay(name, 'error', { error: errorText(e.payload.error) }))
  let stopping = false
  process.on('SIGTERM', async () => {
    if (stopping) return
    stopping = true
    await consumer.disconnect()
    memberSay(name, 'closed')
    process.exit(0)
  })
  await consumer.connect()
  await consumer.subscribe({ topics: [topic], fromBeginning: true })
  await consumer.run({
    autoCommit: true,
    eachBatch: async ({ batch }) => {
      for (const m of batch.messages) memberSay(name, 'msg', recordJson(toRecord(batch.partition, m)))
    }
  })
  await new Promise(() => {})
}

run(async ([bootstrap, scenario, ...args]) => {
  if (!bootstrap || !scenario) fail('usage: kafkajs.mjs BOOTSTRAP admin|roundtrip|idempotent|group|timestamps')
  process.env.KAFKAJS_NO_PARTITIONER_WARNING = '1'
  const scenarios = { admin, roundtrip, idempotent, group, timestamps }
  if (scenario === 'group-member') {
    await groupMember(bootstrap, ...args)
    return
  }
  check(scenarios[scenario], `unknown scenario ${scenario}`)
  await within(75000, `kafkajs ${scenario}`, scenarios[scenario](bootstrap))
  apiUse.print('kafkajs')
})
