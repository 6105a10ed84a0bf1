//! The Lua scripts: each cluster step that must be atomic is one script.

use redis::Script;

use std::sync::LazyLock;

/// Creates the record (unless it exists and has not ended) and takes the lease if it is free.
/// KEYS: record, lease, epoch, events, metadata, presence, index.
/// ARGV: spec JSON, created ms, node, lease ms, id.
/// Returns {created (0/1), epoch taken (0: another replica leads), created ms, spec JSON}.
pub static CLAIM: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('HGET', KEYS[1], 'ended') then
  redis.call('DEL', KEYS[1], KEYS[4], KEYS[5], KEYS[6])
end
local created = 0
if redis.call('HSETNX', KEYS[1], 'spec', ARGV[1]) == 1 then
  redis.call('HSET', KEYS[1], 'created', ARGV[2])
  redis.call('ZADD', KEYS[7], ARGV[2], ARGV[5])
  -- Until its leader's first tick keeps it (see TICK).
  redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[4]) * 6)
  created = 1
end
local epoch = 0
if redis.call('EXISTS', KEYS[2]) == 0 and not redis.call('HGET', KEYS[1], 'stop') then
  epoch = redis.call('INCR', KEYS[3])
  redis.call('SET', KEYS[2], ARGV[3] .. '|' .. epoch, 'PX', ARGV[4])
end
return {created, epoch, redis.call('HGET', KEYS[1], 'created'), redis.call('HGET', KEYS[1], 'spec')}
"#,
    )
});

/// Takes a free lease of a live computation (failover). A record Redis lost (restarted empty
/// while no leader held it) is written back from what the replica serving it knows, and the
/// epoch never falls to or below the one that replica last saw, so its ids keep growing.
/// KEYS: record, lease, epoch, index. ARGV: node, lease ms, last epoch seen, spec JSON,
/// created ms, id, whether a lost record may be written back (0/1).
/// Returns the new epoch, or 0.
pub static TAKE_OVER: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('HGET', KEYS[1], 'ended') then return 0 end
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
if redis.call('EXISTS', KEYS[1]) == 0 then
  if ARGV[7] ~= '1' then return 0 end
  redis.call('HSET', KEYS[1], 'spec', ARGV[4], 'created', ARGV[5])
  redis.call('ZADD', KEYS[4], ARGV[5], ARGV[6])
  redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]) * 6)
end
local epoch = redis.call('INCR', KEYS[3])
if epoch <= tonumber(ARGV[3]) then
  epoch = tonumber(ARGV[3]) + 1
  redis.call('SET', KEYS[3], epoch)
end
redis.call('SET', KEYS[2], ARGV[1] .. '|' .. epoch, 'PX', ARGV[2])
return epoch
"#,
    )
});

/// The fenced publish: refused (0) unless the epoch is still the computation's. An epoch key
/// that is gone (Redis restarted empty) is set back to this leader's: nobody can have taken
/// over since.
/// KEYS: epoch, events, metadata, record.
/// ARGV: epoch, entry id, maxlen, tag, tag argument (a data event's: its timestamp), metadata
/// JSON or time, the id below which entries are trimmed (the byte bound; empty: none), then
/// field/value pairs.
pub static PUBLISH: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local epoch = redis.call('GET', KEYS[1])
if not epoch then
  redis.call('SET', KEYS[1], ARGV[1])
elseif epoch ~= ARGV[1] then
  return 0
end
-- The entry first: should Redis refuse it, nothing else has been written.
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], ARGV[2], unpack(ARGV, 8))
if ARGV[7] ~= '' then redis.call('XTRIM', KEYS[2], 'MINID', ARGV[7]) end
local tag = ARGV[4]
if tag == 'meta' then
  redis.call('HSET', KEYS[3], ARGV[5], ARGV[6])
elseif tag == 'exp' then
  redis.call('HDEL', KEYS[3], ARGV[5])
elseif tag == 'data' then
  redis.call('HSET', KEYS[4], 'last', ARGV[5], 'at', ARGV[6])
elseif tag == 'job' then
  redis.call('HSET', KEYS[4], 'handle', ARGV[5])
end
return 1
"#,
    )
});

/// The leader's tick: renews (or re-takes, same epoch) the lease, drops expired presence, and
/// keeps the computation's keys alive for six leases (a computation nobody leads or
/// takes over for that long is gone). After Redis lost its data (restarted empty), the leader
/// writes the record back and goes on.
/// KEYS: lease, epoch, record, presence, index, events, metadata.
/// ARGV: lease value, lease ms, epoch, now ms, spec JSON, created ms, id.
/// Returns {1, stop reason or false, replicas with subscribers}, or {0} when the lease is lost.
pub static TICK: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('GET', KEYS[2]) == false and redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('SET', KEYS[2], ARGV[3])
end
if redis.call('EXISTS', KEYS[3]) == 0 and redis.call('GET', KEYS[2]) == ARGV[3] then
  redis.call('HSET', KEYS[3], 'spec', ARGV[5], 'created', ARGV[6])
  redis.call('ZADD', KEYS[5], ARGV[6], ARGV[7])
end
local current = redis.call('GET', KEYS[1])
if current == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
elseif (not current) and redis.call('GET', KEYS[2]) == ARGV[3] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
else
  return {0, false, 0}
end
redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', ARGV[4])
local keep = tonumber(ARGV[2]) * 6
for _, key in ipairs({KEYS[2], KEYS[3], KEYS[6], KEYS[7]}) do redis.call('PEXPIRE', key, keep) end
return {1, redis.call('HGET', KEYS[3], 'stop'), redis.call('ZCARD', KEYS[4])}
"#,
    )
});

/// After the last event: marks the end, releases the lease, keeps the keys for the retention.
/// Fenced like a publish: refused (0) when a newer epoch leads.
/// KEYS: record, lease, index, events, metadata, presence, epoch.
/// ARGV: lease value, retention ms, id, epoch.
pub static FINISH: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local epoch = redis.call('GET', KEYS[7])
if epoch and epoch ~= ARGV[4] then return 0 end
redis.call('HSET', KEYS[1], 'ended', '1')
if redis.call('GET', KEYS[2]) == ARGV[1] then redis.call('DEL', KEYS[2]) end
redis.call('ZREM', KEYS[3], ARGV[3])
redis.call('DEL', KEYS[6])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('PEXPIRE', KEYS[4], ARGV[2])
redis.call('PEXPIRE', KEYS[5], ARGV[2])
return 1
"#,
    )
});

/// Lets go of a lease held (shutdown, or a job that could not start). When the record was
/// created by this claim and never ran, it goes too.
/// KEYS: lease, record, index. ARGV: lease value, drop record (0/1), id.
pub static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
if ARGV[2] == '1' then
  redis.call('DEL', KEYS[2])
  redis.call('ZREM', KEYS[3], ARGV[3])
end
return 1
"#,
    )
});
