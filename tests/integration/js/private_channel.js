// realtime-js, unmodified, against the local stack: a private channel with replay, a live
// database broadcast, and a channel refused by policy. Prints one JSON object per line.
// argv: <realtime url> <apikey> <user jwt> <since ms>
const { RealtimeClient } = require('@supabase/realtime-js')
const WebSocket = require('ws')

const [url, apikey, token, since] = process.argv.slice(2)
const out = (o) => process.stdout.write(JSON.stringify(o) + '\n')

const client = new RealtimeClient(url, { params: { apikey }, transport: WebSocket })
client.setAuth(token)

const room = client.channel('room:1', {
  config: { private: true, broadcast: { replay: { since: Number(since), limit: 10 } } },
})
room.on('broadcast', { event: 'tick' }, (msg) => out({ kind: 'tick', msg }))
room.subscribe((status, err) => out({ kind: 'status', topic: 'room:1', status,
                                       error: err ? String(err.message || err) : null }))

const refused = client.channel('room:2', { config: { private: true } })
refused.subscribe((status, err) => out({ kind: 'status', topic: 'room:2', status,
                                          error: err ? String(err.message || err) : null }))

process.stdin.on('data', () => {})
process.stdin.on('end', () => { client.disconnect(); process.exit(0) })
