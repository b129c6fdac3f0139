"""ScriptBatcher, the group commit of the redirect's Redis script: replies, batching, errors, interruptions."""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis

from service.platform.redis import ScriptBatcher

# Answers ARGV[1]; counts its calls in KEYS[1]; with ARGV[2] = 'slow', keeps Redis busy for 300 ms first.
ECHO = """
if ARGV[2] == 'slow' then
    local start = redis.call('TIME')
    repeat local now = redis.call('TIME')
    until (now[1] - start[1]) * 1000000 + (now[2] - start[2]) > 300000
end
redis.call('INCR', KEYS[1])
return ARGV[1]
"""


@pytest.fixture
def redis_client(redis_url):
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    client.close()


def test_calls_from_many_threads_each_get_their_own_reply(redis_client, key_prefix):
    batcher = ScriptBatcher(redis_client, ECHO)
    with ThreadPoolExecutor(16) as pool:
        replies = list(pool.map(lambda i: batcher([f"{key_prefix}calls"], [str(i), ""]), range(400)))
    assert replies == [str(i) for i in range(400)]
    assert redis_client.get(f"{key_prefix}calls") == "400"


def test_calls_arriving_during_a_round_trip_share_the_next_one(redis_client, key_prefix):
    batcher = ScriptBatcher(redis_client, ECHO)
    counter = f"{key_prefix}calls"
    pipelines = []
    run = batcher._run
    batcher._run = lambda batch: pipelines.append(len(batch)) or run(batch)  # count, then really send
    slow = threading.Thread(target=batcher, args=([counter], ["first", "slow"]))
    slow.start()
    while not batcher._leading:
        time.sleep(0.001)
    with ThreadPoolExecutor(10) as pool:  # all ten queue while the slow call holds Redis
        replies = list(pool.map(lambda i: batcher([counter], [str(i), ""]), range(10)))
    slow.join()
    assert replies == [str(i) for i in range(10)]
    assert pipelines == [1, 10]
    assert redis_client.get(counter) == "11"


def test_an_error_in_one_call_does_not_fail_the_others_in_its_batch(redis_client, key_prefix):
    redis_client.set(f"{key_prefix}text", "not a number")
    batcher = ScriptBatcher(redis_client, ECHO)
    keys = [f"{key_prefix}text" if i == 3 else f"{key_prefix}calls" for i in range(8)]
    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(batcher, [key], [str(i), ""]) for i, key in enumerate(keys)]
    for i, future in enumerate(futures):
        if i == 3:
            with pytest.raises(redis.ResponseError):
                future.result()
        else:
            assert future.result() == str(i)


def test_a_lost_connection_fails_every_waiting_call_and_leaves_none_hanging(dead_port):
    client = redis.Redis(port=dead_port, socket_timeout=0.5, socket_connect_timeout=0.5)
    batcher = ScriptBatcher(client, ECHO)
    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(batcher, ["k"], [str(i), ""]) for i in range(20)]
        for future in futures:
            with pytest.raises(redis.ConnectionError):
                future.result(timeout=10)
    assert not batcher._leading and not batcher._queue


def test_a_script_missing_from_redis_is_loaded_again(redis_client, key_prefix):
    batcher = ScriptBatcher(redis_client, ECHO)
    batcher.script.sha = "0" * 40  # as after a Redis restart: EVALSHA answers NOSCRIPT
    assert batcher([f"{key_prefix}calls"], ["back", ""]) == "back"
    assert batcher.script.sha != "0" * 40


def test_an_interrupted_round_trip_leaves_nobody_waiting(redis_client, key_prefix):
    batcher = ScriptBatcher(redis_client, ECHO)
    counter, run = f"{key_prefix}calls", batcher._run
    entered, release, interrupted = threading.Event(), threading.Event(), []

    def interrupted_run(batch):
        batcher._run = run  # only this first round trip is cut short
        entered.set()
        release.wait(5)
        raise KeyboardInterrupt

    def first_call():
        try:
            batcher([counter], ["first", ""])
        except KeyboardInterrupt as exc:
            interrupted.append(exc)

    batcher._run = interrupted_run
    leader = threading.Thread(target=first_call)
    leader.start()
    entered.wait(5)
    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(batcher, [counter], [str(i), ""]) for i in range(4)]
        time.sleep(0.2)  # they queue behind the round trip about to be interrupted
        release.set()
        assert [future.result(timeout=10) for future in futures] == ["0", "1", "2", "3"]
    leader.join(5)
    assert interrupted and not batcher._leading
    assert batcher([counter], ["later", ""]) == "later"


def _connection_id(batcher: ScriptBatcher) -> int:
    """The Redis client id of the batcher's own connection (opened by this call if need be)."""
    return batcher._send([("CLIENT", "ID")])[0]


def test_a_connection_redis_closed_while_idle_is_replaced_before_the_next_batch(redis_client, key_prefix):
    batcher = ScriptBatcher(redis_client, ECHO)
    batcher.IDLE_CHECK_SECONDS = 0  # every call counts as after a quiet spell
    counter = f"{key_prefix}calls"
    assert batcher([counter], ["before", ""]) == "before"
    dropped = _connection_id(batcher)
    redis_client.client_kill_filter(_id=dropped)
    assert batcher([counter], ["after", ""]) == "after"  # no failed batch, so no tripped breaker
    assert _connection_id(batcher) != dropped
    assert redis_client.get(counter) == "2"


def test_a_connection_dropped_under_load_fails_its_batch_and_the_next_call_reconnects(redis_client, key_prefix):
    batcher = ScriptBatcher(redis_client, ECHO)  # busy: used within the last second, so not checked first
    counter = f"{key_prefix}calls"
    assert batcher([counter], ["before", ""]) == "before"
    dropped = _connection_id(batcher)
    redis_client.client_kill_filter(_id=dropped)
    with pytest.raises(redis.ConnectionError):
        batcher([counter], ["lost", ""])
    assert batcher([counter], ["after", ""]) == "after"
    assert redis_client.get(counter) == "2"  # the call on the dropped connection never reached Redis


def test_reconnecting_does_not_use_up_the_client_pool(redis_client, key_prefix):
    pool = redis.ConnectionPool(
        connection_class=redis_client.connection_pool.connection_class,
        max_connections=3,
        **redis_client.get_connection_kwargs(),
    )
    client = redis.Redis(connection_pool=pool)
    batcher = ScriptBatcher(client, ECHO)
    for i in range(10):  # more reconnects than the pool allows connections
        assert batcher([f"{key_prefix}calls"], [str(i), ""]) == str(i)
        batcher.close()
    assert client.ping()  # the pool still has its connections to give
    client.close()


def _client_ids(client: redis.Redis) -> set[int]:
    return {int(entry["id"]) for entry in client.client_list()}


def test_the_batchers_connection_is_not_pooled_and_close_releases_it(redis_client, key_prefix):
    batcher = ScriptBatcher(redis_client, ECHO)
    batcher([f"{key_prefix}calls"], ["x", ""])
    own = _connection_id(batcher)
    assert own != redis_client.client_id()
    assert own in _client_ids(redis_client)
    batcher.close()
    deadline = time.monotonic() + 5  # Redis notices the close on its next event-loop turn
    while own in _client_ids(redis_client) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert own not in _client_ids(redis_client)
    assert batcher([f"{key_prefix}calls"], ["reopened", ""]) == "reopened"


def test_a_forked_child_opens_its_own_connection_and_leaves_the_parents_intact(redis_client, key_prefix):
    batcher = ScriptBatcher(redis_client, ECHO)
    counter = f"{key_prefix}calls"
    parent_connection = _connection_id(batcher)
    child = os.fork()
    if child == 0:  # the child: a fresh connection, its replies its own
        ok = False
        try:
            ok = _connection_id(batcher) != parent_connection and batcher([counter], ["child", ""]) == "child"
        finally:
            os._exit(0 if ok else 1)
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert batcher([counter], ["parent", ""]) == "parent"
    assert _connection_id(batcher) == parent_connection
    assert redis_client.get(counter) == "2"
