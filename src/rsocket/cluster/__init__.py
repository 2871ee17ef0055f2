"""Many workers share the tenants through Redis: leases, shared cursors, event streams.

docs/SCALING.md. Three Redis parts, each with its own connection pool, each
closed by its owner (``await x.close()``), and the pool that uses them:

- :class:`RedisLeases`: one lease per tenant (``SET NX PX``), renewed every
  ``ttl/3`` by a compare-and-extend script, released by compare-and-delete,
  with a per-tenant fencing token incremented on every take. A lease not
  confirmed for ``ttl/2`` is given up locally (listeners destroy the
  tenant's manager) before Redis can expire it, so two workers never hold one
  tenant at once.
- :class:`RedisSeqStore`: the ``SeqStore`` (``rsocket.cursor``) in Redis; every save
  carries the saver's fencing token and runs as one script that refuses a
  stale token and only moves a cursor forward within an epoch.
- :class:`RedisStreamSink`: a ``pool.process(sink, with_seqs=True)`` handler
  appending each released batch (msgpack) with its tenant and seq range to a
  Redis Stream.
- :class:`LeasedPool`: the lease-driven balancer; it runs a plain
  ``TenantPool`` through its public ``add``/``remove`` (the pool knows
  nothing of leases) for the tenants whose leases this worker holds.

Every key of one tenant carries the tenant as a hash tag
(``rsocket:{tenant}:lease``, ``:fence``, ``:cursor``), so on Redis Cluster a
tenant's lease, token and cursor live in one slot and the scripts are legal.

``redis.asyncio`` is imported lazily: without the ``redis`` package the
constructors raise an ``ImportError`` naming the extra
(``pip install 'rsocket-events[redis]'``).
"""

from .leases import RedisLeases, default_worker_id
from .pool import LeasedPool
from .seqstore import RedisSeqStore
from .sink import RedisStreamSink, decode_entry

__all__ = ["LeasedPool", "RedisLeases", "RedisSeqStore", "RedisStreamSink", "decode_entry",
           "default_worker_id"]
